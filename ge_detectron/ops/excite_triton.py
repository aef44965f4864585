"""The Triton implementation of the excite operators: the CUDA kernels of ``torch.ops.ge_detectron``.

    excite_forward(x, g, shortcut=None) -> out
        x * sigmoid(up(g)), or relu(x * sigmoid(up(g)) + shortcut)
    excite_backward(grad_out, x, g, out=None) -> (grad_x, grad_g, grad_shortcut)
        out given means the residual form, whose ReLU mask is out > 0; grad_shortcut is None without it

x, shortcut, grad_out, out: (N, C, H, W); g: (N, C, h, w), 1 <= h <= H, 1 <= w <= W; any of float32,
float16 and bfloat16 (the dtype rule of ``excite_inputs``: the output in x's dtype promoted with the
shortcut's, grad_x and grad_g in x's and g's, grad_shortcut in grad_out's); ``up`` is
F.interpolate(mode="nearest"). Layouts follow ``excite_inputs.memory_format``. Bad input raises a
RuntimeError naming the problem. The kernels run on CUDA tensors, and with ``TRITON_INTERPRET=1`` set
before triton is imported on CPU tensors too (Triton's interpreter, for the tests). The operators call
``forward`` / ``backward``, the same without the checks and conversions, which launch through
``wrap_triton`` (so that torch.compile traces into the kernels) under the tensors' device guard: on x's
device and its current stream, whichever device is current. The kernels take any alignment: the aligned
fast paths are chosen at launch (``_aligned``). The kernels are in ``excite_kernels``; docs/excite_op.md
explains the design.
"""
import contextlib
import functools
import math

import numpy as np
import torch
from torch._subclasses.fake_tensor import is_fake
from torch.library import wrap_triton
from triton.runtime.jit import type_canonicalisation_dict

from . import excite_kernels as kernels
from .excite_inputs import (backward_dtypes, check_backward, check_forward, empty_like, forward_dtypes,
                            grads_in_input_dtypes, memory_format)

__all__ = ["excite_forward", "excite_backward", "specializations"]

# Tile shapes. Each kernel is compiled once per dtype combination and tile shape listed here: the set
# that specializations() enumerates for the compile test.
FORWARD_BLOCK = 1024
SPAN_TILES = ((32, 64), (1, 2048))  # (PB planes, BS elements of a band)
BAND_WIDTH = 16  # BW columns
BAND_TILES = ((32, 4), (16, 8))  # (PB planes, BR rows)
CELL_TILE = (32, 64)  # (BQ pixels, BC channels)
CELL_SUM_TILE = (16, 64)  # (BK cells, BC channels)
BACKWARD_WARPS = 8  # the backward tiles hold 2048 elements: 8 per thread (the forward's 1024: 4 warps, the default)
CELL_PIXELS_PER_PROGRAM = 512  # pixels a channels_last backward program sums, about: rows are split beyond
INT32_LIMIT = 2**31 - FORWARD_BLOCK - 2048  # sizes that the kernels' 32-bit index arithmetic must stay below
MAX_GRID_Y = 65535
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def excite_forward(x, g, shortcut=None):
    """``x * sigmoid(up(g))``, or with ``shortcut`` ``relu(x * sigmoid(up(g)) + shortcut)``."""
    check_forward("excite_triton.excite_forward", x, g, shortcut)
    x, g, shortcut = forward_dtypes(x, g, shortcut)
    _check_dtype("excite_triton.excite_forward", x)
    return forward(x, g, shortcut)


def excite_backward(grad_out, x, g, out=None):
    """``(grad_x, grad_g, grad_shortcut)`` of excite_forward; ``out`` (its output) for the residual form."""
    check_backward("excite_triton.excite_backward", grad_out, x, g, out)
    inputs = backward_dtypes(grad_out, x, g, out)
    _check_dtype("excite_triton.excite_backward", inputs[1])
    return grads_in_input_dtypes(backward(*inputs), x, g)


def _check_dtype(op, x):
    if x.dtype not in DTYPES:
        raise RuntimeError(f"{op}: the Triton kernels take float32, float16 or bfloat16 tensors, but x is {x.dtype} "
                           "(torch.ops.ge_detectron runs float64 in PyTorch ops)")


def forward(x, g, shortcut=None):
    """excite_forward for checked inputs in the kernels' dtypes (``excite_inputs.forward_dtypes``)."""
    fmt = memory_format(x)
    x = x.contiguous(memory_format=fmt)
    has_shortcut = shortcut is not None
    shortcut = shortcut.contiguous(memory_format=fmt) if has_shortcut else x  # x: a placeholder, not read
    out = torch.empty_like(x, memory_format=fmt)
    if x.numel() == 0:
        return out
    (N, C, H, W), (h, w), g_strides = _sizes(x, g)
    _check_index_range(x, g)
    with _device_of(x):
        wrap_triton(kernels.excite_forward_kernel)[(math.ceil(N * C * H * W / FORWARD_BLOCK),)](
            x, g, shortcut, out, N * C * H * W, int(has_shortcut), C, H, W, h, w, H * W, *g_strides,
            _scale(h, H), _scale(w, W), *divider(C), *divider(W), *divider(H), *divider(H * W),
            CHANNELS_LAST=fmt == torch.channels_last, BLOCK=FORWARD_BLOCK)
    return out


def backward(grad_out, x, g, out=None):
    """excite_backward for checked inputs in the kernels' dtypes (``excite_inputs.backward_dtypes``)."""
    fmt = memory_format(x)
    x, grad_out = x.contiguous(memory_format=fmt), grad_out.contiguous(memory_format=fmt)
    residual = out is not None
    out = out.contiguous(memory_format=fmt) if residual else x  # placeholders, as grad_shortcut's below: never accessed
    grad_x = torch.empty_like(x, memory_format=fmt)
    grad_shortcut = torch.empty_like(x, memory_format=fmt) if residual else grad_x
    grad_g = empty_like(g)
    if x.numel() == 0:
        return grad_x, grad_g.zero_(), grad_shortcut if residual else None
    _check_index_range(x, g, grad_g)
    (N, C, H, W), (h, w), g_strides = _sizes(x, g)
    grad_g_strides = [int(s) for s in grad_g.stride()]
    vec = 16 // x.element_size()  # elements per 16-byte vector
    tensors = (grad_out, out, x, g, grad_x, grad_shortcut, grad_g)
    pointers = _aligned(grad_out, out, x, grad_x, grad_shortcut)
    with _device_of(x):
        if fmt == torch.channels_last:
            _backward_channels_last(tensors, int(residual), pointers and C % vec == 0, N, C, H, W, h, w, g_strides,
                                    grad_g_strides)
        elif w == 1:
            PB, BS = span_tile(_longest_run(H, h) * W)
            aligned = pointers and H * W % vec == 0 and (h == 1 or W % vec == 0)
            wrap_triton(kernels.excite_backward_span_kernel)[(math.ceil(N * C / PB), h)](
                *tensors, int(residual), int(aligned), N * C, C, H, W, h, H * W, *g_strides[:3],
                *grad_g_strides[:3], _scale(h, H), PB=PB, BS=BS, num_warps=BACKWARD_WARPS)
        else:
            PB, BR = band_tile(_longest_run(H, h))
            aligned = pointers and W % vec == 0
            wrap_triton(kernels.excite_backward_band_kernel)[(math.ceil(N * C / PB), h)](
                *tensors, int(residual), int(aligned), N * C, C, H, W, h, w, H * W, *g_strides, *grad_g_strides,
                _scale(h, H), _scale(w, W), PB=PB, BR=BR, BW=BAND_WIDTH, num_warps=BACKWARD_WARPS)
    return grad_x, grad_g, grad_shortcut if residual else None


def _device_of(t):
    """The device guard of t's device (a CUDA device; nothing for the interpreter's CPU tensors): Triton
    launches on the current device and that device's current stream, so under the guard it launches on
    t's device and t's device's current stream, whichever device the caller had made current."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def _sizes(x, g):
    """x's and g's sizes and g's strides as ints (under torch.compile's dynamic shapes this specialises the
    launch on them: the tile choice, the divisors and the scales are host-side arithmetic)."""
    return [int(s) for s in x.shape], [int(s) for s in g.shape[2:]], [int(s) for s in g.stride()]


def _backward_channels_last(tensors, residual, aligned, N, C, H, W, h, w, g_strides, grad_g_strides):
    g, grad_g = tensors[3], tensors[6]
    BQ, BC = CELL_TILE
    rows, rows_per_block = _longest_run(H, h), cell_rows_per_block(H, h, W, w)
    row_blocks = math.ceil(rows / rows_per_block)
    cells = N * h * w
    # With one row block per cell the kernel writes grad_g; otherwise the blocks' sums go to `partial`.
    partial = torch.empty(cells * row_blocks if row_blocks > 1 else 1, C, device=g.device, dtype=torch.float32)
    wrap_triton(kernels.excite_backward_cell_kernel)[(cells * row_blocks, math.ceil(C / BC))](
        *tensors, partial, residual, int(aligned), C, H, W, h, w, row_blocks, rows_per_block, *g_strides,
        *grad_g_strides, _scale(h, H), _scale(w, W), BQ=BQ, BC=BC, num_warps=BACKWARD_WARPS)
    if row_blocks > 1:
        BK, BC = CELL_SUM_TILE
        wrap_triton(kernels.excite_backward_cell_sum_kernel)[(math.ceil(cells / BK), math.ceil(C / BC))](
            partial, g, grad_g, cells, row_blocks, C, h, w, *g_strides, *grad_g_strides, BK=BK, BC=BC)


def span_tile(band_elements):
    """(PB, BS) for bands of up to `band_elements` elements: the widest chunk that wastes at most 1/8 of
    the lanes on a band's last chunk, or the narrowest."""
    for PB, BS in reversed(SPAN_TILES):
        if math.ceil(band_elements / BS) * BS * 7 <= band_elements * 8:
            return PB, BS
    return SPAN_TILES[0]


def band_tile(band_rows):
    """(PB, BR) for bands of up to `band_rows` rows: BR covers a band's rows, up to 8 at a time."""
    for PB, BR in BAND_TILES:
        if BR >= band_rows:
            return PB, BR
    return BAND_TILES[-1]


def cell_rows_per_block(H, h, W, w):
    """Rows of a gate cell that one channels_last backward program takes: all of them for cells of up to
    CELL_PIXELS_PER_PROGRAM pixels, else a block (so that large cells, a global gate's above all, are
    spread over enough programs)."""
    return max(1, min(_longest_run(H, h), CELL_PIXELS_PER_PROGRAM // _longest_run(W, w)))


@functools.lru_cache(maxsize=None)
def _longest_run(n_out, n_in):
    """The most destination indices that read one source index under the nearest rule."""
    scale = _scale(n_in, n_out)
    src = np.minimum(np.floor(np.arange(n_out, dtype=np.float32) * np.float32(scale)), n_in - 1)
    return int(np.bincount(src.astype(np.int64), minlength=n_in).max())


@functools.lru_cache(maxsize=None)
def divider(d):
    """(magic, shift) such that a // d == (umulhi(a, magic) + a) >> shift for 0 <= a < 2**31, 0 < d < 2**31
    (the multiply-shift division of PyTorch's IntDivider)."""
    shift = (d - 1).bit_length()
    return ((1 << 32) * ((1 << shift) - d)) // d + 1, shift


def _scale(n_in, n_out):
    """float(n_in) / n_out in float32, as ATen's nearest resize computes it (compute_scales_value<float>)."""
    return float(np.float32(n_in) / np.float32(n_out))


def _aligned(*tensors):
    """Whether every tensor's data starts on a 16-byte boundary: with the strides' divisibility, the
    condition of the backward kernels' fast paths (``tl.multiple_of`` hints, 16-byte vector accesses).
    Fake tensors (torch.compile, meta) have no address; their storage offset tells (allocations are
    16-byte aligned, and torch.compile's Inductor checks its graph inputs' alignment itself)."""
    def offset(t):
        return t.storage_offset() * t.element_size() if is_fake(t) or t.device.type == "meta" else t.data_ptr()

    return all(int(offset(t)) % 16 == 0 for t in tensors)


def _check_index_range(x, g, grad_g=None):
    """The kernels index the full-size tensors with 64-bit offsets but compute planes, pixels, rows and
    the gate's offsets in 32 bits; larger sizes raise here instead of overflowing."""
    N, C, H, W = x.shape
    sizes = {"N * C": N * C, "N * H * W": N * H * W,
             "the span of g's strides": sum((n - 1) * s for n, s in zip(g.shape, g.stride())) + 1}
    if grad_g is not None:
        sizes["the span of grad_g's strides"] = sum((n - 1) * s for n, s in zip(grad_g.shape, grad_g.stride())) + 1
    for what, size in sizes.items():
        if size >= INT32_LIMIT:
            raise RuntimeError(f"excite_triton: x of shape {list(x.shape)} and g of shape {list(g.shape)}: "
                               f"{what} = {size} is too large for the Triton kernels' 32-bit index arithmetic "
                               f"(below {INT32_LIMIT}; the element count itself may exceed 2**31)")
    if g.shape[2] > MAX_GRID_Y or math.ceil(C / CELL_TILE[1]) > MAX_GRID_Y:
        raise RuntimeError(f"excite_triton: x of shape {list(x.shape)} and g of shape {list(g.shape)}: more gate "
                           f"rows or channel blocks ({CELL_TILE[1]} channels each) than the CUDA grid's limit of "
                           f"{MAX_GRID_Y} per dimension")


def specializations():
    """Every (kernel, signature, constexprs, options) the launcher can compile: the compile test builds each
    for sm_80 and sm_90, with 16-byte aligned pointers (every fresh allocation; Triton specialises a
    launch on it) and integers unspecialised."""
    dtypes = [("fp32", "fp32"), ("fp16", "fp16"), ("bf16", "bf16"), ("fp16", "fp32"), ("bf16", "fp32")]
    backward = {"num_warps": BACKWARD_WARPS}
    out = []
    for x_type, g_type in dtypes:
        def add(kernel, constexprs, options=backward):
            out.append((kernel, _signature(kernel, x_type, g_type), constexprs, options))

        for channels_last in (False, True):
            add(kernels.excite_forward_kernel, {"CHANNELS_LAST": channels_last, "BLOCK": FORWARD_BLOCK}, {})
        for PB, BS in SPAN_TILES:
            add(kernels.excite_backward_span_kernel, {"PB": PB, "BS": BS})
        for PB, BR in BAND_TILES:
            add(kernels.excite_backward_band_kernel, {"PB": PB, "BR": BR, "BW": BAND_WIDTH})
        add(kernels.excite_backward_cell_kernel, dict(zip(("BQ", "BC"), CELL_TILE)))
    for g_type in ("fp32", "fp16", "bf16"):
        kernel = kernels.excite_backward_cell_sum_kernel
        out.append((kernel, _signature(kernel, "fp32", g_type), dict(zip(("BK", "BC"), CELL_SUM_TILE)), {}))
    return out


def _signature(kernel, x_type, g_type):
    """Triton signature of `kernel`: g and grad_g in g's type, the partial sums float32, the other pointers in
    x's type, scalars and constexprs by their annotations, in Triton's short form ("i32", "fp32"): the triton of
    torch 2.7 (3.3) writes a ``tl.int32`` annotation as "triton.language.int32", later ones as "i32"."""
    pointers = {"g_ptr": g_type, "grad_g_ptr": g_type, "partial_ptr": "fp32"}
    return {p.name: "*" + pointers.get(p.name, x_type) if p.name.endswith("_ptr") else _short_type(p.annotation)
            for p in kernel.params}


def _short_type(annotation):
    name = annotation.removeprefix("triton.language.")
    return type_canonicalisation_dict.get(name, name)
