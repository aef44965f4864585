from .backbone import (
    GEBottleneckBlock,
    SamePaddingStem,
    build_ge_resnet,
    build_ge_resnet_backbone,
    build_ge_resnet_fpn_backbone,
    build_ge_retinanet_resnet_fpn_backbone,
    make_ge_resnet_stages,
    make_ge_stem,
    make_ge_stage,
)
from .roi_heads import GERes5ROIHeads
from .classifier import GEClassifier, build_ge_classifier
from .insertion import insert_missing_ge_as_identity
