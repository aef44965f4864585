"""The wheel works outside the repository: `pip wheel --no-build-isolation .` holds the configs (model_zoo) and
the C++ kernels, and, installed into a separate directory, loads a config by name, builds the model and runs a
forward pass from a working directory outside the checkout. Without torch in the build environment the wheel
has the configs but no kernels, and the build says so in one line."""
import glob
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ("setup.py", "pyproject.toml", "README.md", "ge_detectron", "configs")
TORCHLESS_NOTE = "ge_detectron: torch is not importable in the build environment"

FORWARD = textwrap.dedent("""
    import sys

    import torch
    import ge_detectron
    from detectron2.modeling import build_model
    from ge_detectron import model_zoo
    from ge_detectron.ops import native_kernels

    target = sys.argv[1]
    assert ge_detectron.__file__.startswith(target), ge_detectron.__file__
    assert model_zoo.get_config_file("faster_rcnn_ge_r50.yaml").startswith(target)
    lazy = model_zoo.get_config("faster_rcnn_ge_r50.py")  # imports the installed configs/common
    assert lazy.dataloader.train.total_batch_size == 16, lazy.dataloader.train.total_batch_size
    cfg = model_zoo.get_config("faster_rcnn_ge_r50.yaml", ["MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", 50,
                               "MODEL.RESNETS.RES2_OUT_CHANNELS", 64, "MODEL.RESNETS.WIDTH_PER_GROUP", 8,
                               "MODEL.RESNETS.STEM_OUT_CHANNELS", 16, "MODEL.ROI_HEADS.NUM_CLASSES", 3,
                               "MODEL.WEIGHTS", ""])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        out = model([{"image": torch.rand(3, 64, 64) * 255, "height": 64, "width": 64}])
    assert len(out) == 1 and out[0]["instances"].image_size == (64, 64)
    print("forward ok | CPU kernels:", native_kernels("cpu"))
""")


def _copy_sources(dest):
    """The files a wheel is built from, without built outputs (the checkout's _C*.so, a built configs copy)."""
    ignore = shutil.ignore_patterns("_C*.so", "__pycache__", "*.egg-info", "build")
    for name in SOURCES:
        source, target = os.path.join(REPO, name), os.path.join(dest, name)
        if os.path.isdir(source):
            shutil.copytree(source, target, ignore=ignore)
        else:
            shutil.copy(source, target)
    shutil.rmtree(os.path.join(dest, "ge_detectron", "model_zoo", "configs"), ignore_errors=True)


def _build_wheel(tmp_path, env=None):
    source, wheels = tmp_path / "src", tmp_path / "wheels"
    source.mkdir()
    _copy_sources(source)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-v",
                             "-w", str(wheels), str(source)], capture_output=True, text=True, timeout=1500,
                            env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (wheel,) = glob.glob(str(wheels / "ge_detectron-*.whl"))
    return wheel, result.stdout + result.stderr


def _config_names(wheel):
    prefix = "ge_detectron/model_zoo/configs/"
    return {n[len(prefix):] for n in zipfile.ZipFile(wheel).namelist() if n.startswith(prefix)}


def _expected_configs():
    root = os.path.join(REPO, "configs")
    return {os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files
            if "__pycache__" not in d and not f.endswith(".pyc")}


@pytest.mark.slow
def test_wheel_with_kernels_installed_elsewhere_loads_a_config_and_runs_a_forward_pass(tmp_path):
    wheel, log = _build_wheel(tmp_path)
    assert TORCHLESS_NOTE not in log
    names = zipfile.ZipFile(wheel).namelist()
    assert [n for n in names if n.startswith("ge_detectron/_C") and n.endswith(".so")], "no C++ kernels"
    assert _config_names(wheel) == _expected_configs()  # every config file, common/ and demo/ included
    target, outside = tmp_path / "site", tmp_path / "elsewhere"
    outside.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), wheel],
                   check=True, timeout=600)
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run([sys.executable, "-c", FORWARD, str(target)], cwd=outside, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "forward ok | CPU kernels: C++ kernels" in result.stdout


@pytest.mark.slow
def test_wheel_built_without_torch_has_the_configs_and_says_in_one_line_it_has_no_kernels(tmp_path):
    """The build environment's torch import fails (a module ``torch`` that raises ImportError shadows the
    installed one for the build's subprocess): what pip's build isolation gives when torch is not a build
    requirement."""
    shadow = tmp_path / "no_torch"
    shadow.mkdir()
    (shadow / "torch.py").write_text("raise ImportError('torch is hidden from this build')\n")
    wheel, log = _build_wheel(tmp_path, env={**os.environ, "PYTHONPATH": str(shadow)})
    assert "No module named torch" not in log and "No module named 'torch'" not in log
    (note,) = {line.strip() for line in log.splitlines() if TORCHLESS_NOTE in line}  # one line, however echoed
    assert "--no-build-isolation" in note
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if n.startswith("ge_detectron/_C")]
    assert _config_names(wheel) == _expected_configs()
