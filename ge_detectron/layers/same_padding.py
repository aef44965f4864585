"""TensorFlow / MindSpore "same" padding for detectron2's convs and for max-pooling.

A "same" layer of kernel k and stride s pads an input side n by ``max((ceil(n / s) - 1) * s + k - n, 0)``
in total, the smaller half before (top / left) and the larger after: the 7x7 stride-2 conv pads (2, 3) at
224, a 3x3 stride-2 conv (0, 1) at even sides. PyTorch's fixed padding is symmetric, so weights trained with
"same" padding need it to reproduce their network. The padding depends on the input size, so it is
computed in ``forward`` (as timm's ``Conv2dSame`` does for TensorFlow weights), with integer arithmetic that
also holds for the traced 0-dim size tensors of ``torch.jit.trace``: the exported graphs (TorchScript and
ONNX) compute the padding of every input size.
"""
import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d

from .arguments import invalid_argument

__all__ = ["PADDINGS", "check_padding", "same_padding", "pad_same", "max_pool2d_same", "Conv2dSame"]

# "symmetric": the layers' own fixed padding (detectron2, torchvision); "same": TensorFlow / MindSpore.
PADDINGS = ("symmetric", "same")


def check_padding(padding, argument="padding"):
    """Raise an ``invalid_argument`` error unless ``padding`` is one of PADDINGS."""
    if padding not in PADDINGS:
        raise invalid_argument(argument, padding, "allowed are " + ", ".join(map(repr, PADDINGS)))


def same_padding(size, kernel_size, stride, dilation=1):
    """``(before, after)`` "same" padding of one input side: ints for an int ``size``, 0-dim tensors for a
    traced size."""
    total = ((size + stride - 1) // stride - 1) * stride + (kernel_size - 1) * dilation + 1 - size
    total = total.clamp(min=0) if isinstance(total, torch.Tensor) else max(total, 0)
    return total // 2, total - total // 2


def pad_same(x, kernel_size, stride, dilation=(1, 1), value=0.0):
    """``x`` (N, C, H, W) padded with ``value`` for a "same" layer of these (height, width) pairs."""
    top, bottom = same_padding(x.shape[-2], kernel_size[0], stride[0], dilation[0])
    left, right = same_padding(x.shape[-1], kernel_size[1], stride[1], dilation[1])
    if torch.jit.is_tracing() or top or bottom or left or right:  # a traced graph pads for any size
        x = F.pad(x, (left, right, top, bottom), value=value)
    return x


def max_pool2d_same(x, kernel_size, stride):
    """Max-pooling with "same" padding; padded cells are -inf, so they never win."""
    x = pad_same(x, (kernel_size, kernel_size), (stride, stride), value=float("-inf"))
    return F.max_pool2d(x, kernel_size, stride)


class Conv2dSame(Conv2d):
    """detectron2's ``Conv2d`` (with its ``norm`` and ``activation``) with "same" padding; ``padding``
    must not be given. ``convert`` turns existing ``Conv2d`` s into this class in place, parameters kept."""

    def __init__(self, *args, **kwargs):
        if kwargs.get("padding", 0):
            raise ValueError(f"Conv2dSame computes its padding; got padding={kwargs['padding']!r}.")
        super().__init__(*args, **kwargs)

    def forward(self, x):
        return super().forward(pad_same(x, self.kernel_size, self.stride, self.dilation))

    @classmethod
    def convert(cls, conv):
        """Make the detectron2 ``Conv2d`` ``conv`` a ``Conv2dSame`` (same parameters and state_dict keys)."""
        if type(conv) is not Conv2d:
            raise TypeError(f"Conv2dSame.convert expects a detectron2 Conv2d, got {type(conv).__name__}.")
        conv.__class__, conv.padding = cls, (0, 0)
        return conv
