"""Data-parallel training on the CPU: each tool run by torchrun as 2 processes (gloo, env:// rendezvous)
for 2 iterations. The processes must end with identical parameters (DDP averages the gradients of
their different batches), and only rank 0 writes checkpoints, metrics and events; detectron2's
loggers give rank 1 its own log file, ``log.txt.rank1``, and nothing else.

Each process saves its final model state through a hook the test adds (tests/helpers.py run as a script)."""
import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import PAPER, TINY, TINY_C4, TINY_PRETRAIN, class_folders, free_port, shapes_root, tiny

pytestmark = pytest.mark.slow  # every test here trains or runs a subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 2 images per process and step (1 would be a batch of one 1x1 map in the BN of the E8 gather).
DETECTION = [*TINY, "SOLVER.IMS_PER_BATCH", "4"]


def torchrun(tool, opts, tmp_path, env=None, run_opts=None):
    """``tool`` as 2 processes for 2 iterations with a checkpoint after each; ``run_opts`` says that in the
    tool's override syntax (default: YAML's)."""
    run_opts = run_opts or ["SOLVER.MAX_ITER", "2", "SOLVER.CHECKPOINT_PERIOD", "1", "OUTPUT_DIR", str(tmp_path / "out")]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "tests/helpers.py", f"tools/{tool}", *opts, *run_opts]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "RANK_STATE_DIR": str(tmp_path / "ranks"), **(env or {})}
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return tmp_path / "out"


def check_ranks_agree_and_only_rank0_wrote(tmp_path, out, rank0_outputs):
    ranks = [torch.load(tmp_path / "ranks" / f"rank{r}.pth", map_location="cpu") for r in (0, 1)]
    assert sorted(os.listdir(tmp_path / "ranks")) == ["rank0.pth", "rank1.pth"]
    assert ranks[0]["iteration"] == ranks[1]["iteration"] == 2
    params = ranks[0]["parameters"]
    assert params.keys() == ranks[1]["parameters"].keys() and len(params) > 10
    differ = [k for k in params if not torch.equal(params[k], ranks[1]["parameters"][k])]
    assert not differ, differ[:5]
    # Without broadcast_buffers (detectron2's choice) BN running statistics are per process; the
    # parameters are what DDP keeps in sync. Rank 0's checkpoint holds its parameters.
    final = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert all(torch.equal(final["model"][k], v) for k, v in params.items()) and final["iteration"] == 1
    first = torch.load(out / "model_0000000.pth", map_location="cpu", weights_only=False)["model"]
    assert any(not torch.equal(first[k], v) for k, v in params.items())  # the 2nd step changed the weights

    files = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    events = [f for f in files if f.startswith("events.out.tfevents.")]
    expected = {"config.yaml", "last_checkpoint", "metrics.json", "log.txt", "log.txt.rank1", "model_0000000.pth",
                "model_0000001.pth", "model_final.pth", *rank0_outputs}
    assert len(events) == 1 and files - set(events) == expected, sorted(files)
    log0, log1 = (out / "log.txt").read_text(), (out / "log.txt.rank1").read_text()
    assert "Rank of current process: 0. World size: 2" in log0 and "Rank of current process: 1. World size: 2" in log1
    assert "Rank of current process: 0" not in log1
    assert log0.count("Saving checkpoint to") == 3 and "Saving checkpoint to" not in log1
    # one writer: the training metrics of iteration 1 (the last), the final evaluation's results after it
    assert [json.loads(line)["iteration"] for line in (out / "metrics.json").read_text().splitlines()] == [1, 2]


def test_train_net_two_cpu_processes(tmp_path):
    shapes_root(tmp_path)
    config = ["--config-file", "configs/demo/faster_rcnn_ge_theta_e8_r50_fpn_shapes.yaml"]
    out = torchrun("train_net.py", config + DETECTION, tmp_path, env={"DETECTRON2_DATASETS": str(tmp_path)})
    # The final COCO evaluation gathers both processes' predictions; rank 0 writes them.
    check_ranks_agree_and_only_rank0_wrote(tmp_path, out, {"inference/coco_instances_results.json",
                                                           "inference/instances_predictions.pth"})


def test_lazyconfig_train_net_two_cpu_processes(tmp_path):
    shapes_root(tmp_path)
    names = {"train": "ge_shapes_train", "val": "ge_shapes_val"}  # found under DETECTRON2_DATASETS
    opts = ["--config-file", PAPER, *tiny(names, tmp_path / "out"), *TINY_C4, "dataloader.train.total_batch_size=4"]
    out = torchrun("lazyconfig_train_net.py", opts, tmp_path, env={"DETECTRON2_DATASETS": str(tmp_path)},
                   run_opts=["train.max_iter=2", "train.checkpointer.period=1"])
    check_ranks_agree_and_only_rank0_wrote(tmp_path, out, {"inference/coco_instances_results.json",
                                                           "inference/instances_predictions.pth"})


def test_pretrain_net_two_cpu_processes(tmp_path):
    class_folders(tmp_path, train_per_class=3, val_per_class=2)
    opts = ["--config-file", "configs/pretrain/demo_shapes.yaml",
            "PRETRAIN.TRAIN_DIR", str(tmp_path / "train"), "PRETRAIN.VAL_DIR", str(tmp_path / "val"), *TINY_PRETRAIN]
    out = torchrun("pretrain_net.py", opts, tmp_path)
    check_ranks_agree_and_only_rank0_wrote(tmp_path, out, set())
    # The evaluation summed both processes' halves of the 16 validation images.
    assert f"Evaluation on {tmp_path / 'val'} (16 images):" in (out / "log.txt").read_text()
