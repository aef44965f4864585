"""The C4 detector's ROI head, whose res5 stage gets Gather-Excite when "res5" is in MODEL.GE.STAGES."""
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, Res5ROIHeads
from detectron2.modeling.backbone import ResNet
from torch import nn

from ..config import validate_ge_config
from .backbone import ge_stage_kwargs


@ROI_HEADS_REGISTRY.register()
class GERes5ROIHeads(Res5ROIHeads):
    """``Res5ROIHeads`` with a GE-ResNet res5, built as detectron2 builds the plain one."""

    @classmethod
    def _build_res5_block(cls, cfg):
        validate_ge_config(cfg)
        res = cfg.MODEL.RESNETS
        stage_channel_factor = 2 ** 3  # res5 is 8x res2
        out_channels = res.RES2_OUT_CHANNELS * stage_channel_factor
        blocks = ResNet.make_stage(
            num_blocks=3,
            stride_per_block=[2, 1, 1],
            in_channels=out_channels // 2,
            bottleneck_channels=res.NUM_GROUPS * res.WIDTH_PER_GROUP * stage_channel_factor,
            out_channels=out_channels,
            num_groups=res.NUM_GROUPS,
            norm=res.NORM,
            stride_in_1x1=res.STRIDE_IN_1X1,
            **ge_stage_kwargs(cfg, "res5"),
        )
        return nn.Sequential(*blocks), out_channels
