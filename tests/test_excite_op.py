"""The fused excite operators torch.ops.ge_detectron.* against the pure-PyTorch reference: on the CPU
(the C++ kernels; PyTorch ops where the extension is not built) and, where a GPU is present, on CUDA
(the Triton kernels). The Triton kernels on the CPU, under Triton's interpreter: test_excite_triton.py.

test_extension_is_built fails if GE_REQUIRE_EXTENSION=1 (CI) and the extension is not built; the tests of
the C++ kernels' own properties skip without it.
"""
import collections
import copy
import logging
import os
import re
import warnings

import detectron2.utils.logger
import pytest
import torch
import torch.nn.functional as F

from ge_detectron import ops
from ge_detectron.layers import GatherExcite, excite_reference, excite_residual_reference, uses_fused_op
from ge_detectron.layers import gather_excite
from ge_detectron.ops import excite_inputs, excite_op
from ge_detectron.ops import excite_self_check as self_check_module

try:
    from ge_detectron.ops import excite_cpp
except ImportError:  # the extension is not built: the tests that need it skip
    excite_cpp = None

needs_extension = pytest.mark.skipif(ops.native_kernels("cpu") is None, reason=ops.unavailable_reason("cpu"))
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=needs_gpu)]
OPS = torch.ops.ge_detectron

# (x dtype, g dtype): g may be float32 under a float16/bfloat16 x (autocast).
DTYPES = [(torch.float32, torch.float32), (torch.float16, torch.float16), (torch.bfloat16, torch.bfloat16),
          (torch.float16, torch.float32), (torch.bfloat16, torch.float32)]
DTYPE_IDS = ["f32", "f16", "bf16", "f16-gf32", "bf16-gf32"]
# (H, W, extent): odd sizes, every extent; g has ceil(H / e) x ceil(W / e) cells, 1 x 1 when global (0).
# Gates one cell wide take the CPU kernels' uniform-row path: (37, 7, 8) with several gate rows, (45, 50, 0)
# with a plane longer than that path's 1024-element accumulator.
CASES = [(100, 100, 8), (7, 9, 0), (7, 9, 2), (13, 17, 4), (13, 17, 8), (13, 17, 16), (33, 20, 0), (33, 20, 2),
         (40, 24, 16), (37, 7, 8), (45, 50, 0)]
LAYOUTS = [torch.contiguous_format, torch.channels_last]
# Forward against the reference run in the same dtypes, which rounds more often than the kernel (the
# residual sum is rounded after the product): the tolerance is a few ulps of |x * gate| ~ 4.
FORWARD_TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.float16: dict(rtol=2e-3, atol=4e-3),
               torch.bfloat16: dict(rtol=1.6e-2, atol=3.2e-2)}
# Backward against the reference's float64 gradients, rounded to the gradients' dtypes.
BACKWARD_TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float16: dict(rtol=2e-3, atol=1e-3),
                torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2)}


def gate_size(size, extent):
    return 1 if extent == 0 else -(-size // extent)


def make_inputs(device, dtype, gdtype, H, W, extent, layout=torch.contiguous_format, N=2, C=20, seed=0):
    """x, g, shortcut and a gradient for the output; C = 20 covers vector bodies and scalar tails."""
    gen = torch.Generator().manual_seed(seed)
    h, w = gate_size(H, extent), gate_size(W, extent)

    def rand(*shape, dtype):
        return (torch.randn(*shape, generator=gen) * 2).to(device=device, dtype=dtype)

    x, shortcut, grad = (rand(N, C, H, W, dtype=dtype).contiguous(memory_format=layout) for _ in range(3))
    g = rand(N, C, h, w, dtype=gdtype).contiguous(memory_format=layout)
    return x, g, shortcut, grad


def run(residual, x, g, shortcut):
    return OPS.excite_residual(x, g, shortcut) if residual else OPS.excite(x, g)


def reference(residual, x, g, shortcut):
    return excite_residual_reference(x, g, shortcut) if residual else excite_reference(x, g)


def test_extension_is_built():
    if os.environ.get("GE_REQUIRE_EXTENSION") != "1":
        pytest.skip("GE_REQUIRE_EXTENSION=1 requires the extension to be built")
    assert ops.native_kernels("cpu") == "C++ kernels", ops.unavailable_reason("cpu")


@pytest.mark.parametrize("device", DEVICES)
def test_nearest_rule_is_pytorchs(device):
    """H = 100 from h = 13 (extent 8): F.interpolate's floor(y * 13 / 100) differs from y // 8 on 18 rows."""
    H, h = 100, 13
    rows = F.interpolate(torch.arange(h, dtype=torch.float64).view(1, 1, h, 1), size=(H, 1), mode="nearest")
    assert (rows.flatten().long() != torch.arange(H) // 8).sum() == 18
    dtype = torch.float64 if device == "cpu" else torch.float32  # float64 on CUDA would not run the Triton kernels
    g = torch.randn(2, 3, h, 7, dtype=dtype, device=device) * 4
    x = torch.ones(2, 3, H, 50, dtype=dtype, device=device)
    expected = torch.sigmoid(F.interpolate(g, size=(H, 50), mode="nearest"))
    # A wrong cell is off by far more than the kernels' float32 sigmoid (a few ulp on CUDA).
    torch.testing.assert_close(OPS.excite(x, g), expected, rtol=1e-15 if device == "cpu" else 1e-6, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS, ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtypes", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("residual", [False, True], ids=["excite", "residual"])
def test_forward_matches_reference(device, layout, dtypes, residual):
    for H, W, extent in CASES:
        x, g, shortcut, _ = make_inputs(device, *dtypes, H, W, extent, layout)
        out = run(residual, x, g, shortcut)
        assert out.dtype == x.dtype and out.shape == x.shape
        assert out.is_contiguous(memory_format=layout)
        torch.testing.assert_close(out, reference(residual, x, g, shortcut), **FORWARD_TOL[x.dtype],
                                   msg=lambda m: f"H={H} W={W} extent={extent}: {m}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS, ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtypes", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("residual", [False, True], ids=["excite", "residual"])
def test_backward_matches_reference(device, layout, dtypes, residual):
    for H, W, extent in CASES:
        x, g, shortcut, grad = make_inputs(device, *dtypes, H, W, extent, layout)
        leaves = [t.detach().requires_grad_() for t in (x, g, shortcut)]
        run(residual, *leaves).backward(grad)
        ref_leaves = [t.detach().double().requires_grad_() for t in (x, g, shortcut)]
        reference(residual, *ref_leaves).backward(grad.double())
        for name, leaf, ref in zip(("x", "g", "shortcut"), leaves, ref_leaves):
            if not residual and name == "shortcut":
                assert leaf.grad is None
                continue
            assert leaf.grad.dtype == leaf.dtype
            torch.testing.assert_close(leaf.grad, ref.grad.to(leaf.dtype), **BACKWARD_TOL[leaf.dtype],
                                       msg=lambda m: f"grad_{name}, H={H} W={W} extent={extent}: {m}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS, ids=["nchw", "channels_last"])
def test_backward_of_long_bands_matches_reference(device, layout):
    """Maps whose gate rows span more image rows than one channels_last backward task takes (CPU: W x C =
    4480 elements, 29 rows per task; Triton: 512 // 70 = 7 rows per program), so that a gate cell's sums
    are added over several tasks: a global gate (100 rows) and two gate rows of 51 and 50 rows."""
    for H, extent in ((100, 0), (101, 64)):
        x, g, shortcut, grad = make_inputs(device, torch.float32, torch.float32, H, 70, extent, layout, N=1, C=64)
        leaves = [t.detach().requires_grad_() for t in (x, g, shortcut)]
        OPS.excite_residual(*leaves).backward(grad)
        ref_leaves = [t.detach().double().requires_grad_() for t in (x, g, shortcut)]
        excite_residual_reference(*ref_leaves).backward(grad.double())
        for name, leaf, ref in zip(("x", "g", "shortcut"), leaves, ref_leaves):
            torch.testing.assert_close(leaf.grad, ref.grad.float(), **BACKWARD_TOL[torch.float32],
                                       msg=lambda m: f"grad_{name}, H={H} extent={extent}: {m}")


@pytest.mark.parametrize("residual", [False, True], ids=["excite", "residual"])
def test_gradcheck(residual):
    """float64, on the CPU (the Triton kernels take float32 and narrower)."""
    for H, W, extent, layout in [(5, 7, 0, torch.contiguous_format), (5, 7, 2, torch.channels_last),
                                 (9, 6, 4, torch.contiguous_format), (4, 4, 2, torch.contiguous_format)]:
        inputs = [t.requires_grad_() for t in make_inputs("cpu", torch.float64, torch.float64, H, W, extent,
                                                          layout, C=3)[:3]]
        fn = (lambda x, g, s: OPS.excite_residual(x, g, s)) if residual else (lambda x, g, s: OPS.excite(x, g))
        assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS, ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtypes", [DTYPES[0], DTYPES[3]], ids=["f32", "f16-gf32"])
def test_opcheck(device, layout, dtypes):
    x, g, shortcut, grad = make_inputs(device, *dtypes, 13, 17, 4, layout, C=4)
    out = OPS.excite_residual(x, g, shortcut)
    grad_inputs = [t.detach().requires_grad_() for t in (x, g, shortcut)]
    cases = [(OPS.excite.default, (grad_inputs[0], grad_inputs[1])),
             (OPS.excite_residual.default, tuple(grad_inputs)),
             (OPS.excite_backward.default, (grad, x, g)),
             (OPS.excite_residual_backward.default, (grad, out, x, g))]
    for op, args in cases:
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("device", DEVICES)
def test_noncontiguous_inputs(device):
    x, g, shortcut, grad = make_inputs(device, torch.float32, torch.float32, 26, 34, 4, C=6)
    x, shortcut, grad = x[:, :, ::2, 1:], shortcut[:, :, 1::2, :-1], grad[:, :, ::2, :-1]
    g = g.transpose(2, 3).contiguous().transpose(2, 3)[:, :, :, 1:]  # a strided 7 x 8 gate for 13 x 33
    torch.testing.assert_close(OPS.excite_residual(x, g, shortcut), excite_residual_reference(x, g, shortcut))
    grad_x, grad_g = OPS.excite_backward(grad, x, g)
    xr, gr = x.detach().requires_grad_(), g.detach().requires_grad_()
    excite_reference(xr, gr).backward(grad)
    torch.testing.assert_close(grad_x, xr.grad)
    torch.testing.assert_close(grad_g, gr.grad)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS, ids=["nchw", "channels_last"])
def test_backward_is_deterministic(device, layout):
    """Bitwise equal gradients from repeated runs, and on the CPU whatever the number of threads (the
    tasks' split changes with it): extent 8, a global gate on a large plane, and small planes with a global
    gate (grouped per span)."""
    for H, W, extent, C in ((100, 100, 8, 8), (45, 50, 0, 8), (7, 7, 0, 64)):
        x, g, shortcut, grad = make_inputs(device, torch.float32, torch.float32, H, W, extent, layout, C=C)
        out = OPS.excite_residual(x, g, shortcut)
        threads = torch.get_num_threads()
        try:
            grads = []
            for n in (1, 2, 3, 3):
                torch.set_num_threads(n)
                grads.append(OPS.excite_residual_backward(grad, out, x, g))
        finally:
            torch.set_num_threads(threads)
        for other in grads[1:]:
            for a, b in zip(grads[0], other):
                assert torch.equal(a, b), f"H={H} W={W} extent={extent}"


@needs_extension
@pytest.mark.parametrize("layout", LAYOUTS, ids=["nchw", "channels_last"])
def test_cpu_kernels_give_the_reference_results_at_every_thread_count(layout):
    """The C++ kernels split their work into tasks of about 32768 elements among at::parallel_for's
    threads; these shapes make several tasks (160000 elements; a global gate over a 45 x 50 plane; 64
    small planes), so 2 and 3 threads split them differently from 1. At every count the four operators
    match the float64 reference and are bitwise equal to the one-thread results. (How their speed scales
    with threads: tools/benchmark_excite.py --thread-scaling.)"""
    for H, W, extent, C in ((100, 100, 8, 8), (45, 50, 0, 8), (7, 7, 0, 64)):
        x, g, shortcut, grad = make_inputs("cpu", torch.float32, torch.float32, H, W, extent, layout, C=C)
        x64, g64, shortcut64 = (t.double().requires_grad_() for t in (x, g, shortcut))
        reference = [excite_reference(x64, g64), excite_residual_reference(x64, g64, shortcut64)]
        reference += torch.autograd.grad(reference[0], (x64, g64), grad.double(), retain_graph=True)
        reference += torch.autograd.grad(reference[1], (x64, g64, shortcut64), grad.double())
        threads = torch.get_num_threads()
        results = []
        try:
            for n in (1, 2, 3):
                torch.set_num_threads(n)
                y, out = OPS.excite(x, g), OPS.excite_residual(x, g, shortcut)
                results.append([y, out, *OPS.excite_backward(grad, x, g), *OPS.excite_residual_backward(grad, out, x, g)])
        finally:
            torch.set_num_threads(threads)
        for got, want in zip(results[0], reference):
            torch.testing.assert_close(got, want.detach().float())
        for other in results[1:]:
            assert all(torch.equal(a, b) for a, b in zip(results[0], other)), f"H={H} W={W} extent={extent}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant, extent", [("theta_minus", 8), ("theta", 0), ("theta_plus", 2)])
@pytest.mark.parametrize("layout", LAYOUTS, ids=["nchw", "channels_last"])
def test_module_fused_matches_reference(device, variant, extent, layout):
    torch.manual_seed(0)
    modules = {fused: GatherExcite(16, variant=variant, extent=extent, norm="BN", global_kernel=7, fused=fused)
               for fused in ("on", "off")}
    modules["off"].load_state_dict(modules["on"].state_dict())
    # float64 on the CPU: the global theta gather normalises 2 values per channel (BN over N = 2 cells),
    # which would amplify float32 rounding differences in the parameter gradients. On CUDA float32 (the
    # Triton kernels' dtypes), with tolerances to match.
    dtype, tol = (torch.float64, dict(rtol=1e-10, atol=1e-12)) if device == "cpu" else (torch.float32, {})
    x, _, shortcut, grad = make_inputs(device, dtype, dtype, 25, 19, extent, layout, C=16)
    results = {}
    for fused, module in modules.items():
        module.to(device, dtype).train()
        leaves = [t.detach().requires_grad_() for t in (x, shortcut)]
        out = module(*leaves)
        out.backward(grad)
        results[fused] = [out, *(t.grad for t in leaves), *(p.grad for p in module.parameters())]
    for on, off in zip(results["on"], results["off"]):
        torch.testing.assert_close(on, off, **tol)


@pytest.mark.parametrize("device, backend", [("cpu", "aot_eager"), pytest.param("cuda", "aot_eager", marks=needs_gpu),
                                             pytest.param("cuda", "inductor", marks=needs_gpu)])
def test_torch_compile_without_graph_break(device, backend):
    """fullgraph: no graph break. On CUDA, AOT autograd traces into the Triton kernels (wrap_triton), which
    inductor then compiles with the rest of the graph."""
    torch._dynamo.reset()
    x, g, shortcut, grad = make_inputs(device, torch.float32, torch.float32, 13, 17, 4, C=4)

    def fn(x, g, shortcut):
        return ops.excite_residual(x, g, shortcut) + ops.excite(x, g)

    compiled = torch.compile(fn, fullgraph=True, backend=backend)
    results = []
    for f in (compiled, fn):
        leaves = [t.detach().requires_grad_() for t in (x, g, shortcut)]
        out = f(*leaves)
        out.backward(grad)
        results.append([out, *(t.grad for t in leaves)])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("device", DEVICES)
def test_jit_trace_matches_eager(device):
    module = GatherExcite(8, variant="theta_minus", extent=4, fused="on").to(device)
    x, _, shortcut, _ = make_inputs(device, torch.float32, torch.float32, 13, 17, 4, C=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)  # nothing of the example's sizes frozen in
        traced = torch.jit.trace(module, (x, shortcut))
    # a trace records the reference's standard operators, not the fused one (docs/export.md)
    assert "ge_detectron::" not in str(traced.inlined_graph)
    for H, W in ((13, 17), (21, 10)):
        x2, _, shortcut2, _ = make_inputs(device, torch.float32, torch.float32, H, W, 4, C=8, seed=1)
        torch.testing.assert_close(traced(x2, shortcut2), module(x2, shortcut2), rtol=1e-6, atol=1e-6)


def test_error_on_shape_mismatch():
    x, g, shortcut, _ = make_inputs("cpu", torch.float32, torch.float32, 13, 17, 4)
    with pytest.raises(RuntimeError, match=r"g must have shape \(N, C, h, w\).*\[2, 20, 13, 17\].*\[2, 19, 4, 5\]"):
        OPS.excite(x, g[:, 1:])
    with pytest.raises(RuntimeError, match=r"1 <= h <= H.*got g of shape \[2, 20, 14, 5\]"):
        OPS.excite(x, torch.zeros(2, 20, 14, 5))
    with pytest.raises(RuntimeError, match=r"shortcut must have x's shape \[2, 20, 13, 17\], but got \[2, 20, 13, 1"):
        OPS.excite_residual(x, g, shortcut[..., 1:])


def test_error_on_a_dtype_that_is_not_floating_point():
    x, g, shortcut, grad = make_inputs("cpu", torch.float32, torch.float32, 13, 17, 4)
    with pytest.raises(RuntimeError, match=r"x must be float32, float64, float16 or bfloat16, but got torch.int32"):
        OPS.excite(x.int(), g)
    with pytest.raises(RuntimeError, match=r"g must be float32, float64, float16 or bfloat16, but got torch.int64"):
        OPS.excite(x, g.long())
    with pytest.raises(RuntimeError, match=r"shortcut must be float32, float64, float16 or bfloat16, but got "
                                           r"torch.int32"):
        OPS.excite_residual(x, g, shortcut.int())
    with pytest.raises(RuntimeError, match=r"grad_out must be float32, float64, float16 or bfloat16, but got "
                                           r"torch.bool"):
        OPS.excite_backward(grad > 0, x, g)


def test_error_on_device_mismatch():
    x, g, shortcut, _ = make_inputs("cpu", torch.float32, torch.float32, 13, 17, 4)
    other = "cuda" if torch.cuda.is_available() else "meta"  # meta: the fake kernels check too
    with pytest.raises(RuntimeError, match=rf"x and g must be on the same device, but x is on cpu and g is on {other}"):
        OPS.excite(x, g.to(other))
    with pytest.raises(RuntimeError, match=rf"shortcut must be on x's device \({other}.*\), but is on cpu"):
        OPS.excite_residual(x.to(other), g.to(other), shortcut)


def test_error_on_rank_mismatch():
    x, g, _, _ = make_inputs("cpu", torch.float32, torch.float32, 13, 17, 4)
    with pytest.raises(RuntimeError, match=r"x must be a 4-D \(N, C, H, W\) tensor, but got a 3-D tensor of shape"):
        OPS.excite(x[0], g)
    with pytest.raises(RuntimeError, match=r"g must be a 4-D \(N, C, h, w\) tensor, but got a 2-D tensor"):
        OPS.excite(x, g[0, 0])


@pytest.mark.parametrize("layout", LAYOUTS, ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtypes", [DTYPES[0], DTYPES[4]], ids=["f32", "bf16-gf32"])
@pytest.mark.parametrize("residual", [False, True], ids=["excite", "residual"])
def test_cpu_without_extension_runs_pytorch_kernels(monkeypatch, layout, dtypes, residual):
    """Installed without the extension, the operators run on the CPU in PyTorch ops (excite_torch), with
    the same results, gradients, dtypes and layouts."""
    monkeypatch.setattr(excite_op, "excite_cpp", None)
    assert ops.native_kernels("cpu") is None and "not built" in ops.unavailable_reason("cpu")
    for H, W, extent in ((13, 17, 4), (7, 9, 0), (100, 100, 8)):
        x, g, shortcut, grad = make_inputs("cpu", *dtypes, H, W, extent, layout, C=6)
        leaves = [t.detach().requires_grad_() for t in (x, g, shortcut)]
        out = run(residual, *leaves)
        assert out.dtype == x.dtype and out.is_contiguous(memory_format=layout)
        torch.testing.assert_close(out, reference(residual, x, g, shortcut), **FORWARD_TOL[x.dtype])
        out.backward(grad)
        ref_leaves = [t.detach().double().requires_grad_() for t in (x, g, shortcut)]
        reference(residual, *ref_leaves).backward(grad.double())
        for leaf, ref in zip(leaves[:3 if residual else 2], ref_leaves):
            torch.testing.assert_close(leaf.grad, ref.grad.to(leaf.dtype), **BACKWARD_TOL[leaf.dtype])


def test_meta_tensors_get_shapes_dtypes_and_layouts():
    x, g, shortcut, grad = (t.to("meta") for t in make_inputs("cpu", torch.bfloat16, torch.float32, 13, 17, 4,
                                                               torch.channels_last))
    out = OPS.excite_residual(x, g, shortcut)
    assert out.device.type == "meta" and out.dtype == torch.bfloat16
    assert out.is_contiguous(memory_format=torch.channels_last)
    grad_x, grad_g, grad_shortcut = OPS.excite_residual_backward(grad, out, x, g)
    assert grad_g.dtype == torch.float32 and grad_g.shape == g.shape and grad_shortcut.shape == x.shape


@pytest.mark.parametrize("fused", ["auto", "on", "off"])
def test_fused_mode_logs_the_path_that_runs(fused, caplog, monkeypatch):
    monkeypatch.setattr(detectron2.utils.logger, "_LOG_COUNTER", collections.Counter())  # nothing logged yet
    with caplog.at_level(logging.INFO, logger=gather_excite.__name__):
        module = GatherExcite(8, variant="theta_minus", extent=4, fused=fused)
        GatherExcite(16, variant="theta", extent=2, fused=fused)  # the same path: not logged again
    (line,) = [r.getMessage() for r in caplog.records if "excite path" in r.getMessage()]
    if fused == "off":
        assert not uses_fused_op(module.fused, "cpu") and "the pure-PyTorch reference (fused='off')" in line
        return
    cpu = ops.native_kernels("cpu")
    assert uses_fused_op(module.fused, "cpu") == (cpu is not None or fused == "on")
    assert f"{cpu or 'PyTorch ops'} of torch.ops.ge_detectron on the CPU" in line or (
        fused == "auto" and cpu is None and "the pure-PyTorch reference on the CPU" in line)
    cuda = ops.native_kernels("cuda")
    assert ("Triton kernels of torch.ops.ge_detectron on CUDA" in line) == (cuda is not None or fused == "on")


def test_fused_on_without_kernels_is_an_error(monkeypatch):
    monkeypatch.setattr(excite_op, "excite_cpp", None)
    monkeypatch.setattr(excite_op, "excite_triton", None)
    device = "CUDA" if torch.cuda.is_available() else "CPU"
    why = "triton is not installed" if device == "CUDA" else "the C++ extension ge_detectron._C is not built"
    with pytest.raises(RuntimeError, match=rf"fused='on' but the fused excite operator has no {device} "
                                           rf"kernels here: {re.escape(why)}.*Or use fused='auto' or 'off'"):
        GatherExcite(8, variant="theta_minus", extent=4, fused="on")
    assert not uses_fused_op(GatherExcite(8, variant="theta_minus", extent=4, fused="auto").fused, "cpu")  # the reference


def _tolerance(table, *dtypes):
    """The loosest of `table`'s tolerances over `dtypes` (float64 counts as float32)."""
    tols = [table[torch.float32 if d == torch.float64 else d] for d in dtypes]
    return dict(rtol=max(t["rtol"] for t in tols), atol=max(t["atol"] for t in tols))


# (x, g, shortcut) dtypes the reference accepts beyond one dtype throughout: autocast's (a float32 map, GN
# under CUDA autocast, with a float16 / bfloat16 gate from an MLP conv), and the rest of the promotions.
MIXED_DTYPES = [(torch.float32, torch.float16, torch.float32), (torch.float32, torch.bfloat16, torch.bfloat16),
                (torch.bfloat16, torch.float32, torch.float32), (torch.float16, torch.bfloat16, torch.float16),
                (torch.float32, torch.float64, torch.float16), (torch.float64, torch.float32, torch.float32),
                (torch.bfloat16, torch.bfloat16, torch.float16)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS, ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtypes", MIXED_DTYPES, ids=lambda d: "-".join(str(t)[6:] for t in d))
def test_mixed_dtypes_follow_the_reference(device, layout, dtypes):
    """Every dtype combination the reference takes: its output dtype (x's, promoted with the shortcut's),
    its values, and gradients in each input's dtype against the float64 reference's."""
    x, g, shortcut, grad = make_inputs(device, torch.float32, torch.float32, 13, 17, 4, layout, C=6)
    x, g, shortcut = (t.to(d) for t, d in zip((x, g, shortcut), dtypes))
    for residual in (False, True):
        inputs = (x, g, shortcut) if residual else (x, g)
        leaves = [t.detach().requires_grad_() for t in inputs]
        out = (OPS.excite_residual if residual else OPS.excite)(*leaves)
        want = reference(residual, *inputs, *([] if residual else [None]))
        assert out.dtype == want.dtype and out.is_contiguous(memory_format=layout)
        torch.testing.assert_close(out, want, **_tolerance(FORWARD_TOL, *dtypes))
        out.backward(grad.to(out.dtype))
        leaves64 = [t.detach().double().requires_grad_() for t in inputs]
        reference(residual, *leaves64, *([] if residual else [None])).backward(grad.to(out.dtype).double())
        for leaf, leaf64 in zip(leaves, leaves64):
            assert leaf.grad.dtype == leaf.dtype
            torch.testing.assert_close(leaf.grad, leaf64.grad.to(leaf.dtype), **_tolerance(BACKWARD_TOL, *dtypes))


# The GE module matrix: norms x variants x extents (SE is global only).
GE_MATRIX = [(v, e) for v in ("theta_minus", "theta", "theta_plus") for e in (8, 0)] + [("se", 0)]


@needs_extension
@pytest.mark.parametrize("norm", ["BN", "GN", "FrozenBN"])
@pytest.mark.parametrize("variant, extent", GE_MATRIX)
def test_module_under_bfloat16_autocast_matches_reference(norm, variant, extent):
    """Under CPU bfloat16 autocast the fused module gives the reference's dtypes and values (as close to the
    module in float64 as the reference under autocast is), forward and backward (input, shortcut and every
    parameter), for a float32 map (what GN leaves under CUDA autocast; the gate of θ⁺ / SE is then
    bfloat16) and a bfloat16 one."""
    torch.manual_seed(0)
    fused = GatherExcite(32, variant=variant, extent=extent, norm=norm, global_kernel=16, fused="on")
    modules = {"on": fused, "off": copy.deepcopy(fused), "float64": copy.deepcopy(fused).double()}
    modules["off"].fused = modules["float64"].fused = "off"
    for module in modules.values():
        # eval: BN normalises with its running statistics. In training it normalises over the few gate cells
        # of one batch (2 per channel for a global gate), which amplifies bfloat16 rounding beyond any
        # tolerance that would still catch a wrong gradient.
        module.eval()
    gen = torch.Generator().manual_seed(1)
    for dtype in (torch.float32, torch.bfloat16):
        x, shortcut, grad = ((torch.randn(2, 32, 16, 16, generator=gen) * 2).to(dtype) for _ in range(3))
        # Kept away from the ReLU's kink, where a bfloat16 gate and a float64 one may put a pre-activation on
        # either side (the mask itself: test_mixed_dtypes_follow_the_reference).
        shortcut = shortcut.abs() + 10
        results = {}
        for name, module in modules.items():
            module.zero_grad()
            cast = torch.float64 if name == "float64" else dtype
            leaves = [t.detach().to(cast).requires_grad_() for t in (x, shortcut)]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name != "float64"):
                outs = [module(leaves[0]), module(*leaves)]
            sum((o.double() * grad.double()).sum() for o in outs).backward()
            results[name] = [*outs, *(t.grad for t in leaves), *(p.grad for p in module.parameters())]
        for i, (on, off, exact) in enumerate(zip(results["on"], results["off"], results["float64"])):
            assert on.dtype == off.dtype, (dtype, i)
            # The gathers run in bfloat16 under autocast, whose rounding (through the depthwise convs and
            # the norms) dominates: the fused result must be as close to float64 as the reference's is.
            scale = max(float(exact.abs().max()), 1.0)
            error_on, error_off = (float((t.double() - exact).abs().max()) for t in (on, off))
            assert error_on <= 2 * error_off + 1e-2 * scale, (dtype, i, error_on, error_off, scale)


def offset_copy(t):
    """t's values in a tensor of t's layout whose data starts one element past an allocation's (4 bytes
    in float32: not 16-byte aligned)."""
    N, C, H, W = t.shape
    flat = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    if t.is_contiguous():
        view = flat[1:].view(N, C, H, W)
    else:
        view = flat[1:].view(N, H, W, C).permute(0, 3, 1, 2)
    view.copy_(t)
    assert view.storage_offset() == 1 and view.stride() == t.stride()
    return view


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS, ids=["nchw", "channels_last"])
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_offset_views_match_reference(device, layout, compiled):
    """Inputs one element past an aligned allocation (x, g, shortcut, the gradient): the reference's values
    and gradients, eagerly and through torch.compile."""
    torch._dynamo.reset()
    x, g, shortcut, grad = make_inputs(device, torch.float32, torch.float32, 16, 32, 8, layout, C=8)
    x, g, shortcut, grad = (offset_copy(t) for t in (x, g, shortcut, grad))

    def fn(x, g, shortcut):
        return ops.excite_residual(x, g, shortcut) + ops.excite(x, g)

    f = torch.compile(fn, fullgraph=True, backend="aot_eager") if compiled else fn
    leaves = [t.detach().requires_grad_() for t in (x, g, shortcut)]
    out = f(*leaves)
    out.backward(grad)
    leaves64 = [t.detach().double().requires_grad_() for t in (x, g, shortcut)]
    want = excite_residual_reference(*leaves64) + excite_reference(*leaves64[:2])
    want.backward(grad.double())
    torch.testing.assert_close(out, want.float(), **FORWARD_TOL[torch.float32])
    for leaf, leaf64 in zip(leaves, leaves64):
        torch.testing.assert_close(leaf.grad, leaf64.grad.float(), **BACKWARD_TOL[torch.float32])


def test_one_input_validation_per_forward(monkeypatch):
    """A GatherExcite forward checks each input property once: x in the module (before the gather), the
    shortcut's shape and device once, by the fused operator or before the reference."""
    calls = collections.Counter()

    def counting(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(GatherExcite, "check_inputs", counting("module", GatherExcite.check_inputs))
    monkeypatch.setattr(ops, "check_like_x", counting("shortcut", ops.check_like_x))
    monkeypatch.setattr(excite_inputs, "check_like_x", counting("shortcut", excite_inputs.check_like_x))
    x = torch.randn(2, 8, 12, 12)
    for fused in ("off", "on"):
        calls.clear()
        GatherExcite(8, variant="theta_minus", extent=4, fused=fused)(x, x)
        assert calls == {"module": 1, "shortcut": 1}, fused


@pytest.fixture
def fresh_self_check(monkeypatch):
    """No self-check result cached: the next fused call runs it."""
    monkeypatch.setattr(self_check_module, "_RESULTS", {})
    monkeypatch.setattr(detectron2.utils.logger, "_LOG_COUNTER", collections.Counter())


@needs_extension
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_self_check_of_the_cpu_kernels_passes(dtype, channels_last):
    result = ops.self_check("cpu", dtype, channels_last=channels_last)
    assert result.ok and result.failures == () and result.cases == 4 and result.ms > 0
    assert (result.device, result.dtype, result.channels_last, result.kernels) == ("cpu", dtype, channels_last,
                                                                                  "excite_cpp")
    assert f"excite_cpp on cpu, {dtype}" in result.describe() and "4 cases passed" in result.describe()


def _wrong_grad_g(backward):
    def wrong(*args):
        grad_x, grad_g, grad_shortcut = backward(*args)
        return grad_x, grad_g * 1.5, grad_shortcut
    return wrong


def _raising(*args):
    raise RuntimeError("deliberately broken")


BROKEN = {"wrong": ("backward", _wrong_grad_g, r"backward \(gate of 3 x 3 cells\): grad_g differs from the "
                                                r"reference by up to"),
          "raises": ("forward", lambda fn: _raising, r"forward/backward \(global gate\) raised RuntimeError: "
                                                     r"deliberately broken")}


@needs_extension
@pytest.mark.parametrize("broken", BROKEN)
def test_self_check_names_a_broken_kernel(monkeypatch, broken):
    name, breaker, message = BROKEN[broken]
    monkeypatch.setattr(excite_cpp, name, breaker(getattr(excite_cpp, name)))
    result = ops.self_check("cpu")
    assert not result.ok and re.search(message, result.describe())
    assert len(result.failures) == 4  # each case, plain and residual


@needs_extension
@pytest.mark.parametrize("broken", [None, *BROKEN])
def test_fused_auto_falls_back_to_the_reference_after_one_warning(monkeypatch, fresh_self_check, caplog, broken):
    if broken:
        name, breaker, _ = BROKEN[broken]
        monkeypatch.setattr(excite_cpp, name, breaker(getattr(excite_cpp, name)))
    torch.manual_seed(0)
    modules = {fused: GatherExcite(8, variant="theta", extent=4, fused=fused) for fused in ("auto", "off")}
    modules["off"].load_state_dict(modules["auto"].state_dict())
    x, _, shortcut, grad = make_inputs("cpu", torch.float32, torch.float32, 12, 12, 4, C=8)
    results = {}
    with caplog.at_level(logging.INFO, logger=self_check_module.__name__):
        for fused, module in modules.items():
            for _ in range(2):
                leaves = [t.detach().requires_grad_() for t in (x, shortcut)]
                out = module(*leaves)
                out.backward(grad)
            results[fused] = [out, *(t.grad for t in leaves)]
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if "self-check" in r.getMessage()]
    assert len(lines) == 1  # one check per (device, dtype, memory format), its cost or its failure logged once
    level, line = lines[0]
    if broken is None:
        assert level == logging.INFO and re.search(r"4 cases passed in [0-9.]+ ms", line)
        for auto, off in zip(results["auto"], results["off"]):
            torch.testing.assert_close(auto, off)
        return
    assert level == logging.WARNING and re.search(BROKEN[broken][2], line) and "uses the pure-PyTorch reference" in line
    for auto, off in zip(results["auto"], results["off"]):
        assert torch.equal(auto, off)  # the reference ran


@needs_extension
@pytest.mark.parametrize("broken", BROKEN)
def test_fused_on_raises_the_self_check_failure(monkeypatch, fresh_self_check, broken):
    name, breaker, message = BROKEN[broken]
    monkeypatch.setattr(excite_cpp, name, breaker(getattr(excite_cpp, name)))
    module = GatherExcite(8, variant="theta", extent=4, fused="on")
    for _ in range(2):  # every call, not only the first
        with pytest.raises(RuntimeError, match=message + r".*fused='on' \(MODEL.GE.FUSED on\) requires the kernels"):
            module(torch.randn(2, 8, 12, 12))
