"""Bindings of the fused excite operators ``torch.ops.ge_detectron.*`` (built from ge_detectron/csrc).

``excite(x, g) = x * sigmoid(up(g))`` and ``excite_residual(x, g, shortcut) = relu(excite(x, g) + shortcut)``,
``up`` being ``F.interpolate(mode="nearest")`` to x's size. The schemas and the CPU / CUDA kernels are
C++ (``excite.cpp``, ``excite_cpu.cpp``, ``excite_cuda.cu``); this module registers their fake (meta)
kernels, for ``torch.compile`` and other tracing, and their autograd formulas, for which it uses the
backward operators. See docs/excite_op.md.
"""
import torch

try:
    from .. import _C  # noqa: F401  (registers the operators)

    _LOAD_ERROR = None
except ImportError as e:  # the package was installed without building its extension
    _LOAD_ERROR = e

__all__ = ["is_available", "unavailable_reason", "excite", "excite_residual"]


def is_available():
    return _LOAD_ERROR is None


def unavailable_reason():
    return f"ge_detectron._C could not be imported: {_LOAD_ERROR}" if _LOAD_ERROR else ""


def excite(x, g):
    """``x * sigmoid(up(g))``; x: (N, C, H, W), g: (N, C, h, w) with h <= H, w <= W."""
    return torch.ops.ge_detectron.excite(x, g)


def excite_residual(x, g, shortcut):
    """``relu(x * sigmoid(up(g)) + shortcut)``; shortcut: like x."""
    return torch.ops.ge_detectron.excite_residual(x, g, shortcut)


def _memory_format(t):
    """The C++ kernels' output layout rule (excite_memory_format in excite.h)."""
    if t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _like(t):
    return torch.empty_like(t, memory_format=_memory_format(t))


def _check_inputs(op, x, g):
    """The checks of check_excite_inputs (excite.cpp), for the fake kernels."""
    torch._check(x.dim() == 4, lambda: f"{op}: x must be a 4-D (N, C, H, W) tensor, but got a {x.dim()}-D "
                 f"tensor of shape {list(x.shape)}")
    torch._check(g.dim() == 4, lambda: f"{op}: g must be a 4-D (N, C, h, w) tensor, but got a {g.dim()}-D "
                 f"tensor of shape {list(g.shape)}")
    torch._check(g.device == x.device, lambda: f"{op}: x and g must be on the same device, but x is on "
                 f"{x.device} and g is on {g.device}")
    torch._check(x.dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16),
                 lambda: f"{op}: x must be float32, float64, float16 or bfloat16, but got {x.dtype}")
    reduced = x.dtype in (torch.float16, torch.bfloat16)
    torch._check(g.dtype == x.dtype or (reduced and g.dtype == torch.float32),
                 lambda: f"{op}: g must have x's dtype ({x.dtype}){' or float32' if reduced else ''}, "
                 f"but got {g.dtype}")
    torch._check(g.shape[0] == x.shape[0] and g.shape[1] == x.shape[1] and 1 <= g.shape[2] <= x.shape[2]
                 and 1 <= g.shape[3] <= x.shape[3],
                 lambda: f"{op}: g must have shape (N, C, h, w) with 1 <= h <= H and 1 <= w <= W for x of shape "
                 f"(N, C, H, W) = {list(x.shape)}, but got g of shape {list(g.shape)}")


def _check_like_x(op, name, t, x):
    torch._check(t.shape == x.shape, lambda: f"{op}: {name} must have x's shape {list(x.shape)}, but got "
                 f"{list(t.shape)}")
    torch._check(t.device == x.device, lambda: f"{op}: {name} must be on x's device ({x.device}), but is on "
                 f"{t.device}")
    torch._check(t.dtype == x.dtype, lambda: f"{op}: {name} must have x's dtype ({x.dtype}), but got {t.dtype}")


def _register():
    lib = "ge_detectron::"

    @torch.library.register_fake(lib + "excite")
    def _(x, g):
        _check_inputs(lib + "excite", x, g)
        return _like(x)

    @torch.library.register_fake(lib + "excite_residual")
    def _(x, g, shortcut):
        _check_inputs(lib + "excite_residual", x, g)
        _check_like_x(lib + "excite_residual", "shortcut", shortcut, x)
        return _like(x)

    @torch.library.register_fake(lib + "excite_backward")
    def _(grad_out, x, g):
        _check_inputs(lib + "excite_backward", x, g)
        _check_like_x(lib + "excite_backward", "grad_out", grad_out, x)
        return _like(x), _like(g)

    @torch.library.register_fake(lib + "excite_residual_backward")
    def _(grad_out, out, x, g):
        _check_inputs(lib + "excite_residual_backward", x, g)
        _check_like_x(lib + "excite_residual_backward", "grad_out", grad_out, x)
        _check_like_x(lib + "excite_residual_backward", "out", out, x)
        return _like(x), _like(g), _like(x)

    def save_inputs(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def excite_backward(ctx, grad):
        x, g = ctx.saved_tensors
        return torch.ops.ge_detectron.excite_backward(grad, x, g)

    # The residual backward needs the output (its sign is the ReLU's mask), x and g, not the shortcut.
    def save_residual(ctx, inputs, output):
        x, g, _ = inputs
        ctx.save_for_backward(x, g, output)

    def excite_residual_backward(ctx, grad):
        x, g, out = ctx.saved_tensors
        return torch.ops.ge_detectron.excite_residual_backward(grad, out, x, g)

    torch.library.register_autograd(lib + "excite", excite_backward, setup_context=save_inputs)
    torch.library.register_autograd(lib + "excite_residual", excite_residual_backward, setup_context=save_residual)


if is_available():
    _register()
