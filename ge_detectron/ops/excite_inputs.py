"""Input checks and the output layout rule shared by every implementation of the excite operators.

The checks raise the same ``RuntimeError`` in eager mode, on fake tensors (``torch.compile``, ``opcheck``,
meta tensors) and under Triton's interpreter, naming the operator, the argument and the shapes / devices /
dtypes involved. They are plain comparisons (under symbolic shapes, guards): they run on every call.
"""
import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
HALF_DTYPES = (torch.float16, torch.bfloat16)


def check_inputs(op, x, g):
    """x (N, C, H, W) and the gate logits g (N, C, h, w), 1 <= h <= H, 1 <= w <= W, on one device; g has
    x's dtype, or float32 when x is float16 / bfloat16 (a gate computed in float32 under autocast)."""
    if x.dim() != 4:
        raise RuntimeError(f"{op}: x must be a 4-D (N, C, H, W) tensor, but got a {x.dim()}-D tensor of shape "
                           f"{list(x.shape)}")
    if g.dim() != 4:
        raise RuntimeError(f"{op}: g must be a 4-D (N, C, h, w) tensor, but got a {g.dim()}-D tensor of shape "
                           f"{list(g.shape)}")
    if g.device != x.device:
        raise RuntimeError(f"{op}: x and g must be on the same device, but x is on {x.device} and g is on "
                           f"{g.device}")
    if x.dtype not in FLOAT_DTYPES:
        raise RuntimeError(f"{op}: x must be float32, float64, float16 or bfloat16, but got {x.dtype}")
    if g.dtype != x.dtype and not (g.dtype == torch.float32 and x.dtype in HALF_DTYPES):
        also = " or float32" if x.dtype in HALF_DTYPES else ""
        raise RuntimeError(f"{op}: g must have x's dtype ({x.dtype}){also}, but got {g.dtype}")
    N, C, H, W = x.shape
    n, c, h, w = g.shape
    if not (n == N and c == C and 1 <= h <= H and 1 <= w <= W):
        raise RuntimeError(f"{op}: g must have shape (N, C, h, w) with 1 <= h <= H and 1 <= w <= W for x of shape "
                           f"(N, C, H, W) = {list(x.shape)}, but got g of shape {list(g.shape)}")


def check_like_x(op, name, t, x):
    """`t` (a shortcut, gradient or saved output) has x's shape, device and dtype."""
    if t.shape != x.shape:
        raise RuntimeError(f"{op}: {name} must have x's shape {list(x.shape)}, but got {list(t.shape)}")
    if t.device != x.device:
        raise RuntimeError(f"{op}: {name} must be on x's device ({x.device}), but is on {t.device}")
    if t.dtype != x.dtype:
        raise RuntimeError(f"{op}: {name} must have x's dtype ({x.dtype}), but got {t.dtype}")


def check_forward(op, x, g, shortcut=None):
    check_inputs(op, x, g)
    if shortcut is not None:
        check_like_x(op, "shortcut", shortcut, x)


def check_backward(op, grad_out, x, g, out=None):
    check_inputs(op, x, g)
    check_like_x(op, "grad_out", grad_out, x)
    if out is not None:
        check_like_x(op, "out", out, x)


def memory_format(t):
    """The layout of the outputs computed from `t`, and of the buffers the kernels read: channels_last when
    t is channels_last and not also contiguous, else contiguous (``excite_memory_format`` in csrc/excite.h)."""
    if t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def empty_like(t):
    """An uninitialised tensor like t in the layout the rule gives for t."""
    return torch.empty_like(t, memory_format=memory_format(t))
