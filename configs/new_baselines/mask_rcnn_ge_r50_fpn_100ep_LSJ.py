"""GE-theta R50-FPN Mask R-CNN in the recipe of detectron2's new_baselines (mask_rcnn_R_50_FPN_100ep_LSJ.py,
whose data, model and schedule it takes): from scratch, SyncBN everywhere, large-scale jitter at 1024 px,
batch 64, 100 epochs of COCO 2017 (as detectron2's new baselines, so their published numbers compare),
AMP. GE-theta E8 goes in every stage: training from scratch leaves no stage without trained weights.

    python tools/lazyconfig_train_net.py --config-file configs/new_baselines/mask_rcnn_ge_r50_fpn_100ep_LSJ.py --num-gpus 8

GroupNorm instead of SyncBN (small batches per GPU): model.backbone.bottom_up.stem.norm=GN
model.backbone.bottom_up.stages.norm=GN model.backbone.norm=GN (the gather convs follow the stages' norm).
"""
from detectron2.config import LazyCall as L
from detectron2.model_zoo import get_config

from ge_detectron.modeling import make_ge_resnet_stages

from ..common.data import with_ge_data_handling

_baseline = get_config("new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py")
model, optimizer, lr_multiplier, train = _baseline.model, _baseline.optimizer, _baseline.lr_multiplier, _baseline.train
dataloader = with_ge_data_handling(_baseline.dataloader)

model.backbone.bottom_up.stages = L(make_ge_resnet_stages)(
    depth=50, stride_in_1x1=True, norm="SyncBN", ge_variant="theta", ge_extent=8,
    ge_stages=["res2", "res3", "res4", "res5"],
)
train.output_dir = "output/lazy/mask_rcnn_ge_r50_fpn_100ep_LSJ"
