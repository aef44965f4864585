"""The C4 detector's ROI head, whose res5 stage gets Gather-Excite when "res5" is in the GE stages.

From a YAML config the head is built as detectron2 builds ``Res5ROIHeads``; a LazyConfig constructs it
from plain arguments, with ``res5=L(make_ge_stage)(...)`` (configs/faster_rcnn_ge_r50.py)."""
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, Res5ROIHeads
from torch import nn

from ..config import ge_res5_head_args
from .backbone import make_ge_stage


@ROI_HEADS_REGISTRY.register()
class GERes5ROIHeads(Res5ROIHeads):
    """``Res5ROIHeads`` with a GE-ResNet res5 (``make_ge_stage``)."""

    @classmethod
    def _build_res5_block(cls, cfg):
        args = ge_res5_head_args(cfg)
        return nn.Sequential(*make_ge_stage(**args)), args["out_channels"]
