"""A lost worker of a data-parallel run on the CPU (gloo, 2 processes, the tiny detection config): torchrun
--max-restarts restarts the worker group, which resumes from the last checkpoint exactly, under torchrun's
static and c10d rendezvous alike; without torchrun, the surviving process ends with one line, naming what
happened and how to resume, within the process group's timeout (GE_DIST.TIMEOUT) instead of hanging.

The kills come from tests/helpers.py run as a script (KILL_AFTER_ITERATION, KILL_RANK)."""
import json
import os
import re
import subprocess
import sys
import time

import pytest
import torch
from helpers import DEMO, REPO, TINY, file_records, free_port, shapes_root

pytestmark = pytest.mark.slow  # every test here trains in subprocesses

# 2 images per process and step; checkpoints after iterations 1 and 3 (the last).
RUN = [*TINY, "SOLVER.IMS_PER_BATCH", "4", "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2",
       "DATASETS.TEST", "()"]
RENDEZVOUS = {"static": lambda port: ["--master_addr", "127.0.0.1", "--master_port", str(port)],
              "c10d": lambda port: ["--nnodes", "1", "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}"]}


def torchrun(tmp_path, out, rendezvous="static", env=None):
    """tools/train_net.py on RUN as 2 processes under torchrun --max-restarts 1; the torchrun result. A port
    that another process took between free_port() and the agent's bind is retried with another."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "DETECTRON2_DATASETS": str(tmp_path),
           **(env or {})}
    for _ in range(3):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--max-restarts", "1",
               *RENDEZVOUS[rendezvous](free_port()), "tests/helpers.py", "tools/train_net.py", "--config-file", DEMO,
               *RUN, "OUTPUT_DIR", str(tmp_path / out)]
        result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        if "address already in use" not in result.stderr.lower():
            return result
    return result


def final_weights(out):
    state = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    assert state["iteration"] == 3
    return state["model"]


def test_a_worker_killed_after_a_checkpoint_is_restarted_by_torchrun_and_resumes_exactly(tmp_path):
    shapes_root(tmp_path)
    result = torchrun(tmp_path, "uninterrupted")
    assert result.returncode == 0, result.stderr[-4000:]
    expected = final_weights(tmp_path / "uninterrupted")
    for rendezvous in RENDEZVOUS:
        out, record = tmp_path / rendezvous, tmp_path / f"{rendezvous}.json"
        # rank 1 dies after iteration 2, when rank 0 has written the checkpoint of iteration 1 (both took part in
        # iteration 2's gradient all-reduce after it) and none of iteration 2
        result = torchrun(tmp_path, rendezvous, rendezvous,
                          env={"KILL_AFTER_ITERATION": "2", "KILL_RANK": "1", "KILL_RECORD": str(record)})
        assert result.returncode == 0, (rendezvous, result.stderr[-4000:])
        assert "exitcode: -9" in result.stderr and "local_rank: 1" in result.stderr  # the kill happened
        at_kill = json.loads(record.read_text())
        assert [name for name in at_kill if name.startswith("model_")] == ["model_0000001.pth"], sorted(at_kill)
        now = file_records(out)
        assert now["model_0000001.pth"] == at_kill["model_0000001.pth"]  # same inode, mtime and bytes: not rewritten
        log = (out / "log.txt").read_text()
        assert log.count("Saving checkpoint to") == 3  # iteration 1 in the first run; 3 and the final after the restart
        assert (f"torchrun restarted the workers (restart 1): resuming from {out / 'model_0000001.pth'} at iteration 2."
                in log)
        assert "Starting training from iteration 2" in log.split("torchrun restarted the workers")[1]
        resumed = final_weights(out)
        assert resumed.keys() == expected.keys()
        assert [k for k, v in expected.items() if not torch.equal(v, resumed[k])] == [], rendezvous


@pytest.mark.parametrize("fate", ["killed", "stopped"])
def test_the_survivor_of_a_lost_peer_ends_with_one_line_within_the_timeout(fate, tmp_path):
    """2 processes of a process group without torchrun (its environment variables set by hand): rank 1
    SIGKILLed (its connections close) or SIGSTOPped (it stays, silent) after iteration 1. Rank 0 ends with
    exit status 1 and one line; for the stopped peer, after waiting GE_DIST.TIMEOUT (20 s) for it."""
    shapes_root(tmp_path)
    out, timeout = tmp_path / "out", 20
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "DETECTRON2_DATASETS": str(tmp_path),
           "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "KILL_AFTER_ITERATION": "1", "KILL_RANK": "1", "KILL_RECORD": str(tmp_path / "record.json"),
           "KILL_SIGNAL": "SIGSTOP" if fate == "stopped" else "SIGKILL"}
    cmd = [sys.executable, "tests/helpers.py", "tools/train_net.py", "--config-file", DEMO, *RUN, "OUTPUT_DIR",
           str(out), "GE_DIST.TIMEOUT", str(timeout)]
    ranks = []
    try:
        for rank in (0, 1):
            with open(tmp_path / f"rank{rank}.out", "w") as stdout, open(tmp_path / f"rank{rank}.err", "w") as stderr:
                ranks.append(subprocess.Popen(cmd, cwd=REPO, stdout=stdout, stderr=stderr,
                                              env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}))
        rc = ranks[0].wait(timeout=600)  # the default timeout, 30 minutes, would fail here
        ended = time.time()
        peer_alive = ranks[1].poll() is None
    finally:
        for proc in ranks:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    stderr = (tmp_path / "rank0.err").read_text()
    assert rc == 1, stderr[-4000:]
    assert "Traceback" not in stderr, stderr[-4000:]
    # gloo's words for a closed connection vary with the moment it closed ("Connection reset by peer",
    # "Connection closed by peer")
    reason = r"[^()]*by peer[^()]*" if fate == "killed" else rf"Timed out waiting {timeout * 1000}ms[^()]*"
    assert re.fullmatch(
        r"error: training stopped at iteration=2, another process of the distributed run died or stopped answering "
        rf"\({reason}\)\. The last complete checkpoint is kept: {re.escape(str(out / 'model_0000001.pth'))}\. Run "
        r"again with --resume; under torchrun --max-restarts N the workers restart and resume by themselves\.",
        stderr.strip().splitlines()[-1]), stderr[-4000:]
    if fate == "stopped":  # rank 0 waited the timeout for its silent peer, then went on without it
        assert peer_alive and ended - os.stat(tmp_path / "record.json").st_mtime >= timeout
