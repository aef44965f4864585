"""The timing harness of tools/benchmark_excite.py, tools/benchmark_model.py and tools/benchmark_export.py.

Functions are timed in rounds: a round calls every function once, starting one later each round, so
that background load on a shared machine and the caches left by the function before hit all alike.
On CUDA a call is timed with CUDA events (the GPU is idle when the start event is recorded unless a
cache flush was queued just before, so a call's time is its wall time, and a kernel's time when
flushed); on the CPU with ``time.perf_counter``.
"""
import statistics
import time

import torch
from detectron2.layers import FrozenBatchNorm2d

# A narrow R50 (1/16 of the widths) with a narrow FPN and box head: the benchmarks' and the GPU check's tiny setting
# (config overrides).
NARROW_R50 = ["MODEL.RESNETS.STEM_OUT_CHANNELS", "16", "MODEL.RESNETS.WIDTH_PER_GROUP", "16",
              "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.FPN.OUT_CHANNELS", "32",
              "MODEL.ROI_BOX_HEAD.FC_DIM", "64"]


def rotations(names, rounds):
    """``rounds`` orders of ``names``, each starting one later than the one before."""
    names = list(names)
    for i in range(rounds):
        k = i % len(names)
        yield names[k:] + names[:k]


class Timer:
    """Times of functions on ``device``: ``runs`` rounds after ``warmup`` untimed ones. With ``flush_mb``,
    a buffer of that size (larger than the last-level cache) is overwritten before each timed call."""

    def __init__(self, device, runs, warmup, flush_mb=0):
        self.device, self.runs, self.warmup = device, runs, warmup
        self.flush = torch.empty(flush_mb * 2**20 // 4, dtype=torch.float32, device=device) if flush_mb else None

    def ms(self, fn):
        """The time of one call of ``fn`` in ms."""
        if self.flush is not None:
            self.flush.zero_()
        if self.device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3

    def times(self, fns):
        """{name: [ms of each timed round]} for the functions of the dict ``fns``."""
        for _ in range(self.warmup):
            for fn in fns.values():
                fn()
        if self.device == "cuda":
            torch.cuda.synchronize()
        times = {name: [] for name in fns}
        for order in rotations(fns, self.runs):
            for name in order:
                times[name].append(self.ms(fns[name]))
        return times

    def median(self, fns):
        """{name: median ms} for the functions of the dict ``fns``."""
        return {name: statistics.median(t) for name, t in self.times(fns).items()}


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return "CPU"


def device_name(device):
    """The GPU's name on CUDA, the CPU's model name otherwise."""
    return torch.cuda.get_device_name() if device == "cuda" else cpu_name()


def calibrate_frozen_norms(model, inputs):
    """Set every FrozenBatchNorm2d's running mean and variance to those of its input on ``inputs`` (the model's
    inference inputs), in one inference pass: each norm sees its input as normalised by the norms before it.
    A randomly initialised detector then does the work of a trained one (docs/benchmarks.md)."""
    def set_statistics(norm, args):
        x = args[0].double()
        norm.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        norm.running_var.copy_(x.var(dim=(0, 2, 3)))

    hooks = [m.register_forward_pre_hook(set_statistics) for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    model.eval()
    with torch.no_grad():
        model(inputs)
    for hook in hooks:
        hook.remove()
