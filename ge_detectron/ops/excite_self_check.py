"""A self-check of the excite kernels on this machine: every kernel run on small inputs against the
operators' definition in float64 PyTorch ops (``excite_torch``).

``self_check(device, dtype, channels_last)`` runs the kernels that ``torch.ops.ge_detectron`` uses for
such tensors (Triton on CUDA, C++ on the CPU): forward and residual forward, and the backward of both
on a gate of several cells and on a global gate, which in NCHW are the band and the span kernels and in
channels_last the cell kernel with one row block and with several (then the cell-sum kernel). For a
float16 / bfloat16 map one case has a float32 gate, as autocast makes it. It returns a ``SelfCheckResult``
naming each case that differs or raises.

``kernels_verified`` is what ``GatherExcite`` asks before its first fused call per (device, dtype,
memory format): the self-check runs once per such key and process, its cost logged once; a failure logs
one warning and the module uses the reference for those tensors from then on, or, for ``fused="on"``,
raises. docs/excite_op.md, README (troubleshooting).
"""
import dataclasses
import logging
import time

import torch
from torch.utils._python_dispatch import _disable_current_modes

from . import excite_op, excite_torch
from .excite_inputs import memory_format

__all__ = ["SelfCheckResult", "self_check", "kernels_verified"]

logger = logging.getLogger(__name__)

# Tolerances against float64, per dtype: a few units in the last place of values of magnitude ~4.
TOLERANCES = {torch.float32: (1e-5, 1e-5), torch.float64: (1e-10, 1e-12), torch.float16: (2e-3, 4e-3),
              torch.bfloat16: (1.6e-2, 3.2e-2)}
# (name, H, W, gate h x w): in NCHW the first's backward is the band kernel's, the second's the span
# kernel's; in channels_last the first's is the cell kernel with one row block per cell, the second's
# (576 pixels per cell, more than excite_triton.CELL_PIXELS_PER_PROGRAM) two row blocks and the cell sums.
CASES = (("gate of 3 x 3 cells", 12, 10, 3, 3), ("global gate", 24, 24, 1, 1))


@dataclasses.dataclass(frozen=True)
class SelfCheckResult:
    """What ``self_check`` found: ``failures`` names each case that differs or raises (empty: passed)."""
    device: str
    dtype: torch.dtype
    channels_last: bool
    kernels: str  # the implementation module: excite_triton, excite_cpp or excite_torch
    cases: int
    failures: tuple
    ms: float

    @property
    def ok(self):
        return not self.failures

    def describe(self):
        layout = "channels_last" if self.channels_last else "NCHW"
        what = f"fused excite self-check of {self.kernels} on {self.device}, {self.dtype}, {layout}"
        if self.ok:
            return f"{what}: {self.cases} cases passed in {self.ms:.1f} ms"
        return f"{what}: failed ({'; '.join(self.failures)})"


def _inputs(device, dtype, gate_dtype, H, W, h, w, fmt, seed):
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, dtype):
        return (torch.randn(*shape, generator=gen) * 2).to(device, dtype).contiguous(memory_format=fmt)

    x, shortcut, grad = (rand(2, 8, H, W, dtype=dtype) for _ in range(3))
    return x, rand(2, 8, h, w, dtype=gate_dtype), shortcut, grad


def _compare(name, got, want, like):
    """A failure message for `got` against the float64 `want`, or None."""
    if got.dtype != like.dtype or got.shape != like.shape:
        return f"{name} is {got.dtype} {list(got.shape)}, not {like.dtype} {list(like.shape)}"
    rtol, atol = TOLERANCES[like.dtype]
    error = (got.double().cpu() - want).abs()
    bound = atol + rtol * want.abs()
    if not bool(torch.all(error <= bound)):  # NaN fails too
        return f"{name} differs from the reference by up to {float(error.max()):.3g}"
    return None


def _check_case(implementation, case, device, dtype, gate_dtype, fmt, seed):
    name, H, W, h, w = case
    x, g, shortcut, grad = _inputs(device, dtype, gate_dtype, H, W, h, w, fmt, seed)
    reference = [t.double().cpu() for t in (x, g, shortcut, grad)]
    failures = []
    for residual in (False, True):
        form = "residual " if residual else ""
        s, s_ref = (shortcut, reference[2]) if residual else (None, None)
        try:
            out = implementation.forward(x, g, s)
            want = excite_torch.forward(reference[0], reference[1], s_ref)
            failures.append(_compare(f"{form}forward ({name}): out", out, want, x))
            grads = implementation.backward(grad, x, g, out if residual else None)
            mask = out.double().cpu() if residual else None  # the kernel's output: its sign is the ReLU's mask
            wants = excite_torch.backward(reference[3], reference[0], reference[1], mask)
        except Exception as e:  # reported by name; the caller decides whether it is fatal
            failures.append(f"{form}forward/backward ({name}) raised {type(e).__name__}: {e}")
            continue
        for grad_name, got, want, like in zip(("grad_x", "grad_g", "grad_shortcut"), grads, wants, (x, g, x)):
            if got is None and want is None:
                continue
            if got is None or want is None:
                failures.append(f"{form}backward ({name}): {grad_name} is {got}, expected a tensor")
                continue
            failures.append(_compare(f"{form}backward ({name}): {grad_name}", got, want, like))
    return [f for f in failures if f]


def self_check(device, dtype=torch.float32, channels_last=False):
    """Run the excite kernels for `device` (a torch.device or its name) and `dtype` tensors, NCHW or
    channels_last, against the float64 definition; returns a ``SelfCheckResult``. Exceptions the kernels
    raise are reported in it, not raised."""
    device = torch.device(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    implementation = excite_op.implementation("self_check", torch.empty(0, device=device, dtype=dtype))
    start = time.perf_counter()
    failures = []
    for seed, case in enumerate(CASES):
        gate_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) and seed == 1 else dtype
        failures += _check_case(implementation, case, device, dtype, gate_dtype, fmt, seed)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    ms = (time.perf_counter() - start) * 1e3
    kernels = implementation.__name__.rpartition(".")[2]  # excite_triton, excite_cpp or excite_torch
    return SelfCheckResult(str(device), dtype, channels_last, kernels, len(CASES) * 2, tuple(failures), ms)


_RESULTS = {}  # (device, dtype, channels_last) -> SelfCheckResult, one per process


@torch.compiler.assume_constant_result
def _verified(device, dtype, channels_last, strict):
    key = (device, dtype, channels_last)
    result = _RESULTS.get(key)
    if result is None:
        with _disable_current_modes():  # real tensors, also while torch.export's fake / proxy modes trace a model
            result = _RESULTS[key] = self_check(device, dtype, channels_last)
        if result.ok:
            logger.info("Gather-Excite %s", result.describe())
        elif not strict:
            logger.warning("Gather-Excite %s. GatherExcite(fused='auto') uses the pure-PyTorch reference on "
                           "these tensors from now on; see README, Troubleshooting.", result.describe())
    if strict and not result.ok:
        raise RuntimeError(f"Gather-Excite {result.describe()}. fused='on' (MODEL.GE.FUSED on) requires the "
                           "kernels: use 'auto' (falls back to the reference) or 'off'; see README, Troubleshooting.")
    return result.ok


def kernels_verified(x, strict=False):
    """Whether the fused operator's kernels passed ``self_check`` for tensors like `x` (run on the first
    call per device, dtype and memory format). ``strict`` (fused="on"): raise a RuntimeError instead of
    returning False. torch.compile and torch.export evaluate it while tracing and keep the answer as a
    constant."""
    return _verified(str(x.device), x.dtype, memory_format(x) == torch.channels_last, strict)
