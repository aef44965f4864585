"""GE-ResNet backbones: detectron2's ResNet with Gather-Excite in the bottlenecks of chosen stages.

The stages are built from plain arguments (``make_ge_stage``, ``make_ge_resnet_stages``: what
``ResNet.make_stage`` and ``ResNet.make_default_stages`` are to a plain ResNet), so that LazyConfigs
construct them with ``L(...)(...)``; the registered YAML builders translate the config into the same
arguments (``ge_detectron.config``) and call the same functions.
"""
import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN, BasicStem, BottleneckBlock, ResNet
from detectron2.modeling.backbone.fpn import LastLevelMaxPool, LastLevelP6P7

from ..config import ge_resnet_stages_args, ge_stem_args
from ..layers import (BLOCKS_PER_STAGE, STAGE_NAMES, Conv2dSame, GatherExcite, check_ge_init, check_ge_resnet_args,
                      check_padding, check_stem_args, invalid_argument, max_pool2d_same)

__all__ = ["GEBottleneckBlock", "SamePaddingStem", "make_ge_stem", "make_ge_stage", "make_ge_resnet_stages",
           "build_ge_resnet", "build_ge_resnet_backbone", "build_ge_resnet_fpn_backbone",
           "build_ge_retinanet_resnet_fpn_backbone"]



class GEBottleneckBlock(BottleneckBlock):
    """detectron2's ``BottleneckBlock`` with Gather-Excite on the residual branch (after conv3's
    norm), before the residual add; the GE module computes the whole tail relu(excite + shortcut)
    (docs/design.md says why). ``ge_variant`` is one of GatherExcite's variants: blocks without GE
    are detectron2's ``BottleneckBlock`` (``make_ge_stage`` with ``ge_variant="none"``).

    ``ge_init`` ("paper" or "identity", ``layers.GE_INITS``) says how the GE module begins when the
    weights loaded lack it: the checkpointer (``ge_detectron.checkpoint``) calls ``insert_as_identity`` on
    the blocks with "identity" whose GE weights the checkpoint lacked."""

    def __init__(self, in_channels, out_channels, *, ge_variant, ge_extent=0, ge_norm="BN", ge_reduction=16,
                 ge_global_kernel=7, ge_fused="auto", ge_max_kernel=0, ge_mlp_bias=True, ge_theta_plus_relu=True,
                 ge_init="paper", **kwargs):
        super().__init__(in_channels, out_channels, **kwargs)
        check_ge_init(ge_variant, ge_init)
        self.ge_init = ge_init
        try:
            self.ge = GatherExcite(out_channels, variant=ge_variant, extent=ge_extent, norm=ge_norm,
                                   reduction=ge_reduction, global_kernel=ge_global_kernel, fused=ge_fused,
                                   max_kernel=ge_max_kernel, mlp_bias=ge_mlp_bias, theta_plus_relu=ge_theta_plus_relu)
        except ValueError as e:
            if getattr(e, "argument", None) != "variant":
                raise
            raise invalid_argument("ge_variant", e.value, f"{e.allowed} (a block without GE is detectron2's "
                                  "BottleneckBlock)", "GEBottleneckBlock") from None

    def insert_as_identity(self):
        """Make this block compute detectron2's plain ``BottleneckBlock`` with its current weights, exactly:
        every gate becomes sigmoid(0) = 0.5 (``GatherExcite.zero_gate_logits``) and the residual branch's
        last affine map doubles: conv3's norm's weight and bias (parameters of BN and GN, buffers of
        FrozenBN, whose scale ``weight / sqrt(running_var + eps)`` and shift ``bias - running_mean * scale``
        both double), or conv3's weight without a norm. 0.5 * 2 is exact in floating point."""
        self.ge.zero_gate_logits()
        norm = self.conv3.norm
        with torch.no_grad():
            for tensor in (norm.weight, norm.bias) if norm is not None else (self.conv3.weight, self.conv3.bias):
                if tensor is not None:
                    tensor.mul_(2)

    def forward(self, x):
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        shortcut = self.shortcut(x) if self.shortcut is not None else x
        return self.ge(out, shortcut)


class SamePaddingStem(BasicStem):
    """detectron2's ``BasicStem`` (7x7 stride-2 conv, norm, ReLU, 3x3 stride-2 max-pool) with "same" padding
    in the conv and the pool (``layers.same_padding``), as TensorFlow and MindSpore ResNets pad."""

    def __init__(self, in_channels=3, out_channels=64, norm="BN"):
        super().__init__(in_channels, out_channels, norm)
        Conv2dSame.convert(self.conv1)

    def forward(self, x):
        return max_pool2d_same(F.relu_(self.conv1(x)), 3, 2)


def make_ge_stem(in_channels=3, out_channels=64, norm="BN", padding="symmetric", norm_eps=1e-5):
    """The ResNet stem: detectron2's ``BasicStem``, or ``SamePaddingStem`` for ``padding="same"``; its norm's
    epsilon set to ``norm_eps`` (1e-5 is every detectron2 norm's default; MindSpore's ResNet stem uses 1e-4)."""
    check_stem_args(padding, norm_eps)
    stem = (SamePaddingStem if padding == "same" else BasicStem)(in_channels, out_channels, norm)
    if hasattr(stem.conv1.norm, "eps"):
        stem.conv1.norm.eps = norm_eps
    return stem


def make_ge_stage(*, ge_variant="none", ge_extent=0, ge_norm=None, ge_reduction=16, ge_global_kernel=7,
                  ge_fused="auto", ge_max_kernel=0, ge_mlp_bias=True, ge_theta_plus_relu=True, ge_init="paper",
                  padding="symmetric", **kwargs):
    """``ResNet.make_stage`` of bottleneck blocks (``kwargs`` as its own: num_blocks, stride_per_block,
    in_channels, bottleneck_channels, out_channels, norm, ...) with Gather-Excite in every block:
    ``GEBottleneckBlock`` s, or plain ``BottleneckBlock`` s when ``ge_variant`` is "none".

    ``ge_norm`` is the norm of the gather convs (None: the blocks' ``norm``); ``ge_global_kernel`` the side
    of a global theta/theta_plus kernel (the stage's map size at the pretraining input); ``ge_max_kernel``,
    ``ge_mlp_bias``, ``ge_theta_plus_relu`` as GatherExcite's ``max_kernel``, ``mlp_bias``, ``theta_plus_relu``;
    ``ge_init`` as GEBottleneckBlock's ("identity": inserted into plain weights as the identity).
    ``padding="same"`` makes the blocks' convs (not the gathers') ``Conv2dSame``."""
    check_padding(padding)
    if ge_variant == "none":
        blocks = ResNet.make_stage(block_class=BottleneckBlock, **kwargs)
    else:
        blocks = ResNet.make_stage(
            block_class=GEBottleneckBlock, ge_variant=ge_variant, ge_extent=ge_extent,
            ge_norm=ge_norm or kwargs.get("norm", "BN"), ge_reduction=ge_reduction, ge_global_kernel=ge_global_kernel,
            ge_fused=ge_fused, ge_max_kernel=ge_max_kernel, ge_mlp_bias=ge_mlp_bias,
            ge_theta_plus_relu=ge_theta_plus_relu, ge_init=ge_init, **kwargs)
    if padding == "same":
        for block in blocks:
            for conv in (block.conv1, block.conv2, block.conv3, block.shortcut):
                if conv is not None:
                    Conv2dSame.convert(conv)
    return blocks


def make_ge_resnet_stages(depth=50, *, stem_out_channels=64, res2_out_channels=256, num_groups=1,
                          width_per_group=64, norm="BN", stride_in_1x1=True, res5_dilation=1, ge_variant="none",
                          ge_stages=STAGE_NAMES, ge_extent=0, ge_norm=None, ge_reduction=16, ge_global_input_size=224,
                          ge_fused="auto", ge_max_kernel=0, ge_mlp_bias=True, ge_theta_plus_relu=True,
                          ge_init="paper", padding="symmetric"):
    """The stages res2-res5 of a GE-ResNet (the ``stages`` argument of detectron2's ``ResNet``, which drops
    those after its last ``out_features``), with ``ge_variant`` in the stages named in ``ge_stages`` and
    plain bottlenecks elsewhere.

    Args:
        depth: 50, 101 or 152.
        stem_out_channels, res2_out_channels, num_groups, width_per_group, norm, stride_in_1x1,
            res5_dilation: as detectron2's ``MODEL.RESNETS`` keys of the same names.
        ge_variant, ge_stages: the GE variant ("none", "theta_minus", "theta", "theta_plus", "se") and the
            stages that get it.
        ge_extent, ge_norm, ge_reduction, ge_fused, ge_max_kernel, ge_mlp_bias, ge_theta_plus_relu, ge_init,
            padding: as ``make_ge_stage``'s.
        ge_global_input_size: input side at which a global theta/theta_plus kernel covers the whole map.
    """
    check_ge_resnet_args(depth, ge_stages, res5_dilation, ge_global_input_size, padding)
    stages = []
    in_channels, out_channels, bottleneck_channels = stem_out_channels, res2_out_channels, num_groups * width_per_group
    for idx, (name, num_blocks) in enumerate(zip(STAGE_NAMES, BLOCKS_PER_STAGE[depth])):
        dilation = res5_dilation if name == "res5" else 1
        first_stride = 1 if idx == 0 or dilation == 2 else 2
        stages.append(make_ge_stage(
            num_blocks=num_blocks, stride_per_block=[first_stride] + [1] * (num_blocks - 1), in_channels=in_channels,
            bottleneck_channels=bottleneck_channels, out_channels=out_channels, num_groups=num_groups, norm=norm,
            stride_in_1x1=stride_in_1x1, dilation=dilation, ge_variant=ge_variant if name in ge_stages else "none",
            ge_extent=ge_extent, ge_norm=ge_norm, ge_reduction=ge_reduction,
            ge_global_kernel=ge_global_input_size // 2 ** (idx + 2), ge_fused=ge_fused, ge_max_kernel=ge_max_kernel,
            ge_mlp_bias=ge_mlp_bias, ge_theta_plus_relu=ge_theta_plus_relu, ge_init=ge_init, padding=padding))
        in_channels, out_channels, bottleneck_channels = out_channels, out_channels * 2, bottleneck_channels * 2
    return stages


def build_ge_resnet(cfg, in_channels, out_features=None, num_classes=None):
    """A GE-ResNet from ``cfg.MODEL.RESNETS`` and ``cfg.MODEL.GE``, unpacked as detectron2's
    ``build_resnet_backbone`` does. ``num_classes`` adds global pooling and a linear classifier."""
    stages = make_ge_resnet_stages(**ge_resnet_stages_args(cfg))
    stem = make_ge_stem(in_channels, **ge_stem_args(cfg))
    return ResNet(stem, stages, num_classes=num_classes, out_features=out_features,
                  freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)


@BACKBONE_REGISTRY.register()
def build_ge_resnet_backbone(cfg, input_shape: ShapeSpec):
    """GE-ResNet backbone (C4 and DC5 detectors): outputs ``MODEL.RESNETS.OUT_FEATURES``."""
    return build_ge_resnet(cfg, input_shape.channels, out_features=cfg.MODEL.RESNETS.OUT_FEATURES)


def _fpn(cfg, bottom_up, top_block):
    """detectron2's FPN from ``MODEL.FPN`` over ``bottom_up``."""
    return FPN(bottom_up=bottom_up, in_features=cfg.MODEL.FPN.IN_FEATURES, out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
               norm=cfg.MODEL.FPN.NORM, top_block=top_block, fuse_type=cfg.MODEL.FPN.FUSE_TYPE)


@BACKBONE_REGISTRY.register()
def build_ge_resnet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """GE-ResNet + FPN, as detectron2's ``build_resnet_fpn_backbone`` with a GE bottom-up."""
    return _fpn(cfg, build_ge_resnet_backbone(cfg, input_shape), LastLevelMaxPool())


@BACKBONE_REGISTRY.register()
def build_ge_retinanet_resnet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """GE-ResNet + FPN with P6/P7 from res5, as detectron2's ``build_retinanet_resnet_fpn_backbone``."""
    bottom_up = build_ge_resnet_backbone(cfg, input_shape)
    p6p7 = LastLevelP6P7(bottom_up.output_shape()["res5"].channels, cfg.MODEL.FPN.OUT_CHANNELS)
    return _fpn(cfg, bottom_up, p6p7)
