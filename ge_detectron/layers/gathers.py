"""The gathers of Gather-Excite (docs/GE_SPEC.md): average pooling (GE-θ⁻, SE) and depthwise
convolutions + norm (GE-θ, GE-θ⁺). Each maps (N, C, H, W) to the pre-sigmoid gate (N, C, h, w)."""
import math

import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, FrozenBatchNorm2d, get_norm
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .same_padding import Conv2dSame

__all__ = ["AverageGather", "DepthwiseGather", "GridAvgPool2d", "adaptive_avg_pool2d_matmul", "frozen_affine"]


class AverageGather(nn.Module):
    """Parameter-free gather: global mean, or average pooling over a (2e-1)^2 window at stride e."""

    def __init__(self, extent):
        super().__init__()
        self.extent = extent

    def forward(self, x):
        if self.extent == 0:
            return x.mean(dim=(2, 3), keepdim=True)
        e = self.extent
        return F.avg_pool2d(x, kernel_size=2 * e - 1, stride=e, padding=e - 1, count_include_pad=False)

    def extra_repr(self):
        return f"extent={self.extent}"


def _window_averages(size, bins, dtype, device):
    """The (bins, size) matrix that averages each of adaptive average pooling's windows: row i is
    1 / (end - start) on the cells floor(i * size / bins) .. ceil((i + 1) * size / bins) - 1, else 0.
    ``size`` may be a traced 0-dim tensor: the matrix is then computed in the graph, for any size."""
    i = torch.arange(bins, device=device)
    start, end = (i * size) // bins, ((i + 1) * size + bins - 1) // bins
    cells = torch.arange(size, device=device)
    inside = (cells >= start[:, None]) & (cells < end[:, None])
    return inside.to(dtype) / (end - start).to(dtype)[:, None]


def adaptive_avg_pool2d_matmul(x, output_size):
    """``F.adaptive_avg_pool2d(x, output_size)`` (N, C, H, W) -> (N, C, n, n) as two matrix products with
    the window-averaging matrices of the height and the width: Range, comparisons, Div and MatMul, which
    the ONNX exporter records for any H and W (it refuses adaptive pooling at a dynamic input size)."""
    rows = _window_averages(x.shape[-2], output_size, x.dtype, x.device)
    cols = _window_averages(x.shape[-1], output_size, x.dtype, x.device)
    return torch.matmul(torch.matmul(rows, x), cols.t())


class GridAvgPool2d(nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d`` to an ``n`` x ``n`` grid that exports to ONNX at a dynamic input size: under
    ``torch.onnx.export`` it computes ``adaptive_avg_pool2d_matmul``, elsewhere PyTorch's kernel, which is
    faster on the CPU at detection sizes (docs/export.md) and which TorchScript keeps size-generic."""

    def forward(self, x):
        if torch.onnx.is_in_onnx_export():
            return adaptive_avg_pool2d_matmul(x, self.output_size)
        return super().forward(x)


def frozen_affine(norm):
    """``(scale, shift)`` with ``norm(y) == y * scale + shift`` per channel when ``norm`` is a fixed affine
    map: a FrozenBatchNorm2d, or a BatchNorm that uses its running statistics (eval mode). Else None.
    Computed with autograd, so a BatchNorm's weight and bias still get their gradients."""
    if not isinstance(norm, FrozenBatchNorm2d):
        if not isinstance(norm, _BatchNorm) or norm.training or norm.running_var is None:
            return None
    scale = torch.rsqrt(norm.running_var + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight
    bias = norm.bias if norm.bias is not None else torch.zeros_like(scale)
    return scale, torch.addcmul(bias, norm.running_mean, scale, value=-1)


def _has_hooks(conv):
    """Whether forward hooks are registered on the conv or its norm: those layers are then called as
    modules (not folded), so that the hooks see their inputs and outputs."""
    return any(m._forward_pre_hooks or m._forward_hooks for m in (conv, conv.norm) if m is not None)


def _depthwise(channels, kernel_size, stride, padding, norm):
    conv = Conv2d(channels, channels, kernel_size, stride=stride, padding=padding, groups=channels,
                  bias=False, norm=get_norm(norm, channels))
    nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")  # msra filler, fan_in = k^2
    return conv


def _dense_reduction(channels, norm):
    conv = Conv2dSame(channels, channels, 3, stride=2, bias=False, norm=get_norm(norm, channels))
    nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
    return conv


class DepthwiseGather(nn.Sequential):
    """GE-θ gather. Extent e: log2(e) stride-2 3x3 depthwise convs, each + norm, ReLU between them.
    Global: resize to ``global_kernel`` x ``global_kernel`` (identity at the pretraining size), then one
    depthwise conv whose kernel covers the whole map, + norm. ``max_kernel`` (0: no limit) caps that
    kernel: while the map is larger, a dense (not depthwise) 3x3 stride-2 conv C -> C with "same" padding
    (``Conv2dSame``) + norm halves it first, without ReLU (MindSpore's GENet_Res50: 56 -> 28 in res2).

    The layers are an ``nn.Sequential`` of detectron2 ``Conv2d`` (bias-free, ``norm`` inside) and ``ReLU``,
    so the state_dict keys are ``0.weight``, ``0.norm.weight``, ... (global: ``1.weight``, ...). The forward
    folds a norm that is a fixed affine map (``frozen_affine``: FrozenBN, or BN in eval mode) into its
    conv, ``conv(x, w * scale) + shift``: the same function, without the norm's own pass over the conv's
    output and the backward of that pass. Other norms (BN in training, GN, ...) run after the conv, and so
    does any norm with forward hooks (they see its input, as in an unfolded chain).
    On the CPU, a gather that will be differentiated runs its chain in channels_last and returns the gate
    in the input's layout: oneDNN's depthwise backward in NCHW takes several times as long as the layout
    conversion plus the channels_last backward (docs/benchmarks.md). Without gradients (inference, a frozen
    stage) and on CUDA the input's layout is kept.
    """

    def __init__(self, channels, extent, norm, global_kernel, max_kernel=0):
        if extent == 0:
            layers, kernel = [GridAvgPool2d(global_kernel)], global_kernel
            while max_kernel and kernel > max_kernel:
                layers.append(_dense_reduction(channels, norm))
                kernel = math.ceil(kernel / 2)
            layers.append(_depthwise(channels, kernel, 1, 0, norm))
        else:
            layers = []
            for i in range(extent.bit_length() - 1):
                if i:
                    layers.append(nn.ReLU(inplace=True))
                layers.append(_depthwise(channels, 3, 2, 1, norm))
        super().__init__(*layers)

    def _runs_channels_last(self, x):
        if x.device.type != "cpu" or not torch.is_grad_enabled():
            return False
        return x.requires_grad or any(p.requires_grad for p in self.parameters())

    def forward(self, x):
        restore = None
        if self._runs_channels_last(x) and not x.is_contiguous(memory_format=torch.channels_last):
            restore, x = torch.contiguous_format, x.contiguous(memory_format=torch.channels_last)
        for layer in self:
            foldable = type(layer) is Conv2d and not _has_hooks(layer)  # Conv2dSame pads in its forward
            affine = frozen_affine(layer.norm) if foldable else None
            if affine is None:
                x = layer(x)
            else:
                scale, shift = affine
                x = F.conv2d(x, layer.weight * scale.reshape(-1, 1, 1, 1), shift, layer.stride, layer.padding,
                             layer.dilation, layer.groups)
        return x if restore is None else x.contiguous(memory_format=restore)
