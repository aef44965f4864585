"""The excite operators ``torch.ops.ge_detectron.*``, defined once, here:

    excite(x, g) -> out                                  x * sigmoid(up(g))
    excite_residual(x, g, shortcut) -> out               relu(x * sigmoid(up(g)) + shortcut)
    excite_backward(grad_out, x, g) -> (grad_x, grad_g)
    excite_residual_backward(grad_out, out, x, g) -> (grad_x, grad_g, grad_shortcut)

``up`` is F.interpolate(mode="nearest") to x's size. Each operator's Python body checks its inputs
(``excite_inputs``) and calls the implementation for the tensors' device:

    CUDA   ``excite_triton``, the Triton kernels (float64: ``excite_torch``)
    CPU    ``excite_cpp``, the C++ kernels, when ge_detectron._C is built; else ``excite_torch``
    meta   ``excite_torch``

They are ``torch.library.triton_op``s (``custom_op``s where triton is not installed): the body is also
the fake kernel, and torch.compile traces into it, so it sees the Triton kernels (launched through
``wrap_triton``) on CUDA and keeps the C++ kernels as single nodes on the CPU. The two forward operators
get their backward from the backward operators (``register_autograd``); double backward is not
supported. Design notes: docs/excite_op.md.
"""
import torch

from . import excite_torch
from .excite_inputs import check_backward, check_forward

try:
    from . import excite_cpp

    _CPP_ERROR = None
except ImportError as e:  # installed without building the extension
    excite_cpp, _CPP_ERROR = None, e
try:
    from . import excite_triton

    _TRITON_ERROR = None
except ImportError as e:  # triton is not installed (a CPU-only build of torch does not bring it)
    excite_triton, _TRITON_ERROR = None, e

__all__ = ["excite", "excite_residual", "native_kernels", "unavailable_reason"]


def excite(x, g):
    """``x * sigmoid(up(g))``; x: (N, C, H, W), g: (N, C, h, w) with h <= H, w <= W."""
    return torch.ops.ge_detectron.excite(x, g)


def excite_residual(x, g, shortcut):
    """``relu(x * sigmoid(up(g)) + shortcut)``; shortcut: like x."""
    return torch.ops.ge_detectron.excite_residual(x, g, shortcut)


def native_kernels(device_type):
    """What the operators run on `device_type` ("cpu" or "cuda") tensors: "C++ kernels", "Triton
    kernels", or None where those are missing (the CPU then runs ``excite_torch``; CUDA cannot run)."""
    if device_type == "cpu":
        return "C++ kernels" if excite_cpp is not None else None
    if device_type == "cuda":
        return "Triton kernels" if excite_triton is not None else None
    return None


def unavailable_reason(device_type):
    """Why native_kernels(device_type) is None ("" if it is not)."""
    if device_type == "cpu" and excite_cpp is None:
        return (f"the C++ extension ge_detectron._C is not built ({_CPP_ERROR}); build it with "
                "`pip install --no-build-isolation -e .`")
    if device_type == "cuda" and excite_triton is None:
        return f"triton is not installed ({_TRITON_ERROR}); a CUDA build of torch installs it"
    if device_type not in ("cpu", "cuda"):
        return f"the operators have kernels for CPU and CUDA tensors only, not {device_type}"
    return ""


def _implementation(op, t):
    """The module whose forward / backward compute the operators for tensors like t."""
    kind = t.device.type
    if kind == "cuda" and t.dtype != torch.float64:  # float64: excite_torch below
        if excite_triton is None:
            raise RuntimeError(f"{op}: CUDA tensors need the Triton kernels, but {unavailable_reason('cuda')}")
        return excite_triton
    if kind == "cpu" and excite_cpp is not None:
        return excite_cpp
    if kind in ("cpu", "cuda", "meta"):
        return excite_torch
    raise RuntimeError(f"{op}: {unavailable_reason(kind)}")


def _define(name, schema):
    """Define operator ge_detectron::`name` with the decorated function as its body and fake kernel."""
    def define(fn):
        make = torch.library.triton_op if excite_triton is not None else torch.library.custom_op
        op = make(f"ge_detectron::{name}", fn, mutates_args=(), schema=schema)
        op.register_fake(fn)  # triton_op already has; custom_op needs it
        return op

    return define


@_define("excite", "(Tensor x, Tensor g) -> Tensor")
def _excite(x, g):
    check_forward("ge_detectron::excite", x, g)
    return _implementation("ge_detectron::excite", x).forward(x, g)


@_define("excite_residual", "(Tensor x, Tensor g, Tensor shortcut) -> Tensor")
def _excite_residual(x, g, shortcut):
    check_forward("ge_detectron::excite_residual", x, g, shortcut)
    return _implementation("ge_detectron::excite_residual", x).forward(x, g, shortcut)


@_define("excite_backward", "(Tensor grad_out, Tensor x, Tensor g) -> (Tensor grad_x, Tensor grad_g)")
def _excite_backward(grad_out, x, g):
    check_backward("ge_detectron::excite_backward", grad_out, x, g)
    return _implementation("ge_detectron::excite_backward", x).backward(grad_out, x, g)[:2]


@_define("excite_residual_backward", "(Tensor grad_out, Tensor out, Tensor x, Tensor g)"
                                     " -> (Tensor grad_x, Tensor grad_g, Tensor grad_shortcut)")
def _excite_residual_backward(grad_out, out, x, g):
    check_backward("ge_detectron::excite_residual_backward", grad_out, x, g, out)
    return _implementation("ge_detectron::excite_residual_backward", x).backward(grad_out, x, g, out)


def _save_inputs(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _excite_grad(ctx, grad):
    x, g = ctx.saved_tensors
    return torch.ops.ge_detectron.excite_backward(grad, x, g)


def _save_residual(ctx, inputs, output):
    """The residual backward needs the output (its sign is the ReLU's mask), x and g, not the shortcut."""
    x, g, _ = inputs
    ctx.save_for_backward(x, g, output)


def _excite_residual_grad(ctx, grad):
    x, g, out = ctx.saved_tensors
    return torch.ops.ge_detectron.excite_residual_backward(grad, out, x, g)


_excite.register_autograd(_excite_grad, setup_context=_save_inputs)
_excite_residual.register_autograd(_excite_residual_grad, setup_context=_save_residual)
