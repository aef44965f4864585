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
