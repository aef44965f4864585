"""The Triton kernels through their launcher ``ge_detectron.ops.excite_triton``, against the pure-PyTorch
reference: on CUDA where a GPU is present, on the CPU under Triton's interpreter otherwise.

The interpreter must be on before triton is imported, so ``make test`` runs this module a second time,
as ``TRITON_INTERPRET=1 pytest tests/test_excite_triton.py``; in the first run, without a GPU, the module
is skipped. GE_REQUIRE_TRITON=1 (CI) turns a missing triton into a failure. The cases are small: the
interpreter runs each program in numpy. Every kernel is met (forward; backward span, band and cell kernels
and the cell sums), with their aligned and unaligned, full and partial paths.
"""
import os

import pytest
import torch

from ge_detectron.layers import excite_reference, excite_residual_reference

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
try:
    from ge_detectron.ops import excite_triton
except ImportError as e:
    if os.environ.get("GE_REQUIRE_TRITON") == "1":
        raise ImportError(f"GE_REQUIRE_TRITON=1 but the Triton kernels cannot be imported: {e}") from e
    pytest.skip(f"triton is not installed: {e}", allow_module_level=True)
DEVICE = "cpu" if INTERPRET else "cuda" if torch.cuda.is_available() else None
if DEVICE is None:
    pytest.skip("no GPU, and TRITON_INTERPRET=1 is not set: `make test` runs this module again under Triton's "
                "interpreter", allow_module_level=True)

DTYPES = [(torch.float32, torch.float32), (torch.float16, torch.float16), (torch.bfloat16, torch.bfloat16),
          (torch.float16, torch.float32), (torch.bfloat16, torch.float32)]
DTYPE_IDS = ["f32", "f16", "bf16", "f16-gf32", "bf16-gf32"]
LAYOUTS = [torch.contiguous_format, torch.channels_last]
# (H, W, extent or (h, w), C), N = 2; what each exercises (NCHW backward; channels_last backward):
CASES = [
    (13, 17, 4, 3),       # odd sizes, E4 (band kernel: a full and a partial column chunk, unaligned rows)
    (7, 9, 2, 3),         # E2 (band: cells of 1-2 columns)
    (1, 1, 0, 3),         # a 1 x 1 map
    (7, 9, 0, 3),         # global (span kernel: 32 planes x 64, unaligned)
    (15, 16, 0, 3),       # global (span: 32 planes x 64, aligned)
    (16, 32, 8, 8),       # E8, aligned rows and channels (the vector paths), full column and channel chunks
    (33, 20, 16, 3),      # E16: bands of 11 rows
    (100, 5, 8, 2),       # h = 13 from H = 100 (floor(y * 13 / 100) is not y // 8 on 18 rows), a gate one
                          # cell wide (span: bands within planes)
    (40, 70, (2, 3), 2),  # bands of 20 rows (two row chunks); cells of 23-24 columns over 2-3 column chunks
    (48, 40, 0, 4),       # global on 1920 pixels (span: 1 plane x 2048; cell: 4 row blocks, then the sums)
    (8, 8, 0, 70),        # 70 channels (cell: a full and a partial channel block, unaligned)
]
FORWARD_TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.float16: dict(rtol=2e-3, atol=4e-3),
               torch.bfloat16: dict(rtol=1.6e-2, atol=3.2e-2)}
BACKWARD_TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float16: dict(rtol=2e-3, atol=1e-3),
                torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2)}


def gate_shape(H, W, extent):
    if isinstance(extent, tuple):
        return extent
    return (1, 1) if extent == 0 else (-(-H // extent), -(-W // extent))


def make_inputs(dtype, gdtype, H, W, extent, C, layout=torch.contiguous_format, N=2, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, dtype):
        return (torch.randn(*shape, generator=gen) * 2).to(DEVICE, dtype).contiguous(memory_format=layout)

    x, shortcut, grad = (rand(N, C, H, W, dtype=dtype) for _ in range(3))
    return x, rand(N, C, *gate_shape(H, W, extent), dtype=gdtype), shortcut, grad


def check_against_reference(x, g, shortcut, grad, residual, case):
    """Values against the reference in the same dtypes, gradients against the float64 reference's."""
    out = excite_triton.excite_forward(x, g, shortcut if residual else None)
    reference = excite_residual_reference(x, g, shortcut) if residual else excite_reference(x, g)
    assert out.dtype == x.dtype and out.shape == x.shape and out.is_contiguous(memory_format=layout_of(x))
    torch.testing.assert_close(out, reference, **FORWARD_TOL[x.dtype], msg=lambda m: f"out, {case}: {m}")
    grads = excite_triton.excite_backward(grad, x, g, out if residual else None)
    leaves = [t.detach().double().requires_grad_() for t in (x, g, shortcut)]
    (excite_residual_reference(*leaves) if residual else excite_reference(*leaves[:2])).backward(grad.double())
    for name, got, leaf, like in zip(("x", "g", "shortcut"), grads, leaves, (x, g, x)):
        if name == "shortcut" and not residual:
            assert got is None
            continue
        assert got.dtype == like.dtype and got.shape == like.shape
        torch.testing.assert_close(got, leaf.grad.to(like.dtype), **BACKWARD_TOL[like.dtype],
                                   msg=lambda m: f"grad_{name}, {case}: {m}")


def layout_of(t):
    return torch.channels_last if t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous() \
        else torch.contiguous_format


@pytest.mark.parametrize("layout", LAYOUTS, ids=["nchw", "channels_last"])
@pytest.mark.parametrize("residual", [False, True], ids=["excite", "residual"])
def test_triton_kernels_match_reference_float32(layout, residual):
    for H, W, extent, C in CASES:
        x, g, shortcut, grad = make_inputs(torch.float32, torch.float32, H, W, extent, C, layout)
        check_against_reference(x, g, shortcut, grad, residual, f"H={H} W={W} extent={extent} C={C}")


@pytest.mark.parametrize("layout", LAYOUTS, ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtypes", DTYPES[1:], ids=DTYPE_IDS[1:])
def test_triton_kernels_match_reference_half(layout, dtypes):
    """float16 / bfloat16 x with g in x's dtype or float32, on the cases with the vector paths (aligned for
    8-element vectors: W = 32, C = 8), bands within planes, cells over several column chunks and the cell
    sums."""
    for residual, (H, W, extent, C) in zip((True, False, True, False), CASES[5:6] + CASES[7:10]):
        x, g, shortcut, grad = make_inputs(*dtypes, H, W, extent, C, layout)
        check_against_reference(x, g, shortcut, grad, residual, f"H={H} W={W} extent={extent} C={C}")


@pytest.mark.parametrize("layout", LAYOUTS, ids=["nchw", "channels_last"])
def test_triton_backward_is_deterministic(layout):
    """Two runs give bitwise equal gradients: every sum is in a fixed order (no atomics)."""
    for H, W, extent, C in (CASES[8], CASES[9]):
        x, g, shortcut, grad = make_inputs(torch.float32, torch.float32, H, W, extent, C, layout)
        out = excite_triton.excite_forward(x, g, shortcut)
        first, second = (excite_triton.excite_backward(grad, x, g, out) for _ in range(2))
        for a, b in zip(first, second):
            assert torch.equal(a, b)


def test_triton_strided_and_misaligned_inputs():
    """Views with gaps, a transposed gate, and tensors whose data is not 16-byte aligned (copied first)."""
    x, g, shortcut, grad = make_inputs(torch.float32, torch.float32, 26, 34, 4, 3)
    x, shortcut, grad = x[:, :, ::2, 1:], shortcut[:, :, 1::2, :-1], grad[:, :, ::2, :-1]
    g = g.transpose(2, 3).contiguous().transpose(2, 3)[:, :, :, 1:]  # a strided 7 x 8 gate for 13 x 33
    check_against_reference(x, g, shortcut, grad, True, "strided")
    flat = torch.randn(1 + x.numel(), device=DEVICE)
    misaligned = flat[1:].view(x.shape)  # 4 bytes past an aligned allocation
    assert misaligned.data_ptr() % 16
    check_against_reference(misaligned, g, shortcut, grad, True, "misaligned")


def test_triton_empty_batch():
    x, g, shortcut, grad = make_inputs(torch.float32, torch.float32, 5, 6, 2, 3, N=0)
    assert excite_triton.excite_forward(x, g, shortcut).shape == x.shape
    grad_x, grad_g, grad_shortcut = excite_triton.excite_backward(grad, x, g, x)
    assert grad_x.shape == x.shape and grad_g.shape == g.shape and grad_shortcut.shape == x.shape


def test_triton_bad_inputs_raise():
    x, g, shortcut, grad = make_inputs(torch.float32, torch.float32, 13, 17, 4, 3)
    forward, backward = excite_triton.excite_forward, excite_triton.excite_backward
    cases = [
        (lambda: forward(x[0], g), r"x must be a 4-D \(N, C, H, W\) tensor, but got a 3-D tensor"),
        (lambda: forward(x, g[0]), r"g must be a 4-D \(N, C, h, w\) tensor, but got a 3-D tensor"),
        (lambda: forward(x, g[:, 1:]), r"g must have shape \(N, C, h, w\).*\[2, 3, 13, 17\].*\[2, 2, 4, 5\]"),
        (lambda: forward(x, g[1:]), r"g must have shape \(N, C, h, w\).*but got g of shape \[1, 3, 4, 5\]"),
        (lambda: forward(x, torch.zeros(2, 3, 14, 5, device=DEVICE)), r"1 <= h <= H.*\[2, 3, 14, 5\]"),
        (lambda: forward(x, g.half()), r"g must have x's dtype \(torch.float32\), but got torch.float16"),
        (lambda: forward(x.int(), g), r"x must be float32, float64, float16 or bfloat16, but got torch.int32"),
        (lambda: forward(x.double(), g.double()), r"the Triton kernels take float32, float16 or bfloat16 tensors"),
        (lambda: forward(x, g.to("meta")), rf"x and g must be on the same device, but x is on {DEVICE}"),
        (lambda: forward(x, g, shortcut[..., 1:]), r"shortcut must have x's shape \[2, 3, 13, 17\]"),
        (lambda: forward(x, g, shortcut.double()), r"shortcut must have x's dtype \(torch.float32\)"),
        (lambda: forward(x, g, shortcut.to("meta")), r"shortcut must be on x's device"),
        (lambda: backward(grad[:1], x, g), r"grad_out must have x's shape"),
        (lambda: backward(grad, x, g, shortcut.half()), r"out must have x's dtype"),
    ]
    for call, message in cases:
        with pytest.raises(RuntimeError, match=message):
            call()


def test_triton_index_range_is_checked():
    """Sizes beyond the kernels' 32-bit index arithmetic raise a clear error (meta tensors: nothing is
    allocated); more than 2**31 elements in all is accepted."""
    check = excite_triton._check_index_range
    big = torch.empty(1, 2**16, 2**8, 2**8, device="meta")  # 2**32 elements: N * C and N * H * W are small
    check(big, torch.empty(1, 2**16, 32, 32, device="meta"))
    with pytest.raises(RuntimeError, match=r"N \* H \* W = 2147483648 is too large for the Triton kernels' 32-bit"):
        check(torch.empty(2, 1, 2**15, 2**15, device="meta"), torch.empty(2, 1, 1, 1, device="meta"))
    with pytest.raises(RuntimeError, match=r"N \* C = 2147483648 is too large"):
        check(torch.empty(2**16, 2**15, 1, 1, device="meta"), torch.empty(2**16, 2**15, 1, 1, device="meta"))
