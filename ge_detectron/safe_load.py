"""Weights and checkpoints read as data: a file from outside (a model zoo, a colleague, an issue thread) can
hold a pickle that calls any function while it is read. Here a ``.pkl`` goes through an unpickler that builds
only numpy arrays, dtypes and scalars, plain containers, numbers and strings (what detectron2's model-zoo
files, MSRA's Caffe2 ``R-50.pkl`` and tools/convert_weights.py's files hold), and a ``.pth`` through
``torch.load(..., weights_only=True)`` (tensors, plain containers; the trainer state ge_detectron saves is
plain values: engine/resume.py). A file that needs anything else is an UnsafeFileError naming what it
refers to; nothing in it has run."""
import pickle
import re

import torch

__all__ = ["UnsafeFileError", "load_pickle", "load_torch"]

# The globals a pickle of numpy arrays refers to (numpy 1 writes numpy.core, numpy 2 numpy._core; protocol 2
# files written by Python 3 encode bytes with _codecs.encode), and the containers pickle has no opcode for.
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),
    ("collections", "OrderedDict"),
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "complex"), ("builtins", "bytearray"),
}


class UnsafeFileError(ValueError):
    """A weights or checkpoint file that refers to a function or class outside what weights hold; it was
    not loaded."""


def _refusal(path, name):
    return UnsafeFileError(f"{path} was not loaded: it refers to {name}, which is code, not weights (only numpy "
                           "arrays, tensors, numbers, strings and plain containers are read from weights files). "
                           "Use weights from a source you trust, saved as tensors or arrays.")


class _WeightsUnpickler(pickle.Unpickler):
    def __init__(self, file, path):
        super().__init__(file, encoding="latin1")  # Caffe2 files are Python 2 pickles, as detectron2 reads them
        self.path = path

    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise _refusal(self.path, f"{module}.{name}")

    def persistent_load(self, pid):
        raise _refusal(self.path, f"a persistent object {str(pid)[:40]!r}")


def load_pickle(file, path):
    """The object pickled in the open binary ``file`` (named ``path`` in errors), built only from numpy arrays,
    dtypes and scalars, containers, numbers and strings. Raises UnsafeFileError for anything else, and
    pickle's own errors (UnpicklingError, EOFError) for a file that is not a pickle."""
    return _WeightsUnpickler(file, path).load()


def load_torch(file, path):
    """``torch.load(file, map_location="cpu", weights_only=True)``; a file torch refuses for a global it would
    have to import is an UnsafeFileError naming that global (``path`` names the file)."""
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found is None:
            raise
        raise _refusal(path, found.group(1)) from None
