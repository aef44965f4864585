"""A disk that fills up while tools/train_net.py writes a checkpoint, the metrics or the log: one line on
stderr naming the file and how to resume, no traceback; the last complete checkpoint is kept and
``--resume`` continues from it."""
import os
import subprocess
import sys

import pytest
import torch

from helpers import DEMO, REPO, TINY, shapes_root

# Runs tools/train_net.py (argv[1:]) on a disk that is full once the run's first checkpoint is written: from
# then on, writing a file whose name starts with $FULL_DISK fails with ENOSPC, as the OS reports it (the
# checkpoints go through ge_detectron.atomic, metrics.json and log.txt through detectron2's PathManager).
ON_A_FILLING_DISK = """
import errno, os, runpy, sys
import ge_detectron.atomic as atomic
from detectron2.utils.file_io import PathManager

class FillingDisk:
    def __init__(self, file):
        self.file = file

    def _check(self):
        if os.path.exists(os.path.join(os.path.dirname(os.path.abspath(self.file.name)), "model_0000001.pth")):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def write(self, data):
        self._check()
        return self.file.write(data)

    def flush(self):
        self._check()
        return self.file.flush()

    def __getattr__(self, name):
        return getattr(self.file, name)

def on_the_filling_disk(open_file):
    def open_(path, mode="r", *args, **kwargs):
        file = open_file(path, mode, *args, **kwargs)
        full = os.path.basename(str(path)).startswith(os.environ["FULL_DISK"]) and mode[0] in "wa"
        return FillingDisk(file) if full else file
    return open_

atomic.open = on_the_filling_disk(open)
PathManager.open = on_the_filling_disk(PathManager.open)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def train_net(tmp_path, *args, full_disk=None):
    cmd = [sys.executable, *(["-c", ON_A_FILLING_DISK] if full_disk else []), os.path.join(REPO, "tools", "train_net.py"),
           "--config-file", DEMO, *args, *TINY, "OUTPUT_DIR", str(tmp_path / "out"), "SOLVER.MAX_ITER", "4",
           "SOLVER.CHECKPOINT_PERIOD", "2", "DATASETS.TEST", "()"]
    env = {**os.environ, "DETECTRON2_DATASETS": str(tmp_path), "FULL_DISK": full_disk or ""}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("full_file,kept", [("model_0000003.pth", "model_0000001.pth"), ("log.txt", "model_0000001.pth"),
                                            ("metrics.json", "model_final.pth")])
def test_a_full_disk_ends_the_run_with_one_line_and_keeps_the_last_complete_checkpoint(full_file, kept, tmp_path):
    shapes_root(tmp_path)
    out = tmp_path / "out"
    result = train_net(tmp_path, full_disk=full_file)
    assert result.returncode == 1, result.stderr[-3000:]
    console = result.stdout + result.stderr  # detectron2's logger writes to stdout
    assert "Traceback" not in console and "Logging error" not in console, console[-3000:]
    assert "Exception during training" in (out / "log.txt").read_text() or full_file == "log.txt"  # at DEBUG level
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: training stopped at iteration=3, the disk is "
        f"full: cannot write {out / full_file} (No space left on device). The last complete checkpoint is kept: "
        f"{out / kept}. Free space, then run again with --resume.")
    assert (out / "last_checkpoint").read_text() == kept
    assert not [name for name in os.listdir(out) if ".tmp" in name]  # no partial checkpoint left behind
    if full_file != "model_0000003.pth":
        return
    result = train_net(tmp_path, "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Starting training from iteration 2" in result.stdout + result.stderr
    assert torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)["iteration"] == 3
