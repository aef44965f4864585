from .backbone import GEBottleneckBlock, build_ge_resnet, build_ge_resnet_backbone, build_ge_resnet_fpn_backbone
from .roi_heads import GERes5ROIHeads
from .classifier import GEClassifier, build_ge_classifier
