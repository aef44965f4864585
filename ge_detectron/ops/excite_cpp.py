"""The C++ CPU kernels (ge_detectron/csrc, built as ``ge_detectron._C``): what ``torch.ops.ge_detectron``
runs on the CPU. Importing this module raises ImportError when the extension is not built.

The extension registers its kernels as private operators, ``torch.ops.ge_detectron_cpu.*``, with the
public operators' schemas; their fake kernels, registered here, let the public operators trace into
them (torch.compile keeps them as single nodes). Inputs are checked by the caller (``excite_op.py``).
"""
import torch

from .. import _C  # noqa: F401  (loads the library, which registers torch.ops.ge_detectron_cpu)
from .excite_inputs import empty_like

if not hasattr(torch.ops.ge_detectron_cpu, "excite"):
    raise RuntimeError(f"{_C.__file__} was built from an older ge_detectron (it does not register "
                       "torch.ops.ge_detectron_cpu): rebuild it with `pip install --no-build-isolation -e .`")
_OPS = torch.ops.ge_detectron_cpu


def forward(x, g, shortcut=None):
    return _OPS.excite(x, g) if shortcut is None else _OPS.excite_residual(x, g, shortcut)


def backward(grad_out, x, g, out=None):
    if out is None:
        return (*_OPS.excite_backward(grad_out, x, g), None)
    return _OPS.excite_residual_backward(grad_out, out, x, g)


@torch.library.register_fake("ge_detectron_cpu::excite")
def _(x, g):
    return empty_like(x)


@torch.library.register_fake("ge_detectron_cpu::excite_residual")
def _(x, g, shortcut):
    return empty_like(x)


@torch.library.register_fake("ge_detectron_cpu::excite_backward")
def _(grad_out, x, g):
    return empty_like(x), empty_like(g)


@torch.library.register_fake("ge_detectron_cpu::excite_residual_backward")
def _(grad_out, out, x, g):
    return empty_like(x), empty_like(g), empty_like(x)
