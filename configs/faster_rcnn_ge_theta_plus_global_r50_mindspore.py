"""faster_rcnn_ge_theta_plus_global_r50_mindspore.yaml as a LazyConfig: the paper's detector (Faster R-CNN
R50-C4, COCO 2014, 1x) with global GE-theta-plus in every stage, from MindSpore's published ImageNet weights
converted with tools/convert_weights.py (docs/pretraining.md). Other variants: replace "theta_plus" below.

    python tools/lazyconfig_train_net.py --config-file configs/faster_rcnn_ge_theta_plus_global_r50_mindspore.py
"""
from detectron2.config import LazyCall as L

from ge_detectron.modeling import make_ge_resnet_stages, make_ge_stage, make_ge_stem

from .faster_rcnn_ge_r50 import dataloader, lr_multiplier, model, optimizer, train

# Their network (configs/pretrain/mindspore/Base-MindSpore-GENet.yaml): same padding, res2's dense reduction
# before the 28x28 gather, the theta_plus excite without ReLU and biases, ResNet v1.5.
_GE = dict(ge_variant="theta_plus", ge_extent=0, ge_max_kernel=28, ge_mlp_bias=False, ge_theta_plus_relu=False,
           padding="same")

model.backbone.stem = L(make_ge_stem)(in_channels=3, out_channels=64, norm="FrozenBN", padding="same", norm_eps=1e-4)
model.backbone.stages = L(make_ge_resnet_stages)(depth=50, stride_in_1x1=False, norm="FrozenBN",
                                                 ge_stages=["res2", "res3", "res4", "res5"], ge_global_input_size=224,
                                                 **_GE)
model.roi_heads.res5 = L(make_ge_stage)(
    num_blocks=3, stride_per_block=[2, 1, 1], in_channels=1024, bottleneck_channels=512, out_channels=2048,
    norm="FrozenBN", stride_in_1x1=False, ge_global_kernel=7, **_GE,
)
model.pixel_mean = [123.675, 116.28, 103.53]  # RGB, their mean / std on 0-255 values
model.pixel_std = [58.395, 57.12, 57.375]
model.input_format = "RGB"
dataloader.train.mapper.image_format = "RGB"
dataloader.test.mapper.image_format = "RGB"
train.init_checkpoint = "output/weights/mindspore_r50_theta_plus.pkl"
train.output_dir = "output/lazy/faster_rcnn_ge_theta_plus_global_r50_mindspore"
