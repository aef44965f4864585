"""Gather-Excite (Hu et al., NeurIPS 2018) in plain PyTorch: the reference implementation.

One module covers the variant grid of ``docs/GE_SPEC.md``:

=============  ==========================================  =====================================
variant        gather                                      excite
=============  ==========================================  =====================================
theta_minus    average pooling (global mean, or extent e)  sigmoid gate
theta          depthwise convs + norm (global, or extent)  sigmoid gate
theta_plus     theta's gather, ReLU                        1x1 MLP (C -> C/r -> C), sigmoid gate
se             global mean                                 1x1 MLP (C -> C/r -> C), sigmoid gate
=============  ==========================================  =====================================

The module returns ``x * sigmoid(up(g))``, or with ``shortcut`` the whole bottleneck tail
``relu(x * sigmoid(up(g)) + shortcut)``, where ``up`` is nearest resizing exactly as
``F.interpolate(mode="nearest")`` does it. The fused operator (``ge_detectron.ops``) computes the same tail.
"""
import logging

import torch
import torch.nn.functional as F
from detectron2.utils.logger import log_first_n
from torch import nn

from detectron2.layers import get_norm

from .. import ops
from .arguments import invalid_argument
from .gathers import AverageGather, DepthwiseGather

__all__ = ["GatherExcite", "build_gather_excite", "uses_fused_op", "check_fused", "check_gather_excite_args",
           "excite_reference", "excite_residual_reference", "GE_VARIANTS", "FUSED_MODES", "extent_error"]

GE_VARIANTS = ("theta_minus", "theta", "theta_plus", "se")
FUSED_MODES = ("auto", "on", "off")


def extent_error(extent):
    """Why ``extent`` is not a valid gather extent (0 = global, or a power of two >= 2), or None if it is."""
    if isinstance(extent, bool) or not isinstance(extent, int) or extent < 0 or (extent & (extent - 1)):
        return "use 0 for a global gather or a power of two (2, 4, 8, 16, ...)"
    if extent == 1:
        return "an extent of 1 gathers nothing; use 0 for global or a power of two >= 2"
    return None


def _names(values):
    return "allowed are " + ", ".join(map(repr, values))


def check_gather_excite_args(variant, extent=0, reduction=16, fused="auto", norm=None, max_kernel=0, mlp_bias=True,
                             theta_plus_relu=True, *, allow_none=False, owner="GatherExcite"):
    """Raise an ``invalid_argument`` error naming the first invalid argument of ``GatherExcite``; ``allow_none`` also
    accepts the variant "none" (no GE), as ``build_gather_excite`` and the stage builders do. ``norm`` is a
    detectron2 norm name, a callable, or None (not checked)."""
    variants = ("none", *GE_VARIANTS) if allow_none else GE_VARIANTS
    if variant not in variants:
        raise invalid_argument("variant", variant, _names(variants), owner)
    if variant != "se" and extent_error(extent):
        raise invalid_argument("extent", extent, extent_error(extent), owner)
    if isinstance(reduction, bool) or not isinstance(reduction, int) or reduction < 1:
        raise invalid_argument("reduction", reduction, "use a positive integer such as 16", owner)
    if fused not in FUSED_MODES:
        raise invalid_argument("fused", fused, _names(FUSED_MODES), owner)
    if isinstance(max_kernel, bool) or not isinstance(max_kernel, int) or max_kernel < 0:
        raise invalid_argument("max_kernel", max_kernel, "use 0 (no limit) or a positive integer such as 28", owner)
    for name, value in (("mlp_bias", mlp_bias), ("theta_plus_relu", theta_plus_relu)):
        if not isinstance(value, bool):
            raise invalid_argument(name, value, "use True or False", owner)
    if isinstance(norm, str) and norm:
        try:
            get_norm(norm, 32)
        except (KeyError, AttributeError, TypeError):
            raise invalid_argument("norm", norm, 'use a detectron2 norm such as "BN", "SyncBN", "FrozenBN", "GN"',
                                  owner) from None


def excite_reference(x, g):
    """``x * sigmoid(up(g))``: sigmoid in g's dtype (float32 under autocast), result in x's dtype."""
    gate = torch.sigmoid(g)
    # a 1x1 gate broadcasts, which equals nearest resizing; torch.jit.trace would record that choice as a
    # constant, so a traced graph always resizes (and holds at sizes where the gate is not 1x1)
    if torch.jit.is_tracing() or gate.shape[-2:] != (1, 1):
        gate = F.interpolate(gate, size=x.shape[-2:], mode="nearest")
    return x * gate.to(x.dtype)


def excite_residual_reference(x, g, shortcut):
    """The bottleneck tail with GE: ``relu(x * sigmoid(up(g)) + shortcut)``."""
    return F.relu(excite_reference(x, g) + shortcut)


def excite_mlp(channels, reduction, bias=True):
    """The learned excite of GE-θ⁺ and SE: 1x1 conv C -> C/r, ReLU, 1x1 conv C/r -> C (sigmoid later)."""
    hidden = max(channels // reduction, 1)
    mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=bias), nn.ReLU(inplace=True),
                        nn.Conv2d(hidden, channels, 1, bias=bias))
    for conv in (mlp[0], mlp[2]):
        nn.init.normal_(conv.weight, std=0.01)
        if bias:
            nn.init.zeros_(conv.bias)
    return mlp


def uses_fused_op(fused, device_type):
    """Whether GatherExcite with ``fused`` ("auto", "on", "off") calls the fused operator on tensors of
    ``device_type``: for "auto" where the operator has native kernels (Triton on CUDA, C++ on the CPU),
    for "on" always, for "off" never; and never while torch.jit.trace records a graph, which then holds
    the reference's standard operators rather than an operator only ge_detectron defines."""
    if torch.jit.is_tracing():
        return False
    return fused == "on" or (fused == "auto" and ops.native_kernels(device_type) is not None)


def check_fused(fused):
    """Raise unless, for ``fused="on"``, this machine's device has the operator's kernels; log once which
    path runs on each device. ``fused`` is one of FUSED_MODES (``check_gather_excite_args``)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if fused == "on" and ops.native_kernels(device) is None:
        raise RuntimeError(f"fused='on' but the fused excite operator has no {device.upper()} kernels "
                           f"here: {ops.unavailable_reason(device)}. Or use fused='auto' or 'off'.")
    if fused == "off":
        path = "the pure-PyTorch reference"
    else:
        paths = []
        for d, where in (("cuda", "CUDA"), ("cpu", "the CPU")):
            if uses_fused_op(fused, d):
                paths.append(f"{ops.native_kernels(d) or 'PyTorch ops'} of torch.ops.ge_detectron on {where}")
            else:
                paths.append(f"the pure-PyTorch reference on {where} ({ops.unavailable_reason(d)})")
        path = ", ".join(paths)
    log_first_n(logging.INFO, f"Gather-Excite excite path: {path} (fused={fused!r})", key="message")


class GatherExcite(nn.Module):
    """Gather-Excite on a feature map of ``channels`` channels.

    Args:
        variant: "theta_minus", "theta", "theta_plus" or "se".
        extent: 0 for a global gather, else a power of two (ignored by "se", which is global).
        norm: detectron2 norm name for the depthwise gather convs (theta, theta_plus).
        reduction: channel reduction of the excite MLP (theta_plus, se).
        global_kernel: side of the global depthwise kernel (the map size at pretraining input).
        fused: "auto", "on" or "off": whether to use the fused excite operator (see ``uses_fused_op``).
        max_kernel: largest global depthwise kernel (0: no limit); larger maps are first halved by dense
            stride-2 convs (``DepthwiseGather``).
        mlp_bias: whether the excite MLP's 1x1 convs have biases (theta_plus, se).
        theta_plus_relu: whether theta_plus applies a ReLU between its gather and its MLP.
        The defaults are the paper's; MindSpore's GENet_Res50 uses max_kernel=28, mlp_bias=False,
        theta_plus_relu=False.
    """

    def __init__(self, channels, variant="theta", extent=0, norm="BN", reduction=16, global_kernel=7,
                 fused="auto", max_kernel=0, mlp_bias=True, theta_plus_relu=True):
        super().__init__()
        check_gather_excite_args(variant, extent, reduction, fused, norm, max_kernel, mlp_bias, theta_plus_relu)
        extent = 0 if variant == "se" else extent
        self.channels, self.variant, self.extent = channels, variant, extent
        if variant in ("theta_minus", "se"):
            self.gather = AverageGather(extent)
        else:
            self.gather = DepthwiseGather(channels, extent, norm, global_kernel, max_kernel)
        self.mlp = excite_mlp(channels, reduction, mlp_bias) if variant in ("theta_plus", "se") else None
        self.theta_plus_relu = theta_plus_relu
        check_fused(fused)
        self.fused = fused

    def gather_logits(self, x):
        """The pre-sigmoid gate g of shape (N, C, ceil(H/e), ceil(W/e)), or (N, C, 1, 1) if global."""
        g = self.gather(x)
        if self.mlp is not None:
            g = self.mlp(F.relu(g) if self.variant == "theta_plus" and self.theta_plus_relu else g)
        return g

    def zero_gate_logits(self):
        """Make the gate logits 0 for every input (every gate sigmoid(0) = 0.5) by zeroing the layer that
        produces them: the excite MLP's last 1x1 conv (weight and bias) for theta_plus and se; for theta the
        gather's last depthwise conv, and the bias and running mean of its norm (BN, GN, FrozenBN: a zero
        input then leaves the norm's shift, 0, in training and in eval mode). That layer still gets gradients.
        theta_minus has no parameters: ValueError."""
        if self.mlp is not None:
            last = self.mlp[-1]
            tensors = (last.weight, last.bias)
        elif isinstance(self.gather, DepthwiseGather):
            last = self.gather[-1]
            tensors = (last.weight, getattr(last.norm, "bias", None), getattr(last.norm, "running_mean", None))
        else:
            raise ValueError(f"GatherExcite {self.variant} has no parameters: its gate cannot be set to 0.5.")
        with torch.no_grad():
            for tensor in tensors:
                if tensor is not None:
                    tensor.zero_()

    def check_inputs(self, x, shortcut=None):
        """Raise ValueError, naming what is wrong, unless x is a floating-point (N, C, H, W) tensor of this
        module's C channels and ``shortcut`` (if given) has x's dtype (the reference would promote it
        silently). These are the checks the gather needs first, and this module's own; the shortcut's shape
        and device are checked once, by the fused operator or before the reference (``forward``). Under
        ``torch.jit.trace`` the sizes are traced values: comparing them would only warn and freeze the
        traced example's sizes into the graph, so the size checks are left to the eager run."""
        if x.dim() != 4:
            raise ValueError(f"GatherExcite expects an (N, C, H, W) tensor, got shape {tuple(x.shape)}.")
        if not torch.jit.is_tracing() and x.shape[1] != self.channels:
            raise ValueError(f"GatherExcite was built for {self.channels} channels, got x of shape {tuple(x.shape)}.")
        if not x.is_floating_point():
            raise ValueError(f"GatherExcite expects a floating-point x, got {x.dtype}.")
        if shortcut is not None and shortcut.dtype != x.dtype:
            raise ValueError(f"GatherExcite: shortcut must have x's dtype {x.dtype}, got {shortcut.dtype}.")

    def forward(self, x, shortcut=None):
        self.check_inputs(x, shortcut)
        g = self.gather_logits(x)
        try:
            if uses_fused_op(self.fused, x.device.type) and ops.kernels_verified(x, strict=self.fused == "on"):
                return ops.excite(x, g) if shortcut is None else ops.excite_residual(x, g, shortcut)
            if shortcut is None:
                return excite_reference(x, g)
            ops.check_like_x("GatherExcite", "shortcut", shortcut, x, shape=not torch.jit.is_tracing())
            return excite_residual_reference(x, g, shortcut)
        except ops.ExciteInputError as e:
            if e.argument != "shortcut" or e.what is None:
                raise
            want, got = (tuple(v) if e.what == "shape" else v for v in (e.want, e.got))
            raise ValueError(f"GatherExcite: shortcut must have x's {e.what} {want}, got {got}.") from None

    def extra_repr(self):
        return f"variant={self.variant}, extent={self.extent}, fused={self.fused!r}"


def build_gather_excite(variant, channels, **kwargs):
    """Factory by name: ``None`` for "none", else a ``GatherExcite`` (kwargs as its constructor's)."""
    if variant == "none":
        return None
    return GatherExcite(channels, variant=variant, **kwargs)
