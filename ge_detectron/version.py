"""The package's version (``ge_detectron.__version__``) and the oldest torch it supports, in the base layer so
that every layer may report them. setup.py's ``MIN_TORCH`` (install_requires) repeats the minimum."""
import torch

__version__ = "0.1.0"
# torch 2.5 has no torch.library.triton_op / wrap_triton, which define the fused excite operators
# (ge_detectron/ops/excite_op.py); under torch 2.6's torch.export the operators' C++ kernels stay in the graph
# instead of decomposing, so a GE model does not export through torch.export / the dynamo ONNX exporter.
# torchvision 0.22 is the release paired with torch 2.7.
MIN_TORCH = (2, 7)


def check_torch_version(version=torch.__version__):
    """ImportError, one line naming the minimum, for a torch older than MIN_TORCH."""
    release = tuple(int(part) for part in version.split("+")[0].split(".")[:2])
    if release < MIN_TORCH:
        minimum = ".".join(map(str, MIN_TORCH))
        raise ImportError(f"ge_detectron needs torch >= {minimum} (with its torchvision), found torch {version}: "
                          f"install e.g. `pip install 'torch>={minimum}' torchvision` (README, Versions).")
