"""The fused excite operators ``torch.ops.ge_detectron.*``: their definitions and registrations
(``excite_op``), the Triton kernels and their launcher (``excite_kernels``, ``excite_triton``: CUDA), the
C++ kernels' binding (``excite_cpp``; the kernels are in ge_detectron/csrc) and a pure-PyTorch
implementation (``excite_torch``), and the kernels' self-check (``excite_self_check``). Importing the package
registers the operators."""
from .excite_inputs import ExciteInputError, check_like_x
from .excite_op import excite, excite_residual, native_kernels, unavailable_reason
from .excite_self_check import SelfCheckResult, kernels_verified, self_check

__all__ = ["excite", "excite_residual", "native_kernels", "unavailable_reason", "ExciteInputError", "check_like_x",
           "SelfCheckResult", "kernels_verified", "self_check"]
