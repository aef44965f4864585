"""The Triton kernels compiled ahead of time for sm_80 (A100) and sm_90 (H100 / H200) without a GPU:
every specialization the launcher can launch (``excite_triton.specializations()``) to cubin, with the
ptxas that ships in the triton wheel; and the launcher launches nothing else.

GE_REQUIRE_TRITON=1 (CI) turns a missing triton into a failure. Skipped under TRITON_INTERPRET=1, where
@triton.jit functions are interpreted and cannot be compiled.
"""
import concurrent.futures
import multiprocessing
import os
import re

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("the kernels are interpreted under TRITON_INTERPRET=1", allow_module_level=True)

try:
    from ge_detectron.ops import excite_triton
except ImportError as e:
    excite_triton, IMPORT_ERROR = None, e

needs_triton = pytest.mark.skipif(excite_triton is None and os.environ.get("GE_REQUIRE_TRITON") != "1",
                                  reason="triton is not installed")
ARCHS = (80, 90)
TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
# Each kernel's Triton signature, written from the kernels' parameters (excite_kernels.py): "*X" a pointer in
# x's type, "*G" one in g's type (g and grad_g), "*fp32" the float32 partial sums; integers and scales by their
# annotations; constexprs last.
_FORWARD_INTS = ["C", "H", "W", "h", "w", "HW", "g_sn", "g_sc", "g_sh", "g_sw"]
_GRADIENTS = {"grad_out_ptr": "*X", "out_ptr": "*X", "x_ptr": "*X", "g_ptr": "*G", "grad_x_ptr": "*X",
              "grad_shortcut_ptr": "*X", "grad_g_ptr": "*G"}
SIGNATURES = {
    "excite_forward_kernel": {
        "x_ptr": "*X", "g_ptr": "*G", "shortcut_ptr": "*X", "out_ptr": "*X", "numel": "i64", "has_shortcut": "i32",
        **dict.fromkeys(_FORWARD_INTS, "i32"), "scale_h": "fp32", "scale_w": "fp32",
        "magic_c": "i64", "shift_c": "i32", "magic_w": "i64", "shift_w": "i32", "magic_h": "i64", "shift_h": "i32",
        "magic_hw": "i64", "shift_hw": "i32", "CHANNELS_LAST": "constexpr", "BLOCK": "constexpr"},
    "excite_backward_span_kernel": {
        **_GRADIENTS, "has_out": "i32", "aligned": "i32", "planes": "i32",
        **dict.fromkeys(["C", "H", "W", "h", "HW", "g_sn", "g_sc", "g_sh", "gg_sn", "gg_sc", "gg_sh"], "i32"),
        "scale_h": "fp32", "PB": "constexpr", "BS": "constexpr"},
    "excite_backward_band_kernel": {
        **_GRADIENTS, "has_out": "i32", "aligned": "i32", "planes": "i32",
        **dict.fromkeys(_FORWARD_INTS + ["gg_sn", "gg_sc", "gg_sh", "gg_sw"], "i32"),
        "scale_h": "fp32", "scale_w": "fp32", "PB": "constexpr", "BR": "constexpr", "BW": "constexpr"},
    "excite_backward_cell_kernel": {
        **_GRADIENTS, "partial_ptr": "*fp32", "has_out": "i32", "aligned": "i32",
        **dict.fromkeys(["C", "H", "W", "h", "w", "row_blocks", "rows_per_block", "g_sn", "g_sc", "g_sh", "g_sw",
                         "gg_sn", "gg_sc", "gg_sh", "gg_sw"], "i32"),
        "scale_h": "fp32", "scale_w": "fp32", "BQ": "constexpr", "BC": "constexpr"},
    "excite_backward_cell_sum_kernel": {
        "partial_ptr": "*fp32", "g_ptr": "*G", "grad_g_ptr": "*G",
        **dict.fromkeys(["cells", "row_blocks", "C", "h", "w", "g_sn", "g_sc", "g_sh", "g_sw", "gg_sn", "gg_sc",
                         "gg_sh", "gg_sw"], "i32"),
        "BK": "constexpr", "BC": "constexpr"},
}


def expected_signature(kernel, x_type, g_type):
    """SIGNATURES' entry of ``kernel`` with x's and g's Triton types put in."""
    types = {"*X": "*" + x_type, "*G": "*" + g_type}
    return {p: types.get(t, t) for p, t in SIGNATURES[kernel.__name__].items()}


def test_triton_is_installed():
    if excite_triton is None and os.environ.get("GE_REQUIRE_TRITON") != "1":
        pytest.skip(f"triton is not installed ({IMPORT_ERROR}); GE_REQUIRE_TRITON=1 makes this a failure")
    assert excite_triton is not None, f"GE_REQUIRE_TRITON=1 but the Triton kernels cannot be imported: {IMPORT_ERROR}"


def _compile(job):
    """(name, arch, ptx, error) of one specialization; run in a worker process."""
    from triton import compile
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from ge_detectron.ops import excite_triton

    index, arch = job
    kernel, signature, constexprs, options = excite_triton.specializations()[index]
    name = f"{kernel.__name__} {signature.get('x_ptr', '')}/{signature['g_ptr']} {constexprs} sm_{arch}"
    aligned = {(kernel.arg_names.index(p),): [["tt.divisibility", 16]] for p, t in signature.items() if t[0] == "*"}
    try:
        compiled = compile(ASTSource(kernel, signature, constexprs, aligned), target=GPUTarget("cuda", arch, 32),
                           options=options)
        assert len(compiled.asm["cubin"]) > 0
        return name, arch, compiled.asm["ptx"], None
    except Exception as e:  # reported with its specialization
        return name, arch, None, f"{type(e).__name__}: {e}"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """{(specialization index, arch): (name, ptx)}, compiled in a fresh cache (as on a CI machine), in
    parallel on the available cores; fails listing every specialization that does not compile."""
    jobs = [(i, arch) for i in range(len(excite_triton.specializations())) for arch in ARCHS]
    context = multiprocessing.get_context("spawn")  # the workers import torch afresh, no forked threads
    with pytest.MonkeyPatch.context() as patch:  # the workers inherit the environment
        patch.setenv("TRITON_CACHE_DIR", str(tmp_path_factory.mktemp("triton_cache")))
        with concurrent.futures.ProcessPoolExecutor(max_workers=min(4, os.cpu_count() or 1),
                                                    mp_context=context) as pool:
            results = dict(zip(jobs, pool.map(_compile, jobs)))
    errors = [f"{name}: {error}" for name, _, _, error in results.values() if error]
    assert not errors, "\n".join(errors)
    return {job: (name, ptx) for job, (name, _, ptx, _) in results.items()}


@pytest.mark.slow
@needs_triton
def test_triton_kernels_compile_for_sm80_and_sm90(compiled):
    assert len(compiled) == len(excite_triton.specializations()) * len(ARCHS)


@pytest.mark.slow
@needs_triton
@pytest.mark.parametrize("x_type", ["fp32", "bf16"])
def test_triton_forward_uses_128_bit_loads_and_stores(compiled, x_type):
    """A full block of the forward (every block of a large map but the last) loads x and the shortcut and
    stores out with 16-byte vector instructions only: 1024 elements over 128 threads are 8 per thread, two
    v4.b32 per tensor in float32, one in bfloat16. The gate loads are gathers (one element each)."""
    vectors = {"fp32": 2, "bf16": 1}[x_type]
    specs = excite_triton.specializations()
    for (index, arch), (name, ptx) in compiled.items():
        kernel, signature, _, _ = specs[index]
        if kernel is not excite_triton.kernels.excite_forward_kernel or signature["x_ptr"] != "*" + x_type:
            continue
        assert len(re.findall(r"ld\.global(?:\.\w+)*\.v4\.b32", ptx)) == 2 * vectors, name  # x, shortcut
        assert len(re.findall(r"st\.global(?:\.\w+)*\.v4\.b32", ptx)) == vectors, name  # out


@pytest.mark.slow
@needs_triton
def test_triton_backward_kernels_have_vector_paths(compiled):
    """The backward kernels' aligned paths (rows / bands / channels on 16-byte boundaries) load and store
    with 16-byte vectors too."""
    kernels = excite_triton.kernels
    vector_paths = (kernels.excite_backward_span_kernel, kernels.excite_backward_band_kernel,
                    kernels.excite_backward_cell_kernel)
    specs = excite_triton.specializations()
    for (index, arch), (name, ptx) in compiled.items():
        if specs[index][0] in vector_paths:
            assert re.search(r"ld\.global(?:\.\w+)*\.v4\.b32", ptx), name
            assert re.search(r"st\.global(?:\.\w+)*\.v4\.b32", ptx), name


@needs_triton
def test_triton_launches_only_compiled_specializations(monkeypatch):
    """Every launch the launcher makes, over layouts, dtype pairs, map and gate sizes, is one of the
    compiled specializations (meta tensors: nothing runs)."""
    compiled = {(k, tuple(sorted(s.items())), tuple(sorted(c.items())), tuple(sorted(o.items())))
                for k, s, c, o in excite_triton.specializations()}
    launches = []

    def record(kernel):
        def launch(grid):
            def call(*args, **kwargs):
                launches.append((kernel, args, kwargs))
            return call
        return type("Launcher", (), {"__getitem__": lambda self, grid: launch(grid)})()

    monkeypatch.setattr(excite_triton, "wrap_triton", record)
    for x_dtype, g_dtype in [(torch.float32, torch.float32), (torch.float16, torch.float16),
                             (torch.bfloat16, torch.bfloat16), (torch.float16, torch.float32),
                             (torch.bfloat16, torch.float32)]:
        for layout in (torch.contiguous_format, torch.channels_last):
            for H, W, h, w in [(7, 7, 1, 1), (200, 304, 25, 38), (50, 76, 7, 10), (25, 38, 4, 5), (100, 100, 50, 50),
                               (100, 100, 100, 100), (64, 64, 2, 2), (13, 17, 13, 1), (400, 600, 1, 1)]:
                x = torch.empty(2, 16, H, W, dtype=x_dtype, device="meta").contiguous(memory_format=layout)
                g = torch.empty(2, 16, h, w, dtype=g_dtype, device="meta").contiguous(memory_format=layout)
                excite_triton.forward(x, g, x)
                excite_triton.backward(x, x, g, x)
    assert launches
    for kernel, args, kwargs in launches:
        params = kernel.arg_names
        signature = expected_signature(kernel, TYPES[args[params.index("x_ptr")].dtype] if "x_ptr" in params
                                       else "fp32", TYPES[args[params.index("g_ptr")].dtype])
        assert list(signature) == params, kernel.__name__
        constexprs = {p: kwargs[p] for p in params if signature[p] == "constexpr"}
        options = {k: v for k, v in kwargs.items() if k not in params}
        assert (kernel, tuple(sorted(signature.items())), tuple(sorted(constexprs.items())),
                tuple(sorted(options.items()))) in compiled, (kernel.__name__, constexprs, options)


@needs_triton
def test_compiled_specializations_have_the_kernels_signatures():
    """Every specialization the compile tests build has its kernel's signature (SIGNATURES) for its x and g
    types, and the specializations cover the five dtype pairs of the launcher for every kernel."""
    seen = set()
    for kernel, signature, constexprs, _ in excite_triton.specializations():
        x_type = signature["x_ptr"][1:] if "x_ptr" in signature else "fp32"
        assert signature == expected_signature(kernel, x_type, signature["g_ptr"][1:]), kernel.__name__
        assert set(constexprs) == {p for p, t in signature.items() if t == "constexpr"}, kernel.__name__
        seen.add((kernel.__name__, x_type, signature["g_ptr"][1:]))
    pairs = {("fp32", "fp32"), ("fp16", "fp16"), ("bf16", "bf16"), ("fp16", "fp32"), ("bf16", "fp32")}
    for name in SIGNATURES:
        if name == "excite_backward_cell_sum_kernel":  # float32 partial sums into g's type
            assert {(x, g) for n, x, g in seen if n == name} == {("fp32", "fp32"), ("fp32", "fp16"), ("fp32", "bf16")}
        else:
            assert {(x, g) for n, x, g in seen if n == name} == pairs, name
