"""The excite operators ``torch.ops.ge_detectron.*``, defined once, here:

    excite(x, g) -> out                                  x * sigmoid(up(g))
    excite_residual(x, g, shortcut) -> out               relu(x * sigmoid(up(g)) + shortcut)
    excite_backward(grad_out, x, g) -> (grad_x, grad_g)
    excite_residual_backward(grad_out, out, x, g) -> (grad_x, grad_g, grad_shortcut)

``up`` is F.interpolate(mode="nearest") to x's size. Each operator's Python body checks its inputs,
converts them to the dtypes the kernels take (``excite_inputs``: any float dtypes in, the reference's
dtypes out) and calls the implementation for the tensors' device:

    CUDA   ``excite_triton``, the Triton kernels (float64: ``excite_torch``)
    CPU    ``excite_cpp``, the C++ kernels, when ge_detectron._C is built; else ``excite_torch``
    meta   ``excite_torch``

They are ``torch.library.triton_op``s (``custom_op``s where triton is not installed): the body is also
the fake kernel, and torch.compile traces into it, so it sees the Triton kernels (launched through
``wrap_triton``) on CUDA and keeps the C++ kernels as single nodes on the CPU. The two forward operators
get their backward from the backward operators (``register_autograd``); double backward is not
supported. Design notes: docs/excite_op.md.

For export, each forward operator also has its definition in standard ATen ops registered as its
CompositeImplicitAutograd kernel (``_definition``). Eager calls and torch.compile never run it (the
operator's own kernels and autograd formula are registered directly, and take precedence); what runs it is
decomposing a graph: ``ExportedProgram.run_decompositions()`` and ``torch.onnx.export(dynamo=True)``
turn the operator into sigmoid, nearest resize, mul, add and relu. The TorchScript-based ONNX exporter
gets the same ONNX operators from a symbolic (``_onnx_symbolic``). docs/export.md.
"""
import torch
import torch.nn.functional as F

from . import excite_torch
from .excite_inputs import (backward_dtypes, check_backward, check_forward, forward_dtypes, grads_in_input_dtypes,
                            opmath)

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


def implementation(op, t):
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
    """Define operator ge_detectron::`name` with the decorated function as its body and fake kernel. The
    bodies carry type annotations too: torch 2.6's triton_op ignores ``schema=`` and infers the schema from them."""
    def define(fn):
        make = torch.library.triton_op if excite_triton is not None else torch.library.custom_op
        op = make(f"ge_detectron::{name}", fn, mutates_args=(), schema=schema)
        op.register_fake(fn)  # triton_op already has; custom_op needs it
        return op

    return define


def _forward(op, x, g, shortcut=None):
    check_forward(op, x, g, shortcut)
    x, g, shortcut = forward_dtypes(x, g, shortcut)
    return implementation(op, x).forward(x, g, shortcut)


def _backward(op, grad_out, x, g, out=None):
    """(grad_x, grad_g, grad_shortcut): grad_x and grad_g in x's and g's dtypes, grad_shortcut in the
    promotion of grad_out's, x's and out's (the autograd formula converts it to the shortcut's)."""
    check_backward(op, grad_out, x, g, out)
    inputs = backward_dtypes(grad_out, x, g, out)
    return grads_in_input_dtypes(implementation(op, inputs[1]).backward(*inputs), x, g)


@_define("excite", "(Tensor x, Tensor g) -> Tensor")
def _excite(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return _forward("ge_detectron::excite", x, g)


@_define("excite_residual", "(Tensor x, Tensor g, Tensor shortcut) -> Tensor")
def _excite_residual(x: torch.Tensor, g: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
    return _forward("ge_detectron::excite_residual", x, g, shortcut)


@_define("excite_backward", "(Tensor grad_out, Tensor x, Tensor g) -> (Tensor grad_x, Tensor grad_g)")
def _excite_backward(grad_out: torch.Tensor, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _backward("ge_detectron::excite_backward", grad_out, x, g)[:2]


@_define("excite_residual_backward", "(Tensor grad_out, Tensor out, Tensor x, Tensor g)"
                                     " -> (Tensor grad_x, Tensor grad_g, Tensor grad_shortcut)")
def _excite_residual_backward(grad_out: torch.Tensor, out: torch.Tensor, x: torch.Tensor, g: torch.Tensor
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward("ge_detectron::excite_residual_backward", grad_out, x, g, out)


def _save_inputs(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _excite_grad(ctx, grad):
    x, g = ctx.saved_tensors
    return torch.ops.ge_detectron.excite_backward(grad, x, g)


def _save_residual(ctx, inputs, output):
    """The residual backward needs the output (its sign is the ReLU's mask), x and g, and of the shortcut
    only its dtype (grad_shortcut's)."""
    x, g, shortcut = inputs
    ctx.save_for_backward(x, g, output)
    ctx.shortcut_dtype = shortcut.dtype


def _excite_residual_grad(ctx, grad):
    x, g, out = ctx.saved_tensors
    grad_x, grad_g, grad_shortcut = torch.ops.ge_detectron.excite_residual_backward(grad, out, x, g)
    return grad_x, grad_g, grad_shortcut.to(ctx.shortcut_dtype)


_excite.register_autograd(_excite_grad, setup_context=_save_inputs)
_excite_residual.register_autograd(_excite_residual_grad, setup_context=_save_residual)


def _definition(x, g, shortcut=None):
    """The forward operators in ATen ops, for decompositions. The gate is always resized with
    F.interpolate's nearest rule (a 1 x 1 gate too, which that broadcasts), never branching on sizes, so a
    graph exported with dynamic sizes holds at every size. Arithmetic in the opmath type, as the kernels;
    the result in x's dtype promoted with the shortcut's, as the reference's."""
    dtype = x.dtype if shortcut is None else torch.promote_types(x.dtype, shortcut.dtype)
    compute = opmath(dtype)
    gate = F.interpolate(torch.sigmoid(g.to(compute)), size=x.shape[-2:], mode="nearest")
    out = x.to(compute) * gate
    if shortcut is not None:
        out = torch.relu(out + shortcut.to(compute))
    return out.to(dtype)


_DECOMPOSITIONS = torch.library.Library("ge_detectron", "FRAGMENT")
_DECOMPOSITIONS.impl("excite", lambda x, g: _definition(x, g), "CompositeImplicitAutograd")
_DECOMPOSITIONS.impl("excite_residual", _definition, "CompositeImplicitAutograd")


def _onnx_symbolic(graph, x, g, shortcut=None):
    """The TorchScript-based ONNX exporter's translation: Sigmoid, Resize (PyTorch's nearest: asymmetric
    coordinates, floor) to x's shape, Mul, and for the residual form Add and Relu."""
    empty = graph.op("Constant", value_t=torch.tensor([], dtype=torch.float32))
    gate = graph.op("Resize", graph.op("Sigmoid", g), empty, empty, graph.op("Shape", x), mode_s="nearest",
                    coordinate_transformation_mode_s="asymmetric", nearest_mode_s="floor")
    out = graph.op("Mul", x, gate)
    return out if shortcut is None else graph.op("Relu", graph.op("Add", out, shortcut))


for _name in ("excite", "excite_residual"):
    torch.onnx.register_custom_op_symbolic(f"ge_detectron::{_name}", _onnx_symbolic, 16)
