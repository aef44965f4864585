"""The GE-ResNet image classifier used to pretrain the detection backbones (e.g. on ImageNet)."""
import torch
from detectron2.modeling.backbone import BottleneckBlock
from torch import nn

from ..config import ge_classifier_args
from .backbone import build_ge_resnet

__all__ = ["GEClassifier", "build_ge_classifier", "zero_init_residual"]


class GEClassifier(nn.Module):
    """A GE-ResNet (``self.resnet``, the detection backbone's module tree) with global average pooling
    and a linear layer.

    Takes (N, 3, H, W) pixel values in 0-255, channels in ``INPUT.FORMAT`` order, and normalises them
    with ``MODEL.PIXEL_MEAN`` / ``PIXEL_STD`` as detectron2's detectors do: pretraining and detection
    then see identically preprocessed inputs whenever they share those keys. Returns (N, classes) logits.
    """

    def __init__(self, resnet, pixel_mean, pixel_std):
        super().__init__()
        self.resnet = resnet
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    def forward(self, images):
        x = (images.to(self.pixel_mean.device, torch.float32) - self.pixel_mean) / self.pixel_std
        return self.resnet(x)["linear"]


def build_ge_classifier(cfg):
    """A ``GEClassifier`` (``ge_classifier_args``: the classes of the pretraining head) built from the same
    ``MODEL.RESNETS`` and ``MODEL.GE`` keys as the detection backbone (so the state-dict keys match), on the
    CPU. ``MODEL.BACKBONE.FREEZE_AT`` applies too: pretraining configs set it to 0."""
    args = ge_classifier_args(cfg)
    resnet = build_ge_resnet(cfg, len(args["pixel_mean"]), num_classes=args["num_classes"])
    return GEClassifier(resnet, args["pixel_mean"], args["pixel_std"])


def zero_init_residual(model):
    """Zero the scale of the last norm of every bottleneck's residual branch (conv3's norm, before GE),
    so that each block starts as the identity: "zero gamma" of Goyal et al. (2017), which speeds up
    training from scratch. Norms without a learnable scale (FrozenBN) are left alone. Returns ``model``."""
    for module in model.modules():
        if isinstance(module, BottleneckBlock) and isinstance(getattr(module.conv3.norm, "weight", None), nn.Parameter):
            nn.init.zeros_(module.conv3.norm.weight)
    return model
