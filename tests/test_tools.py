"""Every tool in tools/ runs as a user runs it (a subprocess, from the repository root): ``--help`` for
each Python tool, and each benchmark once in a tiny mode, with its JSON written and read back."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOLS = sorted(p.name for p in (ROOT / "tools").glob("*.py"))


def run_tool(tool, *args, timeout=900):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, str(ROOT / "tools" / tool), *args], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=timeout)


def test_every_tool_is_listed():
    assert "benchmark_excite.py" in TOOLS and "gpu_check.py" in TOOLS and len(TOOLS) >= 13


@pytest.mark.slow
@pytest.mark.parametrize("tool", TOOLS)
def test_tool_help(tool):
    result = run_tool(tool, "--help")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("usage:"), result.stdout[:500]


@pytest.mark.slow
def test_benchmark_excite_tiny(tmp_path):
    """One tiny case per path (eager-timm, eager, fused), forward and backward, one run each."""
    path = tmp_path / "excite.json"
    result = run_tool("benchmark_excite.py", "--device", "cpu", "--image", "64x96", "--batches", "1", "--no-c4",
                      "--extents", "8", "--dtypes", "float32", "--layouts", "nchw", "--runs", "1", "--warmup", "0",
                      "--flush-mb", "1", "--json", str(path))
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(path.read_text())
    assert data["complete"] and {r["impl"] for r in data["results"]} == {"eager-timm", "eager", "fused"}


@pytest.mark.slow
def test_benchmark_model_tiny(tmp_path):
    """Each model (R50, GE-θ⁻ and GE-θ, reference and fused) one training step and one inference on one
    image of the CPU default size (at 64x64 and 128x192 the frozen norms' calibration sees too few pixels and
    the RPN diverges)."""
    path = tmp_path / "model.json"
    result = run_tool("benchmark_model.py", "--device", "cpu", "--image", "224x320", "--batch", "1", "--iters", "1",
                      "--warmup", "0", "--breakdown-iters", "0", "--json", str(path))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(path.read_text())["results"]
    assert [r["model"] for r in rows][0] == "R50" and all(r["train_step_ms"] > 0 for r in rows)


@pytest.mark.slow
def test_ge_study_collect_summarizes_the_finished_runs(tmp_path):
    """``ge_study.py --collect`` over a study of which 8 of 9 classification runs finished: mean and sample
    standard deviation per arm (hand-computed), the raw values by seed, "complete" false, the machine and
    versions recorded; nothing trains."""
    top1 = {"none": [60.0, 64.0, 68.0], "theta": [50.0, 52.0, 54.0], "theta_minus": [40.0, 44.0]}
    for arm, values in top1.items():
        for seed, value in enumerate(values):
            folder = tmp_path / "cls" / arm / f"seed{seed}"
            folder.mkdir(parents=True)
            (folder / "study_result.json").write_text(json.dumps({"top1": value}))
    result = run_tool("ge_study.py", "--output", str(tmp_path), "--parts", "cls", "--collect")
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["complete"] is False
    summary = {arm: stages["end"]["top1"] for arm, stages in data["results"]["cls"].items()}
    assert summary["none"] == {"seeds": [0, 1, 2], "values": [60.0, 64.0, 68.0], "mean": 64.0, "std": 4.0}
    assert (summary["theta"]["mean"], summary["theta"]["std"]) == (52.0, 2.0)
    assert summary["theta_minus"]["seeds"] == [0, 1]
    assert summary["theta_minus"]["std"] == pytest.approx(8 ** 0.5)  # sqrt((2**2 + 2**2) / (2 - 1))
    assert {"date", "cpu", "torch", "detectron2", "python"} <= set(data["environment"])
