"""python -m ge_detectron.collect_env: detectron2's report plus ge_detectron's lines, and --self-test."""
import os
import subprocess
import sys

import pytest

from ge_detectron import collect_env
from ge_detectron.ops import excite_op, native_kernels

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_collect_env_prints_detectron2s_report_and_ge_detectrons_sections_and_self_test_passes(tmp_path):
    env = {**os.environ, "PYTHONPATH": REPO}
    result = subprocess.run([sys.executable, "-m", "ge_detectron.collect_env", "--self-test"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for section in ("sys.platform", "Python", "PyTorch", "torchvision", "detectron2", "PyTorch built with"):
        assert section in out, section  # detectron2.utils.collect_env's table
    assert f"ge_detectron             0.1.0 @{os.path.join(REPO, 'ge_detectron')}" in out
    assert "triton   " in out and "excite kernels, cpu      " in out and "excite kernels, cuda     " in out
    assert "compat fixes applied     " in out
    assert "self-test, cpu         pass" in out and "FAIL" not in out


def test_self_test_passes_on_the_cpu():
    passed, line = collect_env.self_test("cpu")
    assert passed and " pass (" in line


def test_self_test_reports_a_wrong_kernel(monkeypatch, capsys):
    """The CPU implementation the operator dispatches to returns x * sigmoid(up(g)) + 0.01: the self-check names it, FAIL, exit status 1."""
    implementation = excite_op.excite_cpp if native_kernels("cpu") else excite_op.excite_torch
    right = implementation.forward
    monkeypatch.setattr(implementation, "forward", lambda x, g, shortcut=None: right(x, g, shortcut) + 0.01)
    passed, line = collect_env.self_test("cpu")
    assert not passed and "FAIL" in line and "differs from the reference by up to 0.01" in line
    monkeypatch.setattr(collect_env, "collect_env_info", lambda: "detectron2's report")
    assert collect_env.main(["--self-test"]) == 1
    assert "self-test, cpu         FAIL" in capsys.readouterr().out
