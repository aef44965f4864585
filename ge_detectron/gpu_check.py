"""The GPU check of tools/gpu_check.py (``make gpu-check``): everything the GPU must show, in one run of at
most 8 minutes on one H100/H200.

Each step runs in its own process under a time budget: a step over its budget is killed (its whole
process group) and the next one starts, so that a slow step cannot starve the rest. The steps:

    op_tests   the CUDA cases of tests/test_excite_op.py and tests/test_excite_triton.py (pytest)
    excite     tools/benchmark_excite.py on R50-FPN res2..res5 at batch 16 and 800x1216: E8 and global,
               bf16 and f32, NCHW and channels_last; eager (timm order), torch.compile, fused
    model      tools/benchmark_model.py with AMP: R50, GE-theta-minus and GE-theta E8, reference and fused
    train      tools/train_net.py on the demo config with AMP: iterations/s and AP
    losses     the demo config trained a few iterations with the fused operator and with the reference,
               the same seed: the losses agree within a tolerance of bf16's precision

The report (``report.md``, ``report.json`` under ``--out``) gives the machine and versions, each step's
status and time against its budget, the tables of docs/benchmarks.md's GPU section and pass/fail
against the targets (TARGETS). ``--device cpu --quick`` runs every step the same way on the CPU with
tiny shapes and a narrow network (tests/test_gpu_check.py): it checks the path, not the numbers.
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
import xml.etree.ElementTree as ElementTree

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CONFIG = os.path.join(REPO, "configs", "demo", "faster_rcnn_ge_theta_e8_r50_fpn_shapes.yaml")
TOTAL_BUDGET_S = 8 * 60

# The tiny setting of --quick: a narrow R50 (1/16 of the widths) on 64-pixel images of 4 generated shapes.
NARROW_R50 = ["MODEL.RESNETS.STEM_OUT_CHANNELS", "16", "MODEL.RESNETS.WIDTH_PER_GROUP", "16",
              "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.FPN.OUT_CHANNELS", "32",
              "MODEL.ROI_BOX_HEAD.FC_DIM", "64"]
QUICK_TRAINING = NARROW_R50 + [
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64",
    "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0", "MODEL.RPN.POST_NMS_TOPK_TEST", "50",
    "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "()", "SOLVER.MAX_ITER", "2", "MODEL.RESNETS.NORM", "BN",
    "MODEL.FPN.NORM", "", "MODEL.GE.NORM", "FrozenBN"]
LOSS_ITERATIONS = {"cuda": 5, "cpu": 2}
# Relative tolerance on the total loss, fused against reference: under AMP (float16 autocast) a few
# units of bf16's precision (2^-8); in float32 (the CPU) 1e-4.
LOSS_RTOL = {"cuda": 2e-2, "cpu": 1e-4}


def _python(*args):
    return [sys.executable, *args]


class Step:
    """One step: ``command(check)`` is its argv, ``read(check, log)`` its results (a dict) from the files
    it wrote (``outputs``, under --out) and its log; ``budget_s`` its time budget on the GPU,
    ``quick_budget_s`` with --quick; ``env(check)`` what it adds to the environment."""

    def __init__(self, name, title, budget_s, quick_budget_s, command, read, outputs, env=None):
        self.name, self.title, self.budget_s, self.quick_budget_s = name, title, budget_s, quick_budget_s
        self.command, self.read, self.outputs, self.env = command, read, outputs, env or (lambda check: {})

    def budget(self, check):
        return self.quick_budget_s if check.quick else self.budget_s


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
    return _python("tools/benchmark_excite.py", "--device", check.device, "--no-c4", "--extents", "8", "0",
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
    return _python("tools/benchmark_model.py", "--device", check.device, *amp, *setting,
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
    return _python("tools/train_net.py", "--config-file", DEMO_CONFIG, *train_opts(check),
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


# ---- losses -------------------------------------------------------------------------------------------

def losses_command(check):
    return _python(os.path.join(REPO, "tools", "gpu_check.py"), "--step", "losses", "--device", check.device,
                   "--out", check.out, *(["--quick"] if check.quick else []))


def losses_read(check, log):
    with open(check.path("losses.json")) as f:
        return json.load(f)


def fused_and_reference_losses(check):
    """Train the demo config LOSS_ITERATIONS iterations with MODEL.GE.FUSED on and off from the same seed
    and write their total losses per iteration and whether they agree within LOSS_RTOL to losses.json."""
    from detectron2.utils.env import seed_all_rng

    from ge_detectron.config import get_ge_cfg
    from ge_detectron.detection import DetectionTrainer
    from ge_detectron.layers import GatherExcite, uses_fused_op

    iterations = LOSS_ITERATIONS[check.device]
    losses, fused_modules = {}, {}
    for fused in ("on", "off"):
        cfg = get_ge_cfg(DEMO_CONFIG, train_opts(check) + [
            "MODEL.GE.FUSED", fused, "SOLVER.MAX_ITER", str(iterations), "DATASETS.TEST", "()", "SEED", "3",
            "INPUT.RANDOM_FLIP", "none", "OUTPUT_DIR", check.path(f"losses_fused_{fused}")])
        seed_all_rng(cfg.SEED)
        trainer = DetectionTrainer(cfg)
        fused_modules[fused] = sum(uses_fused_op(m.fused, check.device) for m in trainer.model.modules()
                                   if isinstance(m, GatherExcite))
        trainer.resume_or_load(resume=False)
        trainer.train()
        losses[fused] = [v for v, _ in trainer.storage.history("total_loss").values()]
    rtol = LOSS_RTOL[check.device]
    diffs = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(losses["on"], losses["off"])]
    result = {"iterations": iterations, "fused": losses["on"], "reference": losses["off"], "relative_diff": diffs,
              "rtol": rtol, "fused_modules": fused_modules,  # GE modules on the fused operator, per run
              "ok": len(diffs) == iterations and max(diffs) <= rtol and fused_modules["off"] == 0 < fused_modules["on"]}
    with open(check.path("losses.json"), "w") as f:
        json.dump(result, f, indent=1)


STEPS = [
    Step("op_tests", "op tests", 75, 60, op_tests_command, op_tests_read, ["op_tests.xml"], op_tests_env),
    Step("excite", "excite benchmark", 165, 60, excite_command, excite_read, ["excite.json"]),
    Step("model", "model benchmark", 60, 90, model_command, model_read, ["model.json"]),
    # the demo's 200 iterations, with the generation of its 700 images on a fresh machine and the evaluation
    Step("train", "demo training", 105, 90, train_command, train_read, ["train"], train_env),
    Step("losses", "fused vs reference losses", 60, 90, losses_command, losses_read,
         ["losses.json", "losses_fused_on", "losses_fused_off"], train_env),
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
    """The run's settings: device, --quick, the output folder; DETECTRON2_DATASETS for the training steps."""

    def __init__(self, device, quick, out, datasets=None):
        self.device, self.quick, self.out, self.datasets = device, quick, os.path.abspath(out), datasets

    def path(self, *names):
        return os.path.join(self.out, *names)


def run_step(step, check):
    """Run ``step`` in its own process group under its budget; its record for the report."""
    budget = step.budget(check)
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
    record = {"name": step.name, "title": step.title, "budget_s": budget, "seconds": round(seconds, 1),
              "returncode": returncode, "status": status, "log": log_path, "result": result}
    if status != "pass":
        record["log_tail"] = log_text[-2000:]
        if error:
            record["read_error"] = error
    return record


def _pythonpath():
    return os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)


def prepare_quick_datasets(check):
    """A tiny generated ge_shapes (4 train, 2 val images of 64 px) under --out for the --quick training steps."""
    from ge_detectron.data import generate_shapes_split

    check.datasets = check.path("datasets")
    root = os.path.join(check.datasets, "ge_shapes")
    for split, num, seed in (("train", 4, 0), ("val", 2, 1)):
        if not os.path.exists(os.path.join(root, f"{split}.json")):
            generate_shapes_split(os.path.join(root, split), os.path.join(root, f"{split}.json"), num, seed,
                                  image_size=64, min_side=12, max_side=30)


def environment(device):
    import detectron2

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
        info["driver"] = _nvidia_smi("driver_version")
    else:
        from ge_detectron.benchmark import cpu_name
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
    if check.quick:
        prepare_quick_datasets(check)
    report = {"environment": environment(check.device), "quick": check.quick, "steps": []}
    start = time.monotonic()
    remaining = sum(step.budget(check) for step in steps)
    for i, step in enumerate(steps, 1):
        print(f"[{i}/{len(steps)}] {step.title}: budget {step.budget(check)} s; "
              f"{time.monotonic() - start:.0f} s elapsed, at most {remaining:.0f} s to go", flush=True)
        record = run_step(step, check)
        remaining -= step.budget(check)
        print(f"      {record['status']} in {record['seconds']} s (log: {record['log']})", flush=True)
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
    lines += [f"| {s['title']} | {s['status']} | {s['seconds']} | {s['budget_s']} |" for s in report["steps"]]
    lines += ["", "## Targets", "", "| target | measured | pass |", "| --- | --- | --- |"]
    lines += [f"| {t['target']} | {t['shown']} | {'-' if t['pass'] is None else 'yes' if t['pass'] else 'NO'} |"
              for t in report["targets"]]
    for name in SECTIONS:
        if name in steps:
            lines += _section(name, steps[name])
    return "\n".join(lines) + "\n"


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


def _losses_section(r):
    lines = [f"GE modules on the fused operator: {r['fused_modules']['on']} in the fused run, "
             f"{r['fused_modules']['off']} in the reference run.", "",
             f"| iteration | fused | reference | relative difference (tolerance {r['rtol']:g}) |",
             "| --- | --- | --- | --- |"]
    return lines + [f"| {i} | {a:.6f} | {b:.6f} | {d:.2e} |"
                    for i, (a, b, d) in enumerate(zip(r["fused"], r["reference"], r["relative_diff"]))]


# Per step: its report heading, the lines under it whatever the result, and the lines of its result.
SECTIONS = {"op_tests": ("Op tests", [], _op_tests_section),
            "excite": ("Excite operator", [], _excite_section),
            "model": ("Model training step and inference", [], _model_section),
            "train": ("Demo training", [], _train_section),
            "losses": ("Fused against reference training",
                       ["The demo config from the same seed, total loss per iteration.", ""], _losses_section)}


def _section(name, step):
    heading, preface, body = SECTIONS[name]
    lines = ["", f"## {heading}", "", *preface]
    if step["result"] is None:
        return lines + [f"No result ({step['status']}): see {step['log']}."]
    return lines + body(step["result"])


def summary(report):
    """The lines printed at the end: each step's status and each target."""
    quick = " (--quick: not GPU numbers)" if report["quick"] else ""
    lines = [f"GPU check on {report['environment']['device']}{quick}: "
             f"{report['seconds']} s"]
    lines += [f"  {s['title']:<28}{s['status']:<8}{s['seconds']:>7.1f} s of {s['budget_s']}" for s in report["steps"]]
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
    p.add_argument("--step", choices=["losses"], help=argparse.SUPPRESS)  # a step's own process
    args = p.parse_args(argv)
    if args.device == "cpu" and not args.quick:
        p.error("--device cpu runs the GPU check's path on the CPU: add --quick (the full sizes are for a GPU)")
    return args


def main(argv=None):
    args = parse_args(argv)
    check = Check(args.device, args.quick, args.out)
    if args.step == "losses":
        fused_and_reference_losses(check)
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
    return 0 if all(s["status"] == "pass" for s in report["steps"]) else 1
