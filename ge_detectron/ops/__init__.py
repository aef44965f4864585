"""The fused excite operators ``torch.ops.ge_detectron.*``: their definitions and registrations
(``excite_op``), the Triton kernels and their launcher (``excite_kernels``, ``excite_triton``: CUDA), the
C++ kernels' binding (``excite_cpp``; the kernels are in ge_detectron/csrc) and a pure-PyTorch
implementation (``excite_torch``). Importing the package registers the operators."""
from .excite_op import excite, excite_residual, native_kernels, unavailable_reason

__all__ = ["excite", "excite_residual", "native_kernels", "unavailable_reason"]
