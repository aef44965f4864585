"""The excite operators in PyTorch ops: what ``torch.ops.ge_detectron`` runs on the CPU when the C++
extension is not built, on meta tensors, and for float64 on CUDA (the Triton kernels take float32,
float16 and bfloat16). The same contract as the kernels: the sigmoid, the products and the sums in the
opmath type (float32, float64 for float64), each output rounded once, outputs in the layout rule's layout.
Inputs are checked by the caller (``excite_op.py``).
"""
import torch
import torch.nn.functional as F

from .excite_inputs import memory_format, opmath


def _upsample(gate, size):
    """gate resized to `size` by F.interpolate's nearest rule (a 1 x 1 gate broadcasts instead)."""
    return gate if gate.shape[-2:] == (1, 1) else F.interpolate(gate, size=size, mode="nearest")


def forward(x, g, shortcut=None):
    compute = opmath(x.dtype)
    out = x.to(compute) * _upsample(torch.sigmoid(g.to(compute)), x.shape[-2:])
    if shortcut is not None:
        out = torch.relu(out + shortcut.to(compute))
    return out.to(x.dtype).contiguous(memory_format=memory_format(x))


def backward(grad_out, x, g, out=None):
    compute = opmath(x.dtype)
    fmt = memory_format(x)
    m = grad_out.to(compute)
    if out is not None:
        m = torch.where(out > 0, m, 0.0)  # the ReLU's mask; also grad_shortcut
    gate = torch.sigmoid(g.to(compute))
    grad_x = (m * _upsample(gate, x.shape[-2:])).to(x.dtype).contiguous(memory_format=fmt)
    products = m * x.to(compute)
    if g.shape[-2:] == (1, 1):
        sums = products.sum(dim=(2, 3), keepdim=True)
    else:  # the adjoint of the nearest resize: each cell gets the sum over the pixels that read it
        sums = torch.ops.aten.upsample_nearest2d_backward(products, list(x.shape[-2:]), list(g.shape))
    grad_g = (sums * gate * (1 - gate)).to(g.dtype).contiguous(memory_format=memory_format(g))
    grad_shortcut = m.to(x.dtype).contiguous(memory_format=fmt) if out is not None else None
    return grad_x, grad_g, grad_shortcut
