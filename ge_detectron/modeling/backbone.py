"""GE-ResNet backbones: detectron2's ResNet with Gather-Excite in the bottlenecks of chosen stages."""
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN, BasicStem, BottleneckBlock, ResNet
from detectron2.modeling.backbone.fpn import LastLevelMaxPool

from ..config import STAGE_NAMES, GEConfigError, ge_block_kwargs, validate_ge_config
from ..layers import build_gather_excite

__all__ = ["GEBottleneckBlock", "build_ge_resnet", "build_ge_resnet_backbone", "build_ge_resnet_fpn_backbone"]

_BLOCKS_PER_STAGE = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}


class GEBottleneckBlock(BottleneckBlock):
    """detectron2's ``BottleneckBlock`` with Gather-Excite on the residual branch (after conv3's
    norm), before the residual add; the GE module computes the whole tail relu(excite + shortcut)."""

    def __init__(self, in_channels, out_channels, *, ge_variant, ge_extent=0, ge_norm="BN", ge_reduction=16,
                 ge_global_kernel=7, ge_fused="auto", **kwargs):
        super().__init__(in_channels, out_channels, **kwargs)
        self.ge = build_gather_excite(ge_variant, out_channels, extent=ge_extent, norm=ge_norm,
                                      reduction=ge_reduction, global_kernel=ge_global_kernel, fused=ge_fused)

    def forward(self, x):
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        shortcut = self.shortcut(x) if self.shortcut is not None else x
        return self.ge(out, shortcut)


def ge_stage_kwargs(cfg, stage_name):
    """``block_class`` and GE keyword arguments for ``ResNet.make_stage`` of one stage."""
    kwargs = ge_block_kwargs(cfg, stage_name)
    if kwargs["ge_variant"] == "none":
        return {"block_class": BottleneckBlock}
    return {"block_class": GEBottleneckBlock, **kwargs}


def build_ge_resnet(cfg, in_channels, out_features=None, num_classes=None):
    """A GE-ResNet from ``cfg.MODEL.RESNETS`` and ``cfg.MODEL.GE``, unpacked as detectron2's
    ``build_resnet_backbone`` does. ``num_classes`` adds global pooling and a linear classifier."""
    validate_ge_config(cfg)
    res = cfg.MODEL.RESNETS
    if res.DEPTH not in _BLOCKS_PER_STAGE:
        raise GEConfigError(f"MODEL.RESNETS.DEPTH = {res.DEPTH!r} is invalid for a GE-ResNet: GE sits in "
                            f"bottleneck blocks, so use one of {sorted(_BLOCKS_PER_STAGE)}.")
    if any(res.DEFORM_ON_PER_STAGE):
        raise GEConfigError("MODEL.RESNETS.DEFORM_ON_PER_STAGE enables deformable convs, which GE-ResNet "
                            "does not support: set it to [False, False, False, False].")
    if res.RES5_DILATION not in (1, 2):
        raise GEConfigError(f"MODEL.RESNETS.RES5_DILATION = {res.RES5_DILATION!r} is invalid: use 1 or 2.")

    stem = BasicStem(in_channels=in_channels, out_channels=res.STEM_OUT_CHANNELS, norm=res.NORM)
    bottleneck_channels = res.NUM_GROUPS * res.WIDTH_PER_GROUP
    in_channels, out_channels = res.STEM_OUT_CHANNELS, res.RES2_OUT_CHANNELS
    if out_features is not None and num_classes is None:
        num_stages = max(STAGE_NAMES.index(f) + 1 for f in out_features)
    else:
        num_stages = len(STAGE_NAMES)
    stages = []
    for idx, (stage_name, num_blocks) in enumerate(zip(STAGE_NAMES[:num_stages], _BLOCKS_PER_STAGE[res.DEPTH])):
        dilation = res.RES5_DILATION if stage_name == "res5" else 1
        first_stride = 1 if idx == 0 or dilation == 2 else 2
        stages.append(ResNet.make_stage(
            num_blocks=num_blocks,
            stride_per_block=[first_stride] + [1] * (num_blocks - 1),
            in_channels=in_channels,
            bottleneck_channels=bottleneck_channels,
            out_channels=out_channels,
            num_groups=res.NUM_GROUPS,
            norm=res.NORM,
            stride_in_1x1=res.STRIDE_IN_1X1,
            dilation=dilation,
            **ge_stage_kwargs(cfg, stage_name),
        ))
        in_channels, out_channels, bottleneck_channels = out_channels, out_channels * 2, bottleneck_channels * 2
    return ResNet(stem, stages, num_classes=num_classes, out_features=out_features,
                  freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)


@BACKBONE_REGISTRY.register()
def build_ge_resnet_backbone(cfg, input_shape: ShapeSpec):
    """GE-ResNet backbone (C4 and DC5 detectors): outputs ``MODEL.RESNETS.OUT_FEATURES``."""
    return build_ge_resnet(cfg, input_shape.channels, out_features=cfg.MODEL.RESNETS.OUT_FEATURES)


@BACKBONE_REGISTRY.register()
def build_ge_resnet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """GE-ResNet + FPN, as detectron2's ``build_resnet_fpn_backbone`` with a GE bottom-up."""
    return FPN(
        bottom_up=build_ge_resnet_backbone(cfg, input_shape),
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
