"""Bindings of the fused excite operators ``torch.ops.ge_detectron.*`` (built from ge_detectron/csrc)."""
import torch

try:
    from .. import _C  # noqa: F401  (registers the operators)

    _LOAD_ERROR = None
except ImportError as e:  # the package was installed without building its extension
    _LOAD_ERROR = e


def is_available():
    return _LOAD_ERROR is None


def unavailable_reason():
    return f"ge_detectron._C could not be imported: {_LOAD_ERROR}" if _LOAD_ERROR else ""


def excite(x, g):
    return torch.ops.ge_detectron.excite(x, g)


def excite_residual(x, g, shortcut):
    return torch.ops.ge_detectron.excite_residual(x, g, shortcut)
