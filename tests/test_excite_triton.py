"""The Triton kernels through their launcher ``ge_detectron.ops.excite_triton``, against the pure-PyTorch
reference: on CUDA where a GPU is present, on the CPU under Triton's interpreter otherwise.

The interpreter must be on before triton is imported, so ``make test`` runs this module a second time,
as ``TRITON_INTERPRET=1 pytest tests/test_excite_triton.py``; in the first run, without a GPU, the module
is skipped. GE_REQUIRE_TRITON=1 (CI) turns a missing triton into a failure. The cases are small: the
interpreter runs each program in numpy. Every kernel is met (forward; backward span, band and cell kernels
and the cell sums), with their aligned and unaligned, full and partial paths.
"""
import logging
import os
import re

import pytest
import torch

from ge_detectron import ops
from ge_detectron.layers import GatherExcite, excite_reference, excite_residual_reference

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
try:
    import triton
    import triton.language as tl  # noqa: F401  (Triton requires it visible to the @triton.jit function below)

    from ge_detectron.ops import excite_op, excite_self_check, excite_triton
except ImportError as e:
    if os.environ.get("GE_REQUIRE_TRITON") == "1":
        raise ImportError(f"GE_REQUIRE_TRITON=1 but the Triton kernels cannot be imported: {e}") from e
    pytest.skip(f"triton is not installed: {e}", allow_module_level=True)
DEVICE = "cpu" if INTERPRET else "cuda" if torch.cuda.is_available() else None
if DEVICE is None:
    pytest.skip("no GPU, and TRITON_INTERPRET=1 is not set: `make test` runs this module again under Triton's "
                "interpreter", allow_module_level=True)


@triton.jit
def _probe(x_ptr):
    pass


if INTERPRET:  # torch's wrap_triton accepts the interpreter's kernels from some release after 2.9 (2.14 does)
    try:
        torch.library.wrap_triton(_probe)
    except RuntimeError as e:
        if os.environ.get("GE_REQUIRE_TRITON") == "1":
            raise
        pytest.skip(f"torch {torch.__version__}'s wrap_triton refuses interpreted kernels ({e}): run this module "
                    "under the interpreter with a later torch (2.14)", allow_module_level=True)

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
        (lambda: forward(x, g.int()), r"g must be float32, float64, float16 or bfloat16, but got torch.int32"),
        (lambda: forward(x.int(), g), r"x must be float32, float64, float16 or bfloat16, but got torch.int32"),
        (lambda: forward(x.double(), g.double()), r"the Triton kernels take float32, float16 or bfloat16 tensors"),
        (lambda: forward(x, g.to("meta")), rf"x and g must be on the same device, but x is on {DEVICE}"),
        (lambda: forward(x, g, shortcut[..., 1:]), r"shortcut must have x's shape \[2, 3, 13, 17\]"),
        (lambda: forward(x, g, shortcut.double()), r"the Triton kernels take float32, float16 or bfloat16"),
        (lambda: forward(x, g, shortcut.to("meta")), r"shortcut must be on x's device"),
        (lambda: backward(grad[:1], x, g), r"grad_out must have x's shape"),
        (lambda: backward(grad, x, g, shortcut.long()), r"out must be float32, float64, float16 or bfloat16"),
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


@pytest.fixture
def triton_on_cpu(monkeypatch):
    """torch.ops.ge_detectron runs the Triton kernels on CPU tensors (interpreted), with no self-check result
    cached; on a GPU nothing is rerouted."""
    if INTERPRET:
        monkeypatch.setattr(excite_op, "excite_cpp", excite_triton)
    monkeypatch.setattr(excite_self_check, "_RESULTS", {})


# (x, g, shortcut) dtypes beyond one dtype throughout: autocast's (a float32 map with a float16 / bfloat16
# gate) and the other promotions the reference makes.
MIXED_DTYPES = [(torch.float32, torch.float16, torch.float32), (torch.float32, torch.bfloat16, torch.bfloat16),
                (torch.bfloat16, torch.float32, torch.float32), (torch.float16, torch.bfloat16, torch.float16),
                (torch.bfloat16, torch.bfloat16, torch.float16)]


@pytest.mark.parametrize("layout", LAYOUTS, ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtypes", MIXED_DTYPES, ids=lambda d: "-".join(str(t)[6:] for t in d))
def test_triton_mixed_dtypes_follow_the_reference(triton_on_cpu, layout, dtypes):
    """The operators on the Triton kernels: the reference's output dtype (x's promoted with the shortcut's)
    and values, each input's gradient in its dtype against the float64 reference's."""
    x, g, shortcut, grad = make_inputs(torch.float32, torch.float32, 16, 32, 8, 8, layout)
    x, g, shortcut = (t.to(d) for t, d in zip((x, g, shortcut), dtypes))
    loosest = max(dtypes, key=lambda d: BACKWARD_TOL[d]["rtol"])
    for residual in (False, True):
        inputs = (x, g, shortcut) if residual else (x, g)
        leaves = [t.detach().requires_grad_() for t in inputs]
        out = (torch.ops.ge_detectron.excite_residual if residual else torch.ops.ge_detectron.excite)(*leaves)
        want = excite_residual_reference(*inputs) if residual else excite_reference(*inputs)
        assert out.dtype == want.dtype and out.is_contiguous(memory_format=layout)
        torch.testing.assert_close(out, want, **FORWARD_TOL[loosest])
        out.backward(grad.to(out.dtype))
        leaves64 = [t.detach().double().requires_grad_() for t in inputs]
        (excite_residual_reference(*leaves64) if residual else excite_reference(*leaves64)).backward(
            grad.to(out.dtype).double())
        for leaf, leaf64 in zip(leaves, leaves64):
            assert leaf.grad.dtype == leaf.dtype
            torch.testing.assert_close(leaf.grad, leaf64.grad.to(leaf.dtype), **BACKWARD_TOL[loosest])


def record_launches(monkeypatch):
    """[(kernel name, its arguments by name)] of every launch, each still run."""
    launches = []
    real = excite_triton.wrap_triton

    def wrap(kernel):
        launcher = real(kernel)

        class Recorder:
            def __getitem__(self, grid):
                def call(*args, **kwargs):
                    launches.append((kernel.fn.__name__, dict(zip(kernel.arg_names, args))))
                    return launcher[grid](*args, **kwargs)
                return call
        return Recorder()

    monkeypatch.setattr(excite_triton, "wrap_triton", wrap)
    return launches


@pytest.mark.parametrize("layout", LAYOUTS, ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_offset_views_are_not_copied_and_take_the_unaligned_path(monkeypatch, layout, dtype):
    """Tensors one element past an aligned allocation (not 16-byte aligned): the kernels read them in place,
    the backward with its aligned flag off, and give the reference's results; aligned copies of the same
    values set the flag (the sizes allow vectors: W = 32, C = 8)."""
    x, g, shortcut, grad = make_inputs(dtype, dtype, 16, 32, 8, 8, layout)
    offset = [offset_copy(t) for t in (x, g, shortcut, grad)]
    for (x, g, shortcut, grad), aligned in ((offset, 0), ((x, g, shortcut, grad), 1)):
        launches = record_launches(monkeypatch)
        check_against_reference(x, g, shortcut, grad, True, f"aligned={aligned}")
        forward, backward = launches[0][1], launches[-1][1]
        assert forward["x_ptr"].data_ptr() == x.data_ptr() and forward["shortcut_ptr"].data_ptr() == shortcut.data_ptr()
        assert backward["x_ptr"].data_ptr() == x.data_ptr() and backward["grad_out_ptr"].data_ptr() == grad.data_ptr()
        assert forward["g_ptr"].data_ptr() == g.data_ptr()
        assert backward["aligned"] == aligned


def offset_copy(t):
    """t's values in a tensor of t's layout whose data starts one element past an allocation's."""
    N, C, H, W = t.shape
    flat = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    view = flat[1:].view(N, C, H, W) if t.is_contiguous() else flat[1:].view(N, H, W, C).permute(0, 3, 1, 2)
    view.copy_(t)
    assert view.storage_offset() == 1 and view.stride() == t.stride() and view.data_ptr() % 16
    return view


def test_triton_launches_run_under_the_tensors_device_guard(monkeypatch):
    """Every launch happens inside the device guard of x's device (so on x's device and its current
    stream, whichever device is current); a CUDA tensor's guard is torch.cuda.device of its device."""
    entered = []

    class Guard:
        def __init__(self, t):
            self.device = t.device

        def __enter__(self):
            entered.append(self.device)

        def __exit__(self, *exc):
            entered.pop()

    device_of = excite_triton._device_of
    monkeypatch.setattr(excite_triton, "_device_of", Guard)
    guarded = []
    real = excite_triton.wrap_triton

    def wrap(kernel):
        guarded.append(list(entered))
        return real(kernel)

    monkeypatch.setattr(excite_triton, "wrap_triton", wrap)
    for layout in LAYOUTS:
        x, g, shortcut, grad = make_inputs(torch.float32, torch.float32, 48, 40, 0, 4, layout)
        out = excite_triton.excite_forward(x, g, shortcut)
        excite_triton.excite_backward(grad, x, g, out)
    assert len(guarded) >= 5 and all(devices == [x.device] for devices in guarded), guarded
    cuda_1 = device_of(type("T", (), {"device": torch.device("cuda", 1)})())
    assert isinstance(cuda_1, torch.cuda.device) and cuda_1.idx == 1  # constructed only: no GPU needed


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_self_check_of_the_triton_kernels_passes(triton_on_cpu, monkeypatch, dtype, channels_last):
    launches = record_launches(monkeypatch)
    result = ops.self_check(DEVICE, dtype, channels_last=channels_last)
    assert result.ok and result.kernels == "excite_triton" and result.cases == 4, result.describe()
    kernels = {name for name, _ in launches}  # every kernel of the layout
    assert kernels == ({"excite_forward_kernel", "excite_backward_cell_kernel", "excite_backward_cell_sum_kernel"}
                       if channels_last else
                       {"excite_forward_kernel", "excite_backward_band_kernel", "excite_backward_span_kernel"})


@triton.jit
def _wrong_grad_g(sums, gate):
    return sums * gate  # the sigmoid's derivative forgotten


def _raise(*args, **kwargs):
    raise RuntimeError("deliberately broken")


BROKEN = {  # what to replace, with what, and the failure it must be named by
    "wrong": (excite_triton.kernels, "_grad_g", _wrong_grad_g, r"backward \(gate of 3 x 3 cells\): grad_g differs"),
    "raises": (excite_triton, "_backward_channels_last", _raise,
               r"forward/backward \(global gate\) raised RuntimeError: deliberately broken"),
}


@pytest.mark.parametrize("broken", BROKEN)
@pytest.mark.parametrize("fused", ["auto", "on"])
def test_self_check_catches_a_broken_triton_kernel(triton_on_cpu, monkeypatch, caplog, broken, fused):
    """A wrong or a raising kernel: fused="auto" logs one warning naming it and runs the reference from then
    on (the reference's results, bitwise); fused="on" raises it."""
    where, name, replacement, message = BROKEN[broken]
    monkeypatch.setattr(where, name, replacement)
    torch.manual_seed(0)
    module = GatherExcite(8, variant="theta", extent=4, fused=fused).to(DEVICE)
    reference = GatherExcite(8, variant="theta", extent=4, fused="off").to(DEVICE)
    reference.load_state_dict(module.state_dict())
    x, _, shortcut, grad = make_inputs(torch.float32, torch.float32, 12, 12, 4, 8, torch.channels_last)
    if fused == "on":
        with pytest.raises(RuntimeError, match=message + r".*fused='on'"):
            module(x, shortcut)
        return
    with caplog.at_level(logging.WARNING, logger=excite_self_check.__name__):
        results = []
        for m in (module, module, reference):
            leaves = [t.detach().requires_grad_() for t in (x, shortcut)]
            out = m(*leaves)
            out.backward(grad)
            results.append([out, *(t.grad for t in leaves)])
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert re.search(message, warning) and "uses the pure-PyTorch reference" in warning
    for got, want in zip(results[1], results[2]):
        assert torch.equal(got, want)
