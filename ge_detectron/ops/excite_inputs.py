"""Input checks, the dtype rule and the output layout rule shared by every implementation of the excite
operators.

The checks raise the same ``ExciteInputError`` (a ``RuntimeError``) in eager mode, on fake tensors
(``torch.compile``, ``opcheck``, meta tensors) and under Triton's interpreter, naming the operator, the
argument and the shapes / devices / dtypes involved. They are plain comparisons (under symbolic shapes,
guards): they run on every call.

Dtypes follow the reference, ``x * sigmoid(up(g)).to(x.dtype)`` and ``relu(that + shortcut)``: any of
FLOAT_DTYPES for x, g, the shortcut and the gradients; the output in x's dtype, promoted with the
shortcut's. The kernels take a narrower set, which ``forward_dtypes`` / ``backward_dtypes`` convert to:
the full-size tensors in one dtype (the result's), the gate in that dtype or its opmath type (float32;
float64 for float64). In the common cases (one dtype throughout; a float32 gate under a float16 /
bfloat16 map, as autocast makes it) nothing is converted.
"""
import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_FLOAT_NAMES = "float32, float64, float16 or bfloat16"


class ExciteInputError(RuntimeError):
    """A bad input to an excite operator. ``argument`` names it ("x", "g", "shortcut", ...); for the
    shape and device checks of a tensor against x, ``what`` is "shape" or "device" and ``want`` / ``got``
    are x's and the argument's, so that a caller can word the error in its own terms."""

    def __init__(self, message, argument, what=None, want=None, got=None):
        super().__init__(message)
        self.argument, self.what, self.want, self.got = argument, what, want, got


def check_inputs(op, x, g):
    """x (N, C, H, W) and the gate logits g (N, C, h, w), 1 <= h <= H, 1 <= w <= W, on one device, both
    of FLOAT_DTYPES."""
    if x.dim() != 4:
        raise ExciteInputError(f"{op}: x must be a 4-D (N, C, H, W) tensor, but got a {x.dim()}-D tensor of "
                               f"shape {list(x.shape)}", "x")
    if g.dim() != 4:
        raise ExciteInputError(f"{op}: g must be a 4-D (N, C, h, w) tensor, but got a {g.dim()}-D tensor of "
                               f"shape {list(g.shape)}", "g")
    if g.device != x.device:
        raise ExciteInputError(f"{op}: x and g must be on the same device, but x is on {x.device} and g is on "
                               f"{g.device}", "g", "device", x.device, g.device)
    check_float(op, "x", x)
    check_float(op, "g", g)
    N, C, H, W = x.shape
    n, c, h, w = g.shape
    if not (n == N and c == C and 1 <= h <= H and 1 <= w <= W):
        raise ExciteInputError(f"{op}: g must have shape (N, C, h, w) with 1 <= h <= H and 1 <= w <= W for x of "
                               f"shape (N, C, H, W) = {list(x.shape)}, but got g of shape {list(g.shape)}", "g")


def check_float(op, name, t):
    if t.dtype not in FLOAT_DTYPES:
        raise ExciteInputError(f"{op}: {name} must be {_FLOAT_NAMES}, but got {t.dtype}", name)


def check_like_x(op, name, t, x, shape=True):
    """`t` (a shortcut, gradient or saved output) has x's shape (unless not `shape`) and device, and a float
    dtype."""
    if shape and t.shape != x.shape:
        raise ExciteInputError(f"{op}: {name} must have x's shape {list(x.shape)}, but got {list(t.shape)}", name,
                               "shape", x.shape, t.shape)
    if t.device != x.device:
        raise ExciteInputError(f"{op}: {name} must be on x's device ({x.device}), but is on {t.device}", name,
                               "device", x.device, t.device)
    check_float(op, name, t)


def check_forward(op, x, g, shortcut=None):
    check_inputs(op, x, g)
    if shortcut is not None:
        check_like_x(op, "shortcut", shortcut, x)


def check_backward(op, grad_out, x, g, out=None):
    check_inputs(op, x, g)
    check_like_x(op, "grad_out", grad_out, x)
    if out is not None:
        check_like_x(op, "out", out, x)


def opmath(dtype):
    """The type the kernels compute in for tensors of `dtype`."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _gate(g, dtype):
    """g in `dtype` or its opmath type (a conversion of the small gate only where it is in neither)."""
    return g if g.dtype in (dtype, opmath(dtype)) else g.to(opmath(dtype))


def forward_dtypes(x, g, shortcut=None):
    """(x, g, shortcut) converted to what the kernels take: x and the shortcut in the output's dtype (x's,
    promoted with the shortcut's), g in that or its opmath type."""
    dtype = x.dtype if shortcut is None else torch.promote_types(x.dtype, shortcut.dtype)
    return x.to(dtype), _gate(g, dtype), None if shortcut is None else shortcut.to(dtype)


def backward_dtypes(grad_out, x, g, out=None):
    """(grad_out, x, g, out) converted to what the kernels take: the full-size tensors in one dtype (their
    promotion), g in that or its opmath type. The kernels' grad_x and grad_g are in the converted x's and
    g's dtypes (the caller converts them back), grad_shortcut in grad_out's."""
    dtype = torch.promote_types(grad_out.dtype, x.dtype)
    if out is not None:
        dtype = torch.promote_types(dtype, out.dtype)
    return grad_out.to(dtype), x.to(dtype), _gate(g, dtype), None if out is None else out.to(dtype)


def grads_in_input_dtypes(grads, x, g):
    """(grad_x, grad_g, grad_shortcut) of the kernels with grad_x and grad_g in x's and g's dtypes."""
    grad_x, grad_g, grad_shortcut = grads
    return grad_x.to(x.dtype), grad_g.to(g.dtype), grad_shortcut


def memory_format(t):
    """The layout of the outputs computed from `t`, and of the buffers the kernels read: channels_last when
    t is channels_last and not also contiguous, else contiguous (``excite_memory_format`` in csrc/excite.h)."""
    if t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def empty_like(t):
    """An uninitialised tensor like t in the layout the rule gives for t."""
    return torch.empty_like(t, memory_format=memory_format(t))
