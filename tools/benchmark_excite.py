#!/usr/bin/env python
"""Time the Gather-Excite bottleneck tail relu(x * sigmoid(up(g)) + shortcut), or the bare excite
x * sigmoid(up(g)) with --op excite, at detection feature-map sizes:

    eager-timm       upsample g, sigmoid, multiply (timm's GatherExcite order)
    eager            sigmoid, upsample, multiply (ge_detectron's reference: the sigmoid on the small map)
    compiled         torch.compile of the reference (CUDA by default; --compile on CPU)
    fused            torch.ops.ge_detectron: the Triton kernels on CUDA, the C++ kernels on the CPU
    fused-1t         with --thread-scaling (CPU): fused on one thread, so that its "fused x" column is
                     the speedup of the C++ kernels from one thread to --threads (torch's count by default)

Forward, backward (of a retained graph) and both, for global and extent-8 gates, float32 and bfloat16,
NCHW and channels_last. Each time is the median of --runs runs after --warmup, with the caches flushed
(a buffer larger than the last-level cache is overwritten) before each run; CUDA times are CUDA events.
The implementations take turns run by run, so that background load on a shared machine hits all alike.
GB/s is the fused operator's minimal traffic (forward: read x, shortcut, g, write out; backward: read
grad, out, x, g, write grad_x, grad_shortcut, grad_g) over the time, for every implementation alike, and
"of copy" is that as a share of a device-to-device copy's bandwidth measured in the same run.

    python tools/benchmark_excite.py                      # CUDA if available: batch 16 and 2 at 800x1216
    python tools/benchmark_excite.py --device cpu         # CPU defaults: batch 1 at 400x608, 10 runs
    python tools/benchmark_excite.py --batches 2 --runs 200 --json output/excite.json
    python tools/benchmark_excite.py --device cpu --threads 2 --thread-scaling   # 1 against 2 threads

The JSON is rewritten after every case, so that a run stopped early leaves the cases it finished
("complete": false). The timing harness is ge_detectron.benchmark's.
"""
import argparse
import ctypes
import datetime
import json
import math
import os
import statistics

import torch
import torch.nn.functional as F

from ge_detectron import ops
from ge_detectron.atomic import AtomicFile
from ge_detectron.benchmark import Timer, device_name
from ge_detectron.layers import excite_reference, excite_residual_reference

STAGES = [("res2", 256, 4), ("res3", 512, 8), ("res4", 1024, 16), ("res5", 2048, 32)]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    p.add_argument("--op", default="residual", choices=["residual", "excite"],
                   help="the bottleneck tail relu(excite + shortcut) (what GE-ResNet runs) or the bare excite")
    p.add_argument("--image", help="input HxW of the FPN shapes (default 800x1216 on CUDA, 400x608 on CPU)")
    p.add_argument("--batches", type=int, nargs="+", help="batch sizes (default 16 2 on CUDA, 1 on CPU)")
    p.add_argument("--c4", action=argparse.BooleanOptionalAction, default=True,
                   help="after the FPN shapes, the C4 res4 and res5-head shapes")
    p.add_argument("--c4-image", help="input HxW of the C4 res4 shape (default 800x1333 on CUDA, 400x667 on CPU)")
    p.add_argument("--rois", type=int, help="RoIs in the C4 res5 head's 7x7 shape (default 1024 on CUDA, 64 on CPU)")
    p.add_argument("--extents", type=int, nargs="+", default=[0, 8], help="0 = global")
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16", "float16"])
    p.add_argument("--layouts", nargs="+", default=["nchw", "channels_last"], choices=["nchw", "channels_last"])
    p.add_argument("--runs", type=int, help="timed runs per measurement, median reported (default 100 CUDA, 10 CPU)")
    p.add_argument("--warmup", type=int, help="untimed runs first (default 10 CUDA, 2 CPU)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="include torch.compile of the reference (default: on for CUDA, off for CPU)")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    p.add_argument("--thread-scaling", action="store_true",
                   help="CPU: also time the fused operator on one thread (fused-1t), in turn with the others")
    p.add_argument("--keep-freed-memory", action=argparse.BooleanOptionalAction, default=True,
                   help="CPU: have glibc keep freed blocks up to 32 MiB (see keep_freed_memory)")
    p.add_argument("--flush-mb", type=int, default=256, help="size of the cache-flush buffer")
    p.add_argument("--json", default="output/benchmark_excite_{device}.json", help="where to write the results")
    args = p.parse_args()
    cuda = args.device == "cuda"
    args.image = args.image or ("800x1216" if cuda else "400x608")
    args.c4_image = args.c4_image or ("800x1333" if cuda else "400x667")
    args.batches = args.batches or ([16, 2] if cuda else [1])
    args.rois = args.rois or (1024 if cuda else 64)
    args.runs = args.runs or (100 if cuda else 10)
    args.warmup = args.warmup if args.warmup is not None else (10 if cuda else 2)
    args.compile = cuda if args.compile is None else args.compile
    return args


def size(text):
    h, w = text.lower().split("x")
    return int(h), int(w)


def c4_res4(h, w):
    """res4 of detectron2's R50-C4 (no padding to a multiple of 32): stem /4, then two stride-2 1x1 convs."""
    for _ in range(2):
        h, w = (h + 1) // 2, (w + 1) // 2  # stem conv 7x7/2 pad 3, then max pool 3x3/2 pad 1
    for _ in range(2):
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1  # res3, res4: 1x1 conv stride 2, no padding
    return h, w


def shapes(args):
    """(name, (N, C, H, W)): FPN res2..res5 per batch, then (with --c4) the C4 res4 and res5-head shapes."""
    H, W = size(args.image)
    out = [(f"{name} b{n}", (n, c, math.ceil(H / s), math.ceil(W / s))) for n in args.batches for name, c, s in STAGES]
    if not args.c4:
        return out
    h4, w4 = c4_res4(*size(args.c4_image))
    out.append((f"c4-res4 b{args.batches[-1]}", (args.batches[-1], 1024, h4, w4)))
    out.append((f"c4-res5-head {args.rois}rois", (args.rois, 2048, 7, 7)))
    return out


def eager_timm(x, g, shortcut):
    gate = g if g.shape[-2:] == (1, 1) else F.interpolate(g, size=x.shape[-2:], mode="nearest")
    y = x * torch.sigmoid(gate)
    return y if shortcut is None else F.relu(y + shortcut)


def eager(x, g, shortcut):
    return excite_reference(x, g) if shortcut is None else excite_residual_reference(x, g, shortcut)


def fused(x, g, shortcut):
    return ops.excite(x, g) if shortcut is None else ops.excite_residual(x, g, shortcut)


def keep_freed_memory():
    """Make glibc keep freed blocks of up to 32 MiB for reuse instead of returning them to the OS. By
    default it unmaps large freed blocks, so every freshly allocated output page-faults on first touch,
    a cost that varies from run to run with the heap's state and swamps the kernels being compared
    (CUDA's caching allocator has no such cost). Returns whether glibc accepted the settings."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameters, malloc.h
    return bool(libc.mallopt(m_mmap_threshold, 32 * 2**20)) and bool(libc.mallopt(m_trim_threshold, 2**30))


def copy_bandwidth(timer, device):
    """GB/s of a device-to-device copy (read + write) of 256 MiB."""
    src = torch.randn(2**26, device=device)
    dst = torch.empty_like(src)
    ms = timer.median({"copy": lambda: dst.copy_(src)})["copy"]
    return 2 * src.numel() * src.element_size() / ms / 1e6


def traffic(x, g, residual):
    """Bytes the fused operator must move: forward, backward."""
    big, small = x.numel() * x.element_size(), g.numel() * g.element_size()
    forward = (3 if residual else 2) * big + small
    backward = (5 if residual else 3) * big + 2 * small
    return forward, backward


def on_threads(n, fn):
    """``fn`` run with torch's intra-op thread count set to ``n`` (then set back); ``fn`` if ``n`` is None."""
    if n is None:
        return fn

    def run():
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            return fn()
        finally:
            torch.set_num_threads(before)
    return run


def measure(timer, impls, x, g, shortcut, grad, threads=None):
    """{impl: {"forward": ms, "backward": ms (through a retained graph), "both": ms}}; ``threads`` maps an
    impl to the thread count it runs with (default: the current one)."""
    threads = threads or {}

    def timed(fns):
        return timer.median({impl: on_threads(threads.get(impl), fn) for impl, fn in fns.items()})

    inputs = (x, g) if shortcut is None else (x, g, shortcut)
    leaves = {impl: [t.detach().requires_grad_() for t in inputs] for impl in impls}

    def call(impl, tensors):
        return impls[impl](*tensors) if shortcut is not None else impls[impl](*tensors, None)

    with torch.no_grad():
        forward = timed({impl: (lambda impl=impl: call(impl, inputs)) for impl in impls})
    outs = {impl: call(impl, leaves[impl]) for impl in impls}
    backward = timed({impl: (lambda impl=impl: torch.autograd.grad(outs[impl], leaves[impl], grad, retain_graph=True))
                      for impl in impls})
    del outs
    both = timed({impl: (lambda impl=impl: torch.autograd.grad(call(impl, leaves[impl]), leaves[impl], grad))
                  for impl in impls})
    return {impl: {"forward": forward[impl], "backward": backward[impl], "both": both[impl]} for impl in impls}


def main():
    args = parse_args()
    if not ops.native_kernels(args.device):
        raise SystemExit(f"The fused operator has no {args.device} kernels: {ops.unavailable_reason(args.device)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device, residual = args.device, args.op == "residual"
    args.keep_freed_memory = device == "cpu" and args.keep_freed_memory and keep_freed_memory()
    torch._dynamo.config.cache_size_limit = 64  # one compile per dtype / layout / extent, shapes dynamic
    timer = Timer(device, args.runs, args.warmup, args.flush_mb)
    copy_gbps = copy_bandwidth(timer, device)
    impls = {"eager-timm": eager_timm, "eager": eager}
    if args.compile:
        impls["compiled"] = torch.compile(eager)
    impls["fused"] = fused
    threads = {}
    if args.thread_scaling:
        if device != "cpu":
            raise SystemExit("--thread-scaling measures the CPU kernels: use it with --device cpu")
        impls["fused-1t"], threads["fused-1t"] = fused, 1
    name = device_name(device)
    print(f"{name} | torch {torch.__version__} | fused: {ops.native_kernels(device)} | {args.op} | "
          f"threads {torch.get_num_threads()} | "
          f"copy {copy_gbps:.1f} GB/s | median of {args.runs} runs | "
          f"glibc keeps freed memory: {args.keep_freed_memory}")
    path = args.json.format(device=device)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    cases = [(label, size, extent, dtype_name, layout) for label, size in shapes(args) for extent in args.extents
             for dtype_name in args.dtypes for layout in args.layouts]
    results = []

    def write(complete):
        """The results so far (a run stopped early leaves those of the cases it finished)."""
        with AtomicFile(path) as f:
            json.dump({"device": name, "torch": torch.__version__, "date": datetime.date.today().isoformat(),
                       "fused_kernels": ops.native_kernels(device),
                       "op": args.op, "threads": torch.get_num_threads(), "copy_gbps": copy_gbps,
                       "args": vars(args), "cases": len(cases), "complete": complete, "results": results}, f,
                      indent=1)

    header = f"{'shape':<28}{'ext':>4} {'dtype':<9}{'layout':<14}{'impl':<11}" + "".join(
        f"{m + ' ms':>13}{'GB/s':>8}{'copy':>6}" for m in ("fwd", "bwd", "fwd+bwd")) + f"{'fused x':>9}"
    print(header)
    gen = torch.Generator(device=device).manual_seed(0)
    for label, (N, C, H, W), extent, dtype_name, layout in cases:
        h, w = (1, 1) if extent == 0 else (math.ceil(H / extent), math.ceil(W / extent))
        dtype = getattr(torch, dtype_name)
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format

        def rand(*shape):
            t = torch.randn(*shape, generator=gen, device=device, dtype=dtype)
            return t.contiguous(memory_format=fmt)

        x, g, grad = rand(N, C, H, W), rand(N, C, h, w), rand(N, C, H, W)
        shortcut = rand(N, C, H, W) if residual else None
        fwd_bytes, bwd_bytes = traffic(x, g, residual)
        nbytes = {"forward": fwd_bytes, "backward": bwd_bytes, "both": fwd_bytes + bwd_bytes}
        rows = measure(timer, impls, x, g, shortcut, grad, threads)
        for impl, times in rows.items():
            gbps = {m: nbytes[m] / t / 1e6 for m, t in times.items()}
            speedup = times["both"] / rows["fused"]["both"]
            print(f"{label:<28}{extent:>4} {dtype_name:<9}{layout:<14}{impl:<11}" + "".join(
                f"{times[m]:>13.3f}{gbps[m]:>8.1f}{gbps[m] / copy_gbps:>6.0%}"
                for m in ("forward", "backward", "both")) + f"{speedup:>8.2f}x", flush=True)
            results.append({"shape": label, "size": [N, C, H, W], "gate": [h, w], "extent": extent,
                            "dtype": dtype_name, "layout": layout, "impl": impl, "ms": times,
                            "gbps": gbps, "share_of_copy": {m: v / copy_gbps for m, v in gbps.items()},
                            "fused_speedup": {m: times[m] / rows["fused"][m] for m in times}})
        write(complete=False)
        del x, g, grad, shortcut
        if device == "cuda":
            torch.cuda.empty_cache()
    write(complete=True)
    _summary(results)
    print(f"wrote {path}")


def _summary(results):
    """Geometric mean over the cases of each implementation's time relative to the fused operator."""
    print("\ngeometric mean of time / fused time (over all cases):")
    for impl in dict.fromkeys(r["impl"] for r in results):
        if impl == "fused":
            continue
        speedups = [r["fused_speedup"] for r in results if r["impl"] == impl]
        means = {m: math.exp(statistics.fmean(math.log(s[m]) for s in speedups))
                 for m in ("forward", "backward", "both")}
        print(f"  {impl:<11} " + "  ".join(f"{m} {v:.2f}x" for m, v in means.items()) +
              f"   (fwd+bwd min {min(s['both'] for s in speedups):.2f}x)")



if __name__ == "__main__":
    main()
