"""tools/gpu_check.py: the step budgets (a step over its budget is killed with its children, the next
one runs), the targets on hand-made results, the one line without a GPU, and the whole CPU quick run
with the report's structure."""
import json
import os
import subprocess
import sys
import time

import pytest
import torch

from ge_detectron import gpu_check
from ge_detectron.gpu_check import STEPS, TOTAL_BUDGET_S, Check, Step, run_step, targets

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEP_NAMES = ["op_tests", "excite", "model", "train", "losses"]


def test_the_gpu_budgets_fit_in_eight_minutes():
    assert [s.name for s in STEPS] == STEP_NAMES
    assert sum(s.budget_s for s in STEPS) <= TOTAL_BUDGET_S == 480


def test_a_step_over_its_budget_is_killed_with_its_children(tmp_path):
    pid_file = tmp_path / "child.pid"
    # the step starts a grandchild that would outlive a kill of the step's own process alone
    script = ("import subprocess, sys, time; "
              f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
              f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    step = Step("slow", "slow", 1, 1, lambda check: [sys.executable, "-c", script],
                lambda check, log: {"ok": True}, [])
    start = time.monotonic()
    record = run_step(step, Check("cpu", True, str(tmp_path)))
    assert record["status"] == "timeout" and 1 <= record["seconds"] < 10 and time.monotonic() - start < 10
    child = int(pid_file.read_text())
    for _ in range(50):  # the kill is delivered; the grandchild (reparented) is reaped by init
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        with open(f"/proc/{child}/stat") as f:
            if f.read().split(")")[1].split()[0] == "Z":
                break
        time.sleep(0.1)
    else:
        pytest.fail(f"the step's child {child} outlived the step's budget")


def test_a_failing_step_is_reported_and_its_results_kept(tmp_path):
    step = Step("bad", "bad", 30, 30, lambda check: [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"],
                lambda check, log: {"ok": "boom" in log}, [])
    record = run_step(step, Check("cpu", True, str(tmp_path)))
    assert (record["status"], record["returncode"]) == ("fail", 3) and "boom" in record["log_tail"]
    unreadable = Step("none", "none", 30, 30, lambda check: [sys.executable, "-c", "pass"],
                      lambda check, log: json.load(open(check.path("missing.json"))), ["missing.json"])
    record = run_step(unreadable, Check("cpu", True, str(tmp_path)))
    assert record["status"] == "error" and "FileNotFoundError" in record["read_error"]


def test_a_run_reads_no_earlier_results_and_reports_only_its_steps(tmp_path):
    (tmp_path / "excite.json").write_text('{"ok": true}')  # an earlier run's
    step = Step("excite", "excite", 30, 30, lambda check: [sys.executable, "-c", "pass"],
                lambda check, log: json.load(open(check.path("excite.json"))), ["excite.json"])
    report = gpu_check.run(Check("cpu", False, str(tmp_path)), [step])
    assert [s["status"] for s in report["steps"]] == ["error"]
    md = (tmp_path / "report.md").read_text()
    assert "## Excite operator" in md and "No result (error)" in md and "## Op tests" not in md
    assert json.loads((tmp_path / "report.json").read_text())["steps"][0]["name"] == "excite"


def excite_row(extent, dtype, fwd_share, bwd_share, vs_timm, vs_compiled):
    return {"map": "res2 b16", "extent": extent, "dtype": dtype, "layout": "nchw", "ms": {"both": 1.0},
            "share_of_copy": {"forward": fwd_share, "backward": bwd_share, "both": 0.5},
            "vs_eager": 1.5, "vs_timm": vs_timm, "vs_compiled": vs_compiled}


def test_targets_on_hand_made_results():
    results = {"excite": {"rows": [excite_row(8, "bfloat16", 0.91, 0.83, 2.4, 1.25),
                                   excite_row(8, "bfloat16", 0.85, 0.79, 2.1, 1.19),
                                   excite_row(0, "float32", 0.95, 0.9, 1.0, 0.5)]},  # not E8 bf16: no speed-up target
               "model": {"rows": [{"model": "R50", "train_vs_r50": 1.0},
                                  {"model": "GE-θ⁻ fused", "train_vs_r50": 1.04}]}}
    got = {t["target"]: (t["value"], t["pass"]) for t in targets(results)}
    assert list(got.values()) == [(0.85, True), (0.79, False), (2.1, True), (1.19, False), (1.04, True)]
    assert all(t["pass"] is None and t["shown"] == "not measured" for t in targets({"excite": None, "model": None}))


def test_without_a_gpu_one_line_and_exit_0(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 1 and "no CUDA GPU" in out and not (tmp_path / "out").exists()


def test_the_cpu_runs_only_the_tiny_path(capsys):
    with pytest.raises(SystemExit) as e:
        gpu_check.parse_args(["--device", "cpu"])
    assert e.value.code == 2 and "add --quick" in capsys.readouterr().err


@pytest.mark.slow
def test_cpu_quick_run_writes_the_report_within_the_budgets(tmp_path):
    out = tmp_path / "gpu_check"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "gpu_check.py"), "--device", "cpu", "--quick",
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    steps = {s["name"]: s for s in report["steps"]}
    assert list(steps) == STEP_NAMES
    for s in steps.values():
        assert s["status"] == "pass" and s["seconds"] <= s["budget_s"] == next(
            st.quick_budget_s for st in STEPS if st.name == s["name"]), s
    assert set(report["environment"]) >= {"date", "device", "driver", "torch", "triton", "detectron2"}

    tests = steps["op_tests"]["result"]
    assert tests["passed"] >= 2 and tests["failed"] == 0 and tests["failures"] == []
    excite = steps["excite"]["result"]
    assert excite["complete"] and excite["cases"] == excite["cases_done"] == 4 * 2 * 2 * 2  # stages, E, dtypes, layouts
    raw = json.loads((out / "excite.json").read_text())["results"]
    for row in excite["rows"]:  # the report's speed-ups are the benchmark's times
        case = {r["impl"]: r["ms"]["both"] for r in raw if (r["shape"], r["extent"], r["dtype"], r["layout"]) ==
                (row["map"], row["extent"], row["dtype"], row["layout"])}
        assert row["vs_timm"] == pytest.approx(case["eager-timm"] / case["fused"]) and row["vs_compiled"] is None
    model = steps["model"]["result"]
    assert [r["model"] for r in model["rows"]] == ["R50", "GE-θ⁻ reference", "GE-θ⁻ fused", "GE-θ reference",
                                                  "GE-θ fused"]
    assert model["rows"][0]["train_vs_r50"] == 1.0 and {b["part"] for b in model["breakdown_ms"]} == {
        "block", "ge", "gather", "convs", "tail"}
    train = steps["train"]["result"]
    assert train["timed_iterations"] >= 1 and train["iterations_per_s"] > 0 and 0 <= train["bbox_AP"] <= 100
    losses = steps["losses"]["result"]
    assert len(losses["fused"]) == len(losses["reference"]) == 2
    assert losses["fused_modules"] == {"on": 16, "off": 0}  # GE in the 16 blocks of res2..res5
    assert all(abs(a - b) <= 1e-4 * abs(b) for a, b in zip(losses["fused"], losses["reference"]))
    assert len(report["targets"]) == 5

    md = (out / "report.md").read_text()
    for heading in ("## Steps", "## Targets", "## Op tests", "## Excite operator",
                    "## Model training step and inference", "## Demo training"):
        assert heading in md
    assert "none of its numbers is a GPU measurement" in md
    assert md.count("| res") == 32 and "GE-θ fused |" in md
    assert "GPU check on" in proc.stdout and f"wrote {out / 'report.md'}" in proc.stdout


def test_the_cuda_run_asks_for_the_shapes_and_settings_of_the_issue(tmp_path):
    check = Check("cuda", False, str(tmp_path))
    commands = {s.name: s.command(check) for s in STEPS}
    excite = " ".join(commands["excite"])
    for part in ("--device cuda", "--no-c4", "--extents 8 0", "--dtypes bfloat16 float32",
                 "--layouts nchw channels_last", "--batches 16", "--image 800x1216"):
        assert part in excite, part
    assert "--no-compile" not in excite  # benchmark_excite compiles the reference on CUDA by default
    assert "--amp" in commands["model"] and "--device" in commands["model"]
    assert commands["op_tests"][-3:] == ["tests/test_excite_triton.py", "-k", "cuda or test_excite_triton"]
    assert STEPS[0].env(check) == {"GE_REQUIRE_TRITON": "1", "TRITON_INTERPRET": "0"}
    train = commands["train"]
    assert train[train.index("SOLVER.AMP.ENABLED") + 1] == "True" and train[train.index("MODEL.DEVICE") + 1] == "cuda"
    assert "SOLVER.MAX_ITER" not in train  # the demo's own 200 iterations


def test_report_of_a_cuda_run(tmp_path):
    rows = [excite_row(8, "bfloat16", 0.9, 0.85, 2.5, 1.3)]
    steps = [{"name": "op_tests", "title": "op tests", "status": "pass", "seconds": 40.0, "budget_s": 75, "log": "x",
              "result": {"passed": 90, "failed": 1, "skipped": 0, "failures": ["tests/test_excite_op.py::test_x"]}},
             {"name": "excite", "title": "excite", "status": "timeout", "seconds": 165.0, "budget_s": 165, "log": "x",
              "result": {"copy_gbps": 2900.0, "cases": 32, "cases_done": 1, "complete": False, "rows": rows}},
             {"name": "model", "title": "model", "status": "error", "seconds": 3.0, "budget_s": 60, "log": "m.log",
              "result": None},
             {"name": "train", "title": "train", "status": "pass", "seconds": 50.0, "budget_s": 105, "log": "x",
              "result": {"timed_iterations": 197, "iterations_per_s": 12.5, "bbox_AP": 57.25, "last_total_loss": 0.5,
                         "amp": True}},
             {"name": "losses", "title": "losses", "status": "pass", "seconds": 30.0, "budget_s": 60, "log": "x",
              "result": {"fused": [2.0, 1.9], "reference": [2.01, 1.9], "relative_diff": [0.005, 0.0], "rtol": 0.02,
                         "fused_modules": {"on": 13, "off": 0}}}]
    report = {"environment": {"date": "2026-12-05 15:00 UTC", "device": "NVIDIA H100", "driver": "570.1",
                              "torch": "2.14.1", "cuda": "13.0", "triton": "3.8.0", "detectron2": "0.6",
                              "python": "3.11.7"},
              "quick": False, "steps": steps, "seconds": 288.0,
              "targets": targets({s["name"]: s["result"] for s in steps})}
    md = gpu_check.markdown(report)
    assert "# GPU check: NVIDIA H100" in md and "driver 570.1" in md and "not a GPU measurement" not in md
    assert "| excite | timeout | 165.0 | 165 |" in md and "1 of 32 cases (stopped at its budget)" in md
    assert "| res2 b16 | 8 | bfloat16 | nchw | 1.000 | 90% | 85% | 50% | 1.50x | 2.50x | 1.30x |" in md
    assert "- failed: `tests/test_excite_op.py::test_x`" in md and "No result (error): see m.log." in md
    assert "| 197 | 12.50 | 57.25 | 0.5000 |" in md and "| 0 | 2.000000 | 2.010000 | 5.00e-03 |" in md
    assert "| fused fwd >= 80% of copy bandwidth (worst case) | 90% | yes |" in md and "13 in the fused run" in md
    assert "| GE-θ⁻ fused train step <= 1.05x R50 | not measured | - |" in md
