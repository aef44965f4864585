#!/usr/bin/env python
"""Everything the GPU must show, in one run of at most 9 minutes on one H100/H200 (``make gpu-check``);
writes output/gpu_check/report.md and report.json.

    python tools/gpu_check.py                         # on a CUDA machine (without a GPU: says so, exits 0)
    python tools/gpu_check.py --device cpu --quick    # the same steps on the CPU, tiny shapes
    python tools/gpu_check.py --only grads compile    # rerun some steps

Each step runs in its own process under a time budget: a step over its budget is killed (its whole
process group) and the next one starts, so that a slow step cannot starve the rest. The steps:

    op_tests     the CUDA cases of tests/test_excite_op.py and tests/test_excite_triton.py (pytest; needs
                 the repository's tests/)
    excite       tools/benchmark_excite.py on R50-FPN res2..res5 at batch 16 and 800x1216: E8 and global,
                 bf16 and f32, NCHW and channels_last; eager (timm order), torch.compile, fused
    model        tools/benchmark_model.py with AMP: R50, GE-theta-minus and GE-theta E8, reference and fused
    train        tools/train_net.py on the demo config with AMP: iterations/s and AP
    grads        every parameter's gradient, fused against reference, after one forward and backward of the
                 GE-R50-FPN backbone (ge_detectron.fused_gradients): GE-theta E8 in float32 and under AMP,
                 GE-theta-plus E8 with GN under AMP
    compile      torch.compile of a GE backbone over four input sizes, dynamic=True and
                 torch._dynamo.mark_dynamic on the input: the number of graphs, outputs against eager
    devices      a GE bottleneck on cuda:1 while cuda:0 is current, fused against reference (two GPUs)
    cuda_graphs  a GE bottleneck's forward and backward captured in a CUDA graph after a warm-up, replayed
                 on new inputs against eager

``--device cpu --quick`` runs every step the same way on the CPU with tiny shapes and a narrow network
(autocast in bfloat16; devices and cuda_graphs are "not checked"): it checks the path, not the numbers.
Where the repository's tests/ or configs/ are missing (the package installed from a wheel, this file
alone), the steps that need them are "not run".
"""
import argparse
import datetime
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
import xml.etree.ElementTree as ElementTree

import torch
from torch._dynamo.testing import CompileCounterWithBackend

# detectron2 0.6 scripts a few functions at import, which torch warns about: not this tool's output
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)

import ge_detectron  # noqa: E402  (compat fixes and registration before detectron2 is used)
import detectron2  # noqa: E402
from detectron2 import model_zoo  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.layers import ShapeSpec  # noqa: E402
from detectron2.modeling import build_backbone  # noqa: E402
from ge_detectron import add_ge_config  # noqa: E402
from ge_detectron.benchmark import NARROW_R50, cpu_name  # noqa: E402
from ge_detectron.data import generate_shapes_split  # noqa: E402
from ge_detectron.fused_gradients import compare_fused_to_reference, relative_error  # noqa: E402
from ge_detectron.layers import GatherExcite  # noqa: E402
from ge_detectron.modeling import GEBottleneckBlock  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# where the ge_detectron this process imports lies: the steps' processes import the same one
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(ge_detectron.__file__)))
DEMO_CONFIG = os.path.join(REPO, "configs", "demo", "faster_rcnn_ge_theta_e8_r50_fpn_shapes.yaml")
TOTAL_BUDGET_S = 9 * 60

QUICK_TRAINING = NARROW_R50 + [
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64",
    "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0", "MODEL.RPN.POST_NMS_TOPK_TEST", "50",
    "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "()", "SOLVER.MAX_ITER", "2", "MODEL.RESNETS.NORM", "BN",
    "MODEL.FPN.NORM", "", "MODEL.GE.NORM", "FrozenBN"]
# GN's 32 groups need 32 channels in the stem: the narrow R50 at 1/8 of the widths
NARROW_R50_GN = NARROW_R50 + ["MODEL.RESNETS.STEM_OUT_CHANNELS", "32", "MODEL.RESNETS.WIDTH_PER_GROUP", "32",
                              "MODEL.RESNETS.RES2_OUT_CHANNELS", "128"]
# The mixed precision of AMP: detectron2's SOLVER.AMP is float16 autocast on CUDA; the CPU's autocast is bfloat16.
AMP_DTYPE = {"cuda": torch.float16, "cpu": torch.bfloat16}


class Step:
    """One step: ``command(check)`` is its argv, ``read(check, log)`` its results (a dict) from the files
    it wrote (``outputs``, under --out) and its log; ``budget_s`` its time budget on the GPU,
    ``quick_budget_s`` with --quick (generous: the CPU runs of the tests share their machine); ``env(check)`` what it adds to the environment; ``needs`` the paths
    of the repository (relative to it) without which it is not run; ``unchecked(check)`` why this machine
    has nothing for it to check (None: it runs)."""

    def __init__(self, name, title, budget_s, quick_budget_s, command, read, outputs, env=None, needs=(),
                 unchecked=None):
        self.name, self.title, self.budget_s, self.quick_budget_s = name, title, budget_s, quick_budget_s
        self.command, self.read, self.outputs, self.env = command, read, outputs, env or (lambda check: {})
        self.needs, self.unchecked = needs, unchecked or (lambda check: None)

    def budget(self, check):
        return (self.quick_budget_s if check.quick else self.budget_s) * check.budget_scale

    def missing(self):
        """The first path of the repository this step needs that is not there, or None."""
        return next((path for path in self.needs if not os.path.exists(os.path.join(REPO, path))), None)


def _python(*args):
    return [sys.executable, *args]


def _tool(name):
    return os.path.join(REPO, "tools", name)


# ---- op_tests ----------------------------------------------------------------------------------------

def op_tests_command(check):
    files = ["tests/test_excite_op.py"]
    if check.quick:  # the CPU cases of one dtype and layout: the same pytest path
        selection = ["-k", "cpu and residual-bf16-nchw"]
    else:
        files.append("tests/test_excite_triton.py")
        selection = ["-k", "cuda or test_excite_triton"]
    return _python("-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE",
                   f"--junitxml={check.path('op_tests.xml')}", *files, *selection)


def op_tests_read(check, log):
    suite = ElementTree.parse(check.path("op_tests.xml")).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    failed = [f"{case.get('classname')}::{case.get('name')}" for case in suite.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {"passed": passed, "failed": len(failed), "skipped": counts["skipped"], "failures": failed,
            "ok": not failed and passed > 0}


def op_tests_env(check):
    """On the GPU: triton required, and its kernels compiled for the GPU, not interpreted."""
    return {} if check.quick else {"GE_REQUIRE_TRITON": "1", "TRITON_INTERPRET": "0"}


# ---- excite -------------------------------------------------------------------------------------------

def excite_command(check):
    shape = (["--batches", "1", "--image", "64x96", "--runs", "2", "--warmup", "1", "--flush-mb", "8"] if check.quick
             else ["--batches", "16", "--image", "800x1216", "--runs", "20", "--warmup", "3"])
    return _python(_tool("benchmark_excite.py"), "--device", check.device, "--no-c4", "--extents", "8", "0",
                   "--dtypes", "bfloat16", "float32", "--layouts", "nchw", "channels_last", *shape,
                   "--json", check.path("excite.json"))


def excite_read(check, log):
    with open(check.path("excite.json")) as f:
        data = json.load(f)
    fused = {_case(r): r for r in data["results"] if r["impl"] == "fused"}
    rows = []
    for key, r in fused.items():
        others = {o["impl"]: o for o in data["results"] if _case(o) == key}
        vs = {impl: others[impl]["ms"]["both"] / r["ms"]["both"] if impl in others else None
              for impl in ("eager", "eager-timm", "compiled")}
        rows.append({"map": r["shape"], "extent": r["extent"], "dtype": r["dtype"], "layout": r["layout"],
                     "ms": r["ms"], "share_of_copy": r["share_of_copy"], "vs_eager": vs["eager"],
                     "vs_timm": vs["eager-timm"], "vs_compiled": vs["compiled"]})
    return {"copy_gbps": data["copy_gbps"], "cases": data["cases"], "cases_done": len(rows),
            "complete": data["complete"], "rows": rows, "ok": data["complete"]}


def _case(r):
    return r["shape"], r["extent"], r["dtype"], r["layout"]


# ---- model --------------------------------------------------------------------------------------------

def model_command(check):
    setting = (["--image", "64x96", "--batch", "2", "--iters", "1", "--warmup", "0", "--breakdown-iters", "1"]
               if check.quick else ["--iters", "10", "--warmup", "3", "--breakdown-iters", "5"])
    amp = ["--amp"] if check.device == "cuda" else ["--no-amp"]
    return _python(_tool("benchmark_model.py"), "--device", check.device, *amp, *setting,
                   "--json", check.path("model.json"), *(NARROW_R50 if check.quick else []))


def model_read(check, log):
    with open(check.path("model.json")) as f:
        data = json.load(f)
    rows = [{k: r[k] for k in ("model", "train_step_ms", "train_vs_r50", "inference_images_per_s", "inference_vs_r50")}
            for r in data["results"]]
    return {"amp": data["args"]["amp"], "image": data["args"]["image"], "batch": data["args"]["batch"],
            "iters": data["args"]["iters"], "rows": rows, "breakdown_ms": data["breakdown_ms"], "ok": True}


# ---- train --------------------------------------------------------------------------------------------

def train_opts(check):
    if check.quick:
        return QUICK_TRAINING + ["MODEL.DEVICE", check.device]
    return ["MODEL.DEVICE", check.device, "SOLVER.AMP.ENABLED", "True"]


def train_command(check):
    # --quick: 5 iterations, as detectron2's speed line leaves out the first 3
    return _python(_tool("train_net.py"), "--config-file", DEMO_CONFIG, *train_opts(check),
                   *(["SOLVER.MAX_ITER", "5"] if check.quick else []), "OUTPUT_DIR", check.path("train"))


def train_env(check):
    return {"DETECTRON2_DATASETS": check.datasets} if check.datasets else {}


def train_read(check, log):
    speed = [line for line in log.splitlines() if "Overall training speed:" in line]
    if not speed:
        raise ValueError("the log has no line 'Overall training speed:' (training did not finish)")
    timed, seconds_per_it = re.search(r"speed: (\d+) iterations in \S+ \(([\d.]+) s / it\)", speed[-1]).groups()
    with open(check.path("train", "metrics.json")) as f:
        metrics = [json.loads(line) for line in f]
    ap = [m["bbox/AP"] for m in metrics if "bbox/AP" in m]
    loss = [m["total_loss"] for m in metrics if "total_loss" in m]
    return {"timed_iterations": int(timed), "iterations_per_s": 1 / float(seconds_per_it),
            "bbox_AP": ap[-1] if ap else None, "last_total_loss": loss[-1] if loss else None,
            "amp": not check.quick, "ok": bool(ap) and bool(loss) and math.isfinite(loss[-1])}


# ---- grads, compile, devices, cuda_graphs: run in this file's own process (``--step NAME``) ----------

def own_step_command(check, name):
    return _python(os.path.abspath(__file__), "--step", name, "--device", check.device, "--out", check.out,
                   *(["--quick"] if check.quick else []))


def read_json(name):
    def read(check, log):
        with open(check.path(f"{name}.json")) as f:
            return json.load(f)
    return read


def checked(name, fn):
    """{"name", "ok", ...fn()}; an exception is the case's failure (its type and first line), not the step's."""
    try:
        return {"name": name, **fn()}
    except Exception as e:  # noqa: BLE001  (every failure of the operator is a result to report)
        return {"name": name, "ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}


def ge_backbone(check, variant, norm):
    """The GE-R50-FPN backbone of configs/faster_rcnn_ge_r50_fpn.yaml (GE E8 in res3-res5; FrozenBN, or GN in
    the ResNet, the gathers and the FPN), randomly initialised from a fixed seed; narrow with --quick."""
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"))
    add_ge_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "build_ge_resnet_fpn_backbone"
    cfg.MODEL.GE.VARIANT, cfg.MODEL.GE.EXTENT, cfg.MODEL.GE.STAGES = variant, 8, ["res3", "res4", "res5"]
    if norm == "GN":
        cfg.MODEL.RESNETS.NORM = cfg.MODEL.GE.NORM = cfg.MODEL.FPN.NORM = "GN"
    if check.quick:
        cfg.merge_from_list(NARROW_R50_GN if norm == "GN" else NARROW_R50)
    torch.manual_seed(0)
    return build_backbone(cfg, ShapeSpec(channels=3)).to(check.device)


# (name, variant, norm, autocast): float32, AMP, and autocast with GN (float32 under CUDA's autocast) and θ⁺
GRADIENT_CASES = [("GE-θ E8, FrozenBN", "theta", "FrozenBN", False),
                  ("GE-θ E8, FrozenBN", "theta", "FrozenBN", True),
                  ("GE-θ⁺ E8, GN", "theta_plus", "GN", True)]


def gradients_step(check):
    """Each GRADIENT_CASES backbone, one forward and backward on 2 images of 800x1216 (--quick: 128x192):
    every parameter's gradient, fused and reference, against the reference in float64 (fused_gradients)."""
    height, width = (128, 192) if check.quick else (800, 1216)
    cases = []
    for name, variant, norm, amp in GRADIENT_CASES:
        dtype = AMP_DTYPE[check.device] if amp else None

        def compare(variant=variant, norm=norm, dtype=dtype):
            model = ge_backbone(check, variant, norm)
            images = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(0)).to(check.device)
            return compare_fused_to_reference(model, images, dtype)
        precision = f"AMP ({str(dtype).replace('torch.', '')})" if amp else "float32"
        cases.append({"precision": precision, **checked(name, compare)})
    return {"image": f"{height}x{width}", "batch": 2, "cases": cases, "ok": all(c["ok"] for c in cases)}


def ge_block(device):
    """A GE-θ E8 bottleneck of res4 (1024 channels, bottleneck 256; FrozenBN), from a fixed seed."""
    torch.manual_seed(0)
    return GEBottleneckBlock(1024, 1024, bottleneck_channels=256, norm="FrozenBN", ge_variant="theta", ge_extent=8,
                             ge_norm="FrozenBN", ge_fused="on").to(device)


COMPILE_SIZES = {"cuda": [(512, 768), (640, 960), (800, 1216), (704, 1088)],
                 "cpu": [(32, 48), (48, 64), (64, 96), (96, 128)]}
# compiled against eager in float32: reordered sums through ~50 layers; a wrong kernel is off by O(1)
COMPILE_RTOL = 1e-3
# dynamic sizes compile once (or a first graph specialised to the first size, then a dynamic one): a graph
# per size would be a recompilation per size
MAX_GRAPHS = 2


def compile_step(check):
    """torch.compile over four input sizes, with dynamic=True and with dynamic sizes marked on the input
    (torch._dynamo.mark_dynamic): the number of graphs compiled (torch._dynamo.testing's counter) and the
    outputs against eager. On CUDA the GE-R50 backbone (ResNet) with inductor; with --quick a GE-θ E8 module
    with the aot_eager backend (the same tracing, no C++ compilation)."""
    if check.quick:
        torch.manual_seed(0)
        module = GatherExcite(256, variant="theta", extent=8, norm="FrozenBN", fused="on").to(check.device).eval()
        what, backend, channels = "GatherExcite(256, theta, extent 8, FrozenBN)", "aot_eager", 256
    else:
        module, what, backend, channels = ge_backbone(check, "theta", "FrozenBN").bottom_up.eval(), \
            "GE-θ E8 R50 (res2..res5)", "inductor", 3
    sizes = COMPILE_SIZES[check.device]
    runs = []
    for mode in ("dynamic=True", "mark_dynamic"):
        def run(mode=mode):
            torch._dynamo.reset()
            counter = CompileCounterWithBackend(backend)
            compiled = torch.compile(module, backend=counter, dynamic=True if mode == "dynamic=True" else None)
            errors = []
            for h, w in sizes:
                x = torch.randn(1, channels, h, w, generator=torch.Generator().manual_seed(h * w)).to(check.device)
                if mode == "mark_dynamic":
                    torch._dynamo.mark_dynamic(x, 2)
                    torch._dynamo.mark_dynamic(x, 3)
                with torch.no_grad():
                    out, ref = compiled(x), module(x)
                out, ref = (out, ref) if isinstance(out, dict) else ({"out": out}, {"out": ref})
                errors.append(max(relative_error(out[k], ref[k]) for k in ref))
            return {"graphs": counter.frame_count, "max_error": max(errors),
                    "ok": counter.frame_count <= MAX_GRAPHS and max(errors) <= COMPILE_RTOL}
        runs.append(checked(mode, run))
    return {"module": what, "backend": backend, "sizes": [f"{h}x{w}" for h, w in sizes], "rtol": COMPILE_RTOL,
            "max_graphs": MAX_GRAPHS, "runs": runs, "ok": all(r["ok"] for r in runs)}


def devices_unchecked(check):
    if check.device != "cuda":
        return "the CPU has no second device"
    return None if torch.cuda.device_count() >= 2 else f"{torch.cuda.device_count()} GPU here; needs two"


def devices_step(check):
    """A GE bottleneck on cuda:1 while cuda:0 is current: its gradients fused against reference
    (fused_gradients' rule), and cuda:0 still current after it."""
    torch.cuda.set_device(0)
    block = ge_block("cuda:1")
    x = torch.randn(2, 1024, 64, 96, generator=torch.Generator().manual_seed(0)).to("cuda:1")
    case = checked("cuda:1 with cuda:0 current, float32", lambda: compare_fused_to_reference(block, x))
    case["current_device"] = torch.cuda.current_device()
    case["ok"] = case["ok"] and case["current_device"] == 0
    return {"cases": [case], "ok": case["ok"]}


# a graph's replay against eager in float32 (TF32 off): the same kernels, equal up to cuDNN's non-deterministic sums
CUDA_GRAPH_RTOL = 1e-5


def cuda_graphs_step(check):
    """A GE bottleneck's forward and backward (the fused operator) captured in a CUDA graph after 3 warm-up
    iterations on a side stream, replayed on a new input: its output and every gradient against eager."""
    def capture_and_replay():
        block = ge_block("cuda").train()
        params = [p for p in block.parameters() if p.requires_grad]
        gen = torch.Generator().manual_seed(0)
        static_x, grad_out, new_x = (torch.randn(2, 1024, 64, 96, generator=gen).cuda() for _ in range(3))

        def forward_backward(x):
            for p in params:
                p.grad = None
            out = block(x)
            out.backward(grad_out)
            return out

        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):  # the first launches compile the Triton kernels: never inside a capture
                forward_backward(static_x)
        torch.cuda.current_stream().wait_stream(stream)
        for p in params:
            p.grad = None
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = block(static_x)
            static_out.backward(grad_out)
        static_x.copy_(new_x)
        graph.replay()
        torch.cuda.synchronize()
        replayed = [static_out.detach().clone(), *(p.grad.detach().clone() for p in params)]
        eager = forward_backward(new_x)
        errors = [relative_error(a, b) for a, b in zip(replayed, [eager.detach(), *(p.grad for p in params)])]
        return {"tensors": len(errors), "max_error": max(errors), "ok": max(errors) <= CUDA_GRAPH_RTOL}

    return {"rtol": CUDA_GRAPH_RTOL, **checked("GE-θ E8 bottleneck (res4), forward and backward", capture_and_replay)}


OWN_STEPS = {"grads": gradients_step, "compile": compile_step, "devices": devices_step,
             "cuda_graphs": cuda_graphs_step}


def run_own_step(check, name):
    """Run OWN_STEPS[name] in this process and write its result to NAME.json under --out."""
    if check.device == "cuda":  # float32 means float32: no TF32 in the convolutions and matmuls
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    result = OWN_STEPS[name](check)
    with open(check.path(f"{name}.json"), "w") as f:
        json.dump(result, f, indent=1)


def own_step(name, title, budget_s, quick_budget_s, unchecked=None):
    return Step(name, title, budget_s, quick_budget_s, lambda check: own_step_command(check, name), read_json(name),
                [f"{name}.json"], unchecked=unchecked)


STEPS = [
    Step("op_tests", "op tests", 60, 120, op_tests_command, op_tests_read, ["op_tests.xml"], op_tests_env,
         needs=["tests/test_excite_op.py", "tests/test_excite_triton.py"]),
    Step("excite", "excite benchmark", 150, 120, excite_command, excite_read, ["excite.json"],
         needs=["tools/benchmark_excite.py"]),
    Step("model", "model benchmark", 60, 120, model_command, model_read, ["model.json"],
         needs=["tools/benchmark_model.py"]),
    # the demo's 200 iterations, with the generation of its 700 images on a fresh machine and the evaluation
    Step("train", "demo training", 90, 120, train_command, train_read, ["train"], train_env,
         needs=["tools/train_net.py", os.path.relpath(DEMO_CONFIG, REPO)]),
    own_step("grads", "fused vs reference gradients", 45, 120),
    own_step("compile", "torch.compile, four sizes", 90, 120),
    own_step("devices", "cuda:1 with cuda:0 current", 15, 30, devices_unchecked),
    own_step("cuda_graphs", "CUDA graph capture", 15, 30,
             lambda check: "CUDA graphs need a GPU" if check.device != "cuda" else None),
]
assert sum(step.budget_s for step in STEPS) <= TOTAL_BUDGET_S


# ---- targets ------------------------------------------------------------------------------------------

def targets(results):
    """[{target, value, pass}] from the steps' results: None where the step gave no result."""
    out = []
    excite = results.get("excite") or {}
    rows = excite.get("rows", [])
    for mode, label in (("forward", "fwd"), ("backward", "bwd")):
        shares = [r["share_of_copy"][mode] for r in rows]
        out.append(_target(f"fused {label} >= 80% of copy bandwidth (worst case)", min(shares) if shares else None,
                           lambda v: v >= 0.8, "{:.0%}"))
    e8_bf16 = [r for r in rows if r["extent"] == 8 and r["dtype"] == "bfloat16"]
    for key, label, bound in (("vs_timm", "eager (timm order)", 2.0), ("vs_compiled", "torch.compile", 1.2)):
        values = [r[key] for r in e8_bf16 if r[key] is not None]
        out.append(_target(f"fused fwd+bwd >= {bound}x {label}, E8 bf16 (worst case)", min(values) if values else None,
                           lambda v, bound=bound: v >= bound, "{:.2f}x"))
    model = {r["model"]: r for r in (results.get("model") or {}).get("rows", [])}
    step = model.get("GE-θ⁻ fused", {}).get("train_vs_r50")
    out.append(_target("GE-θ⁻ fused train step <= 1.05x R50", step, lambda v: v <= 1.05, "{:.3f}x"))
    return out


def _target(name, value, rule, fmt):
    return {"target": name, "value": value, "shown": fmt.format(value) if value is not None else "not measured",
            "pass": rule(value) if value is not None else None}


# ---- the run ------------------------------------------------------------------------------------------

class Check:
    """The run's settings: device, --quick, the output folder, --budget-scale; DETECTRON2_DATASETS for the
    training step."""

    def __init__(self, device, quick, out, budget_scale=1.0, datasets=None):
        self.device, self.quick, self.out, self.datasets = device, quick, os.path.abspath(out), datasets
        self.budget_scale = budget_scale

    def path(self, *names):
        return os.path.join(self.out, *names)


FAILED = ("fail", "error", "timeout")


def run_step(step, check):
    """Run ``step`` in its own process group under its budget; its record for the report."""
    budget = step.budget(check)
    record = {"name": step.name, "title": step.title, "budget_s": budget, "seconds": 0.0, "returncode": None,
              "log": None, "result": None}
    missing = step.missing()
    if missing:
        return {**record, "status": "not run", "reason": f"needs the repository ({missing})"}
    unchecked = step.unchecked(check)
    if unchecked:
        return {**record, "status": "not checked", "reason": unchecked}
    log_path = check.path(f"{step.name}.log")
    start = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(step.command(check), cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": _pythonpath(), **step.env(check)},
                                start_new_session=True)
        try:
            returncode, timed_out = proc.wait(timeout=budget), False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            returncode, timed_out = proc.wait(), True
    seconds = time.monotonic() - start
    with open(log_path) as f:
        log_text = f.read()
    try:  # a step stopped at its budget may have left partial results (the excite benchmark does)
        result, error = step.read(check, log_text), None
    except (OSError, ValueError, KeyError, IndexError, ElementTree.ParseError) as e:
        result, error = None, f"{type(e).__name__}: {e}"
    if timed_out:
        status = "timeout"
    elif result is None:
        status = "error"
    else:
        status = "pass" if returncode == 0 and result["ok"] else "fail"
    record.update(seconds=round(seconds, 1), returncode=returncode, status=status, log=log_path, result=result)
    if timed_out:
        record["reason"] = f"over its budget of {budget:g} s: killed"
    if status in FAILED:
        record["log_tail"] = log_text[-2000:]
        if error:
            record["read_error"] = error
    return record


def _pythonpath():
    return os.pathsep.join(p for p in (PACKAGE_ROOT, os.environ.get("PYTHONPATH")) if p)


def prepare_quick_datasets(check):
    """A tiny generated ge_shapes (4 train, 2 val images of 64 px) under --out for the --quick training step."""
    check.datasets = check.path("datasets")
    root = os.path.join(check.datasets, "ge_shapes")
    for split, num, seed in (("train", 4, 0), ("val", 2, 1)):
        if not os.path.exists(os.path.join(root, f"{split}.json")):
            generate_shapes_split(os.path.join(root, split), os.path.join(root, f"{split}.json"), num, seed,
                                  image_size=64, min_side=12, max_side=30)


def environment(device):
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    info = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "host": platform.node(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "triton": triton_version, "detectron2": detectron2.__version__, "python": platform.python_version()}
    if device == "cuda":
        info["device"] = torch.cuda.get_device_name()
        info["gpus"] = torch.cuda.device_count()
        info["driver"] = _nvidia_smi("driver_version")
    else:
        info["device"], info["driver"] = f"{cpu_name()} ({os.cpu_count()} cores)", None
    return info


def _nvidia_smi(field):
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def run(check, steps=STEPS):
    """Run ``steps``, write report.json and report.md; the report's dict."""
    os.makedirs(check.out, exist_ok=True)
    # a step that fails must not leave an earlier run's results to be read (the generated --quick data is kept)
    for name in ["report.md", "report.json"] + [name for step in steps for name in step.outputs]:
        path = check.path(name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
    if check.quick and any(step.name == "train" and not step.missing() for step in steps):
        prepare_quick_datasets(check)
    report = {"environment": environment(check.device), "quick": check.quick, "steps": []}
    start = time.monotonic()
    remaining = sum(step.budget(check) for step in steps)
    for i, step in enumerate(steps, 1):
        print(f"[{i}/{len(steps)}] {step.title}: budget {step.budget(check):g} s; "
              f"{time.monotonic() - start:.0f} s elapsed, at most {remaining:.0f} s to go", flush=True)
        record = run_step(step, check)
        remaining -= step.budget(check)
        where = f" (log: {record['log']})" if record["log"] else f": {record['reason']}"
        print(f"      {record['status']} in {record['seconds']} s{where}", flush=True)
        report["steps"].append(record)
    report["seconds"] = round(time.monotonic() - start, 1)
    report["targets"] = targets({s["name"]: s["result"] for s in report["steps"]})
    with open(check.path("report.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(check.path("report.md"), "w") as f:
        f.write(markdown(report))
    return report


# ---- the report ---------------------------------------------------------------------------------------

def _fmt(v, spec, unit=""):
    return "-" if v is None else format(v, spec) + unit


def markdown(report):
    env, steps = report["environment"], {s["name"]: s for s in report["steps"]}
    lines = [f"# GPU check: {env['device']}", ""]
    if report["quick"]:
        lines += ["**`--device cpu --quick`: tiny shapes and a narrow network on the CPU. This checks the "
                  "path of the GPU check; none of its numbers is a GPU measurement.**", ""]
    lines += [f"{env['date']} | driver {env['driver'] or '-'} | torch {env['torch']} (CUDA {env['cuda'] or '-'}) | "
              f"triton {env['triton'] or '-'} | detectron2 {env['detectron2']} | Python {env['python']}", "",
              f"## Steps ({report['seconds']} s in all)", "", "| step | status | seconds | budget s |",
              "| --- | --- | --- | --- |"]
    lines += [f"| {s['title']} | {_status(s)} | {s['seconds']} | {s['budget_s']:g} |" for s in report["steps"]]
    lines += ["", "## Targets", "", "| target | measured | pass |", "| --- | --- | --- |"]
    lines += [f"| {t['target']} | {t['shown']} | {'-' if t['pass'] is None else 'yes' if t['pass'] else 'NO'} |"
              for t in report["targets"]]
    for name in SECTIONS:
        if name in steps:
            lines += _section(name, steps[name])
    return "\n".join(lines) + "\n"


def _status(step):
    return f"{step['status']}: {step['reason']}" if step.get("reason") else step["status"]


def _op_tests_section(r):
    lines = [f"{r['passed']} passed, {r['failed']} failed, {r['skipped']} skipped."]
    return lines + [f"- failed: `{name}`" for name in r["failures"]]


def _excite_section(r):
    lines = [f"Copy bandwidth {r['copy_gbps']:.1f} GB/s (device to device, same run); {r['cases_done']} of "
             f"{r['cases']} cases{'' if r['complete'] else ' (stopped at its budget)'}. "
             "ms = fused forward + backward; of copy = the fused operator's minimal traffic over its time, as a "
             "share of the copy's bandwidth; vs X = X's fwd+bwd time / fused's.", "",
             "| map | extent | dtype | layout | fused fwd+bwd ms | fwd of copy | bwd of copy | of copy | vs eager | "
             "vs timm | vs torch.compile |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in r["rows"]:
        share = row["share_of_copy"]
        lines.append(f"| {row['map']} | {row['extent'] or 'global'} | {row['dtype']} | {row['layout']} | "
                     f"{row['ms']['both']:.3f} | {share['forward']:.0%} | {share['backward']:.0%} | "
                     f"{share['both']:.0%} | "
                     f"{_fmt(row['vs_eager'], '.2f', 'x')} | {_fmt(row['vs_timm'], '.2f', 'x')} | "
                     f"{_fmt(row['vs_compiled'], '.2f', 'x')} |")
    return lines


def _model_section(r):
    lines = [f"Faster R-CNN R50-FPN, {r['batch']} images of {r['image']}, AMP {r['amp']}, median of {r['iters']} "
             "steps, the models taking turns.", "",
             "| model | train step ms | vs R50 | inference img/s | vs R50 |", "| --- | --- | --- | --- | --- |"]
    return lines + [f"| {row['model']} | {row['train_step_ms']:.1f} | {row['train_vs_r50']:.3f} | "
                    f"{row['inference_images_per_s']:.2f} | {row['inference_vs_r50']:.3f} |" for row in r["rows"]]


def _train_section(r):
    return ["| config | AMP | timed iterations | iterations/s | box AP | last total loss |",
            "| --- | --- | --- | --- | --- | --- |",
            f"| {os.path.relpath(DEMO_CONFIG, REPO)} | {r['amp']} | {r['timed_iterations']} | "
            f"{r['iterations_per_s']:.2f} | "
            f"{_fmt(r['bbox_AP'], '.2f')} | {_fmt(r['last_total_loss'], '.4f')} |"]


def _error(case):
    return f" ({case['error']})" if case.get("error") else ""


def _grads_section(r):
    lines = [f"2 images of {r['image']}; error = ||grad - grad_float64|| / ||grad_float64|| per parameter, the "
             "reference in float64 on a float64 copy of the model; pass: every parameter's fused error <= "
             "ratio x the reference's error at the same precision + floor (ge_detectron/fused_gradients.py).", "",
             "| model | precision | GE modules | parameters | max error fused | max error reference | ratio, floor | "
             "pass | worst parameters (fused, reference) |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c in r["cases"]:
        if c.get("error"):
            lines.append(f"| {c['name']} | {c['precision']} | - | - | - | - | - | NO{_error(c)} | - |")
            continue
        worst = "; ".join(f"`{name}` {f:.1e}, {ref:.1e}" for name, f, ref in c["worst"])
        lines.append(f"| {c['name']} | {c['precision']} | {c['modules']} | {c['parameters']} | "
                     f"{c['max_error_fused']:.1e} | {c['max_error_reference']:.1e} | "
                     f"{c['ratio']:g}, {c['floor']:.1e} | {'yes' if c['ok'] else 'NO'} | {worst} |")
        if c["missing"]:
            lines.append(f"| (gradients in one run only: {', '.join(c['missing'])}) | | | | | | | | |")
    return lines


def _compile_section(r):
    lines = [f"{r['module']}, backend {r['backend']}, sizes {', '.join(r['sizes'])} in turn; pass: at most "
             f"{r['max_graphs']} graphs and every output within {r['rtol']:g} (relative) of eager.", "",
             "| dynamic sizes | graphs | max error | pass |", "| --- | --- | --- | --- |"]
    return lines + [f"| {c['name']} | {c.get('graphs', '-')} | {_fmt(c.get('max_error'), '.1e')} | "
                    f"{'yes' if c['ok'] else 'NO'}{_error(c)} |" for c in r["runs"]]


def _devices_section(r):
    return [f"{c['name']}: {'pass' if c['ok'] else 'FAIL'}{_error(c)}; max gradient error fused "
            f"{_fmt(c.get('max_error_fused'), '.1e')}, reference {_fmt(c.get('max_error_reference'), '.1e')}; "
            f"current device after it: cuda:{c['current_device']}." for c in r["cases"]]


def _cuda_graphs_section(r):
    if r.get("error"):
        return [f"{r['name']}: FAIL ({r['error']})."]
    return [f"{r['name']}: output and {r['tensors'] - 1} gradients of the replay against eager: max relative "
            f"error {r['max_error']:.1e} (tolerance {r['rtol']:g}): {'pass' if r['ok'] else 'FAIL'}."]


# Per step: its report heading, the lines under it whatever the result, and the lines of its result.
SECTIONS = {"op_tests": ("Op tests", [], _op_tests_section),
            "excite": ("Excite operator", [], _excite_section),
            "model": ("Model training step and inference", [], _model_section),
            "train": ("Demo training", [], _train_section),
            "grads": ("Fused against reference gradients", [], _grads_section),
            "compile": ("torch.compile over four input sizes", [], _compile_section),
            "devices": ("A second GPU", [], _devices_section),
            "cuda_graphs": ("CUDA graph capture", [], _cuda_graphs_section)}


def _section(name, step):
    heading, preface, body = SECTIONS[name]
    lines = ["", f"## {heading}", "", *preface]
    if step["status"] in ("not run", "not checked"):
        return lines + [f"{step['status'].capitalize()}: {step['reason']}."]
    if step["result"] is None:
        return lines + [f"No result ({_status(step)}): see {step['log']}."]
    return lines + body(step["result"])


def summary(report):
    """The lines printed at the end: each step's status and each target."""
    quick = " (--quick: not GPU numbers)" if report["quick"] else ""
    lines = [f"GPU check on {report['environment']['device']}{quick}: "
             f"{report['seconds']} s"]
    lines += [f"  {s['title']:<32}{s['status']:<12}{s['seconds']:>7.1f} s of {s['budget_s']:g}"
              for s in report["steps"]]
    lines += [f"  {t['target']:<60}{t['shown']:>14}  {'-' if t['pass'] is None else 'pass' if t['pass'] else 'FAIL'}"
              for t in report["targets"]]
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--quick", action="store_true", help="tiny shapes, 1-2 iterations (the path, not the numbers)")
    p.add_argument("--out", default="output/gpu_check", help="folder of report.md, report.json and the logs")
    p.add_argument("--only", nargs="+", choices=[s.name for s in STEPS], metavar="STEP",
                   help=f"run only these steps (of {', '.join(s.name for s in STEPS)}), e.g. to rerun one")
    p.add_argument("--budget-scale", type=float, default=1.0, metavar="F",
                   help="multiply every step's time budget by F (e.g. 2 on a GPU slower than an H100)")
    p.add_argument("--step", choices=sorted(OWN_STEPS), help=argparse.SUPPRESS)  # a step's own process
    args = p.parse_args(argv)
    if args.device == "cpu" and not args.quick:
        p.error("--device cpu runs the GPU check's path on the CPU: add --quick (the full sizes are for a GPU)")
    if not args.budget_scale > 0:
        p.error(f"--budget-scale {args.budget_scale}: give a positive factor such as 2")
    return args


def main(argv=None):
    args = parse_args(argv)
    check = Check(args.device, args.quick, args.out, args.budget_scale)
    if args.step:
        run_own_step(check, args.step)
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check.py: no CUDA GPU here: nothing to check (`--device cpu --quick` runs the path on the CPU)")
        return 0
    try:
        report = run(check, [s for s in STEPS if args.only is None or s.name in args.only])
    except OSError as e:
        print(f"gpu_check.py: error: cannot write the report under --out {args.out}: {e}. Give a writable folder.")
        return 2
    print(summary(report))
    print(f"wrote {check.path('report.md')} and {check.path('report.json')}")
    return 1 if any(s["status"] in FAILED for s in report["steps"]) else 0


if __name__ == "__main__":
    sys.exit(main())
