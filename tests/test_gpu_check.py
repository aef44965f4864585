"""tools/gpu_check.py (``make gpu-check``) by what it does, run as a user runs it: without a GPU it says so;
a step over its budget is killed with its children and reported so; a wrong backward of the fused operator
fails the check; ``--only`` runs only the named steps; ``--device cpu --quick`` writes the whole report.

The failures are injected into the check's processes by a ``sitecustomize`` module on PYTHONPATH (Python
imports it at the start of every process), written by the test: the tool has no switch for them."""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(REPO, "tools", "gpu_check.py")
STEP_NAMES = ["op_tests", "excite", "model", "train", "grads", "compile", "devices", "cuda_graphs"]

pytestmark = pytest.mark.slow  # every test runs the tool in a subprocess


def gpu_check(args, tmp_path, hook=None, timeout=600):
    """Run the tool with ``args``; with ``hook`` (Python source), that source as the sitecustomize of every
    process the check starts (the step processes inherit PYTHONPATH)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if hook is not None:
        hooks = tmp_path / "hooks"
        hooks.mkdir()
        (hooks / "sitecustomize.py").write_text(textwrap.dedent(hook))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(hooks), REPO, env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, TOOL, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=env)


def report_of(out):
    return json.loads((out / "report.json").read_text()), (out / "report.md").read_text()


def test_without_a_gpu_one_line_and_exit_0_and_the_cpu_needs_quick(tmp_path):
    proc = gpu_check(["--out", str(tmp_path / "out")], tmp_path)
    assert proc.returncode == 0 and proc.stdout.splitlines() == [
        "gpu_check.py: no CUDA GPU here: nothing to check (`--device cpu --quick` runs the path on the CPU)"]
    assert not (tmp_path / "out").exists()
    proc = gpu_check(["--device", "cpu", "--out", str(tmp_path / "out")], tmp_path)
    assert proc.returncode == 2 and "add --quick" in proc.stderr and not (tmp_path / "out").exists()


def test_without_the_repository_the_steps_that_need_it_are_not_run(tmp_path):
    """tools/gpu_check.py alone, with the package importable (as installed from a wheel): no tests/, configs/."""
    tools = tmp_path / "elsewhere" / "tools"
    tools.mkdir(parents=True)
    shutil.copy(TOOL, tools)
    out = tmp_path / "out"
    pythonpath = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, str(tools / "gpu_check.py"), "--device", "cpu", "--quick",
                           "--only", "op_tests", "train", "devices", "--out", str(out)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": pythonpath})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report, md = report_of(out)
    assert [(s["name"], s["status"], s.get("reason")) for s in report["steps"]] == [
        ("op_tests", "not run", "needs the repository (tests/test_excite_op.py)"),
        ("train", "not run", "needs the repository (tools/train_net.py)"),
        ("devices", "not checked", "the CPU has no second device")]
    assert "Not run: needs the repository (tests/test_excite_op.py)." in md and sorted(os.listdir(out)) == [
        "report.json", "report.md"]


# In the step's own process (the check runs it as `gpu_check.py --step NAME`): start a grandchild that would
# outlive a kill of the step's process alone, write its pid, and hang.
HANG = """
    import subprocess, sys, time
    if "--step" in sys.argv:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(200)"])
        open({pid_file!r}, "w").write(str(child.pid))
        time.sleep(200)
"""


def test_a_step_over_its_budget_is_killed_with_its_children_and_reported(tmp_path):
    out, pid_file = tmp_path / "out", tmp_path / "child.pid"
    # grads' --quick budget is 120 s: 12 s with --budget-scale 0.1
    proc = gpu_check(["--device", "cpu", "--quick", "--only", "grads", "--budget-scale", "0.1", "--out", str(out)],
                     tmp_path, HANG.format(pid_file=str(pid_file)), timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report, md = report_of(out)
    [step] = report["steps"]
    assert step["name"] == "grads" and step["status"] == "timeout" and step["result"] is None
    assert step["budget_s"] == pytest.approx(12.0) and 12.0 <= step["seconds"] < 100
    assert step["reason"] == "over its budget of 12 s: killed"
    assert "| fused vs reference gradients | timeout: over its budget of 12 s: killed |" in md
    assert killed(int(pid_file.read_text()))


def killed(pid):
    """Whether process ``pid`` is gone or a zombie (killed, not yet reaped by init)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


# In the steps' processes, the C++ kernels' wrappers: the gate's gradient doubled (what a wrong backward kernel
# would return), and bfloat16 inputs refused (what a dtype check of the operator raising under autocast does).
# The operator's self-check (ops/excite_self_check.py) would catch both before the first fused call; it is
# passed here so that what fails is the gradient comparison itself.
WRONG_KERNELS = """
    import sys
    if "--step" in sys.argv:
        import torch
        import ge_detectron.ops as ops
        import ge_detectron.ops.excite_cpp as cpp
        ops.kernels_verified = lambda x, strict=False: True
        forward, backward = cpp.forward, cpp.backward
        def bfloat16_refused(x, *args):
            if x.dtype == torch.bfloat16:
                raise RuntimeError("ge_detectron::excite: bfloat16 refused by the test's hook\\nsecond line")
            return forward(x, *args)
        def doubled_grad_g(*args):
            grad_x, grad_g, grad_shortcut = backward(*args)
            return grad_x, 2 * grad_g, grad_shortcut
        cpp.forward, cpp.backward = bfloat16_refused, doubled_grad_g
"""


def test_a_wrong_backward_or_a_raising_operator_fails_the_check_and_only_the_named_step_runs(tmp_path):
    out = tmp_path / "out"
    proc = gpu_check(["--device", "cpu", "--quick", "--only", "grads", "--out", str(out)], tmp_path, WRONG_KERNELS)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report, md = report_of(out)
    assert [s["name"] for s in report["steps"]] == ["grads"]
    assert sorted(os.listdir(out)) == ["grads.json", "grads.log", "report.json", "report.md"]  # no other step ran
    step = report["steps"][0]
    assert step["status"] == "fail" and step["returncode"] == 0  # the step ran to its end and reported
    float32, *amp = step["result"]["cases"]
    assert float32["precision"] == "float32" and not float32["ok"] and "error" not in float32
    name, fused, reference = float32["worst"][0]  # the doubled gate gradient reaches the GE gathers' first
    assert ".ge." in name and fused > 0.1 > 1e3 * reference
    error = "RuntimeError: ge_detectron::excite: bfloat16 refused by the test's hook"
    assert [(c["precision"], c["ok"], c["error"]) for c in amp] == [("AMP (bfloat16)", False, error)] * 2
    assert "| fused vs reference gradients | fail |" in md and md.count("| NO |") == 1
    assert md.count(f"| NO ({error}) |") == 2
    assert "fused vs reference gradients    fail" in proc.stdout


def recompute_targets(out):
    """The targets' values from the benchmarks' own JSON, as docs/benchmarks.md defines them."""
    excite = json.loads((out / "excite.json").read_text())["results"]
    fused = [r for r in excite if r["impl"] == "fused"]
    timm = {(r["shape"], r["extent"], r["dtype"], r["layout"]): r["ms"]["both"] for r in excite
            if r["impl"] == "eager-timm"}
    e8_bf16 = [timm[(r["shape"], 8, "bfloat16", r["layout"])] / r["ms"]["both"] for r in fused
               if r["extent"] == 8 and r["dtype"] == "bfloat16"]
    model = {r["model"]: r for r in json.loads((out / "model.json").read_text())["results"]}
    return [min(r["share_of_copy"]["forward"] for r in fused), min(r["share_of_copy"]["backward"] for r in fused),
            min(e8_bf16), None, model["GE-θ⁻ fused"]["train_step_ms"] / model["R50"]["train_step_ms"]]


def test_cpu_quick_run_writes_the_whole_report_and_only_reruns_named_steps(tmp_path):
    out = tmp_path / "gpu_check"
    proc = gpu_check(["--device", "cpu", "--quick", "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report, md = report_of(out)
    steps = {s["name"]: s for s in report["steps"]}
    assert list(steps) == STEP_NAMES
    for name in STEP_NAMES[:6]:
        assert steps[name]["status"] == "pass" and steps[name]["seconds"] <= steps[name]["budget_s"], steps[name]
    assert (steps["devices"]["status"], steps["devices"]["reason"]) == ("not checked", "the CPU has no second device")
    assert (steps["cuda_graphs"]["status"], steps["cuda_graphs"]["reason"]) == ("not checked", "CUDA graphs need a GPU")
    assert set(report["environment"]) >= {"date", "device", "driver", "torch", "triton", "detectron2"}

    tests = steps["op_tests"]["result"]
    assert tests["passed"] >= 2 and tests["failed"] == 0 and tests["failures"] == []
    excite = steps["excite"]["result"]
    assert excite["complete"] and excite["cases"] == excite["cases_done"] == 4 * 2 * 2 * 2  # stages, E, dtypes, layouts
    model = steps["model"]["result"]
    assert [r["model"] for r in model["rows"]] == ["R50", "GE-θ⁻ reference", "GE-θ⁻ fused", "GE-θ reference",
                                                  "GE-θ fused"]
    train = steps["train"]["result"]
    assert train["timed_iterations"] >= 1 and train["iterations_per_s"] > 0 and 0 <= train["bbox_AP"] <= 100

    grads = steps["grads"]["result"]
    assert [(c["name"], c["precision"]) for c in grads["cases"]] == [
        ("GE-θ E8, FrozenBN", "float32"), ("GE-θ E8, FrozenBN", "AMP (bfloat16)"),
        ("GE-θ⁺ E8, GN", "AMP (bfloat16)")]
    for case in grads["cases"]:
        assert case["ok"] and case["modules"] == 13 and case["missing"] == []  # GE in res3..res5's 4 + 6 + 3 blocks
        assert case["parameters"] >= 97 and case["max_error_fused"] > 0  # every trainable parameter, computed
    assert grads["cases"][0]["max_error_fused"] < 1e-4  # float32: far from the AMP cases' errors
    compiled = steps["compile"]["result"]
    assert [r["name"] for r in compiled["runs"]] == ["dynamic=True", "mark_dynamic"] and len(compiled["sizes"]) == 4
    assert all(r["ok"] and 1 <= r["graphs"] <= 2 and r["max_error"] <= 1e-3 for r in compiled["runs"])

    targets = report["targets"]
    for target, expected, bound in zip(targets, recompute_targets(out), (0.8, 0.8, 2.0, 1.2, 1.05)):
        if expected is None:  # the CPU run does not compile the reference
            assert (target["value"], target["pass"]) == (None, None)
            continue
        assert target["value"] == pytest.approx(expected)
        assert target["pass"] == (expected <= bound if "<=" in target["target"] else expected >= bound)

    for heading in ("## Steps", "## Targets", "## Op tests", "## Excite operator",
                    "## Model training step and inference", "## Demo training", "## Fused against reference gradients",
                    "## torch.compile over four input sizes", "## A second GPU", "## CUDA graph capture"):
        assert heading in md
    assert "none of its numbers is a GPU measurement" in md and md.count("| res") == 32
    assert "Not checked: the CPU has no second device." in md and "Not checked: CUDA graphs need a GPU." in md
    assert "GPU check on" in proc.stdout and f"wrote {out / 'report.md'}" in proc.stdout

    # --only reruns the named steps: the report holds them alone, the other steps' files stay as they were
    kept = {name: (out / name).stat().st_mtime_ns for name in ("excite.json", "model.json", "grads.json")}
    proc = gpu_check(["--device", "cpu", "--quick", "--only", "compile", "devices", "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report, md = report_of(out)
    assert [(s["name"], s["status"]) for s in report["steps"]] == [("compile", "pass"), ("devices", "not checked")]
    assert {name: (out / name).stat().st_mtime_ns for name in kept} == kept and "## Excite operator" not in md
