"""The paper's detector as a LazyConfig: Faster R-CNN R50-C4 with RoIAlign, GE-theta E8 in res3-res5 (the
backbone's res3, res4 and the ROI head's res5), COCO 2014 train / val, 1x, from ImageNet R-50 (MSRA).
The same model, data and schedule as faster_rcnn_ge_r50.yaml (tests/test_lazy_configs.py compares the two).

    python tools/lazyconfig_train_net.py --config-file configs/faster_rcnn_ge_r50.py --num-gpus 8
"""
from detectron2.config import LazyCall as L
from detectron2.model_zoo import get_config
from detectron2.modeling.backbone import BasicStem, ResNet

from ge_detectron.modeling import GERes5ROIHeads, make_ge_resnet_stages, make_ge_stage

from .common.data import dataloader

# GE-theta E8, in the stages freeze_at=2 trains (docs/GE_SPEC.md, "Decision, freezing").
# R-50.pkl has no GE weights: GE is inserted as the identity (docs/GE_SPEC.md, "Decision, insertion into plain
# weights"), as faster_rcnn_ge_r50.yaml's MODEL.GE.INIT.
_GE = dict(ge_variant="theta", ge_extent=8, ge_init="identity")

model = get_config("common/models/mask_rcnn_c4.py").model  # detectron2's R50-C4 R-CNN, less its mask head
del model.roi_heads["mask_head"]
model.backbone = L(ResNet)(
    stem=L(BasicStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
    stages=L(make_ge_resnet_stages)(depth=50, stride_in_1x1=True, norm="FrozenBN",
                                    ge_stages=["res3", "res4", "res5"], **_GE),
    out_features=["res4"],
    freeze_at=2,
)
model.roi_heads._target_ = GERes5ROIHeads
model.roi_heads.res5 = L(make_ge_stage)(
    num_blocks=3, stride_per_block=[2, 1, 1], in_channels=1024, bottleneck_channels=512, out_channels=2048,
    norm="FrozenBN", stride_in_1x1=True, ge_global_kernel=7, **_GE,  # res5 maps are 7x7 at 224 px
)
dataloader.train.mapper.use_instance_mask = False

optimizer = get_config("common/optim.py").SGD
lr_multiplier = get_config("common/coco_schedule.py").lr_multiplier_1x
train = get_config("common/train.py").train
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
train.max_iter = 90000
train.eval_period = 0  # evaluate once, after training
train.output_dir = "output/lazy/faster_rcnn_ge_r50"
