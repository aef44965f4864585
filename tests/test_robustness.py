"""Faults: a kill during training or while saving, bad images and boxes, empty data, a non-finite
loss, and determinism of short CPU runs."""
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.modeling import build_model
from detectron2.utils.env import seed_all_rng

from helpers import DEMO, TINY, ToolRun, check_resumed_weights_equal_uninterrupted, shapes_root

from ge_detectron.checkpoint import GECheckpointer
from ge_detectron.data import InvalidDatasetError, generate_shapes_split
from ge_detectron.config import get_ge_cfg
from ge_detectron.detection import DetectionTrainer as Trainer

class TrainNet(ToolRun):
    """tools/train_net.py on the demo config with TINY, writing to tmp_path / out, its data found in tmp_path;
    with ``kill_after``, SIGKILLed after that iteration's checkpoint."""

    def __init__(self, tmp_path, *opts, resume=False, out="out", kill_after=None):
        args = ["--config-file", DEMO, *(["--resume"] if resume else []), *TINY, "OUTPUT_DIR", tmp_path / out, *opts]
        super().__init__("tools/train_net.py", args, tmp_path / f"train_net_{out}{'_resumed' if resume else ''}.log",
                         env={"DETECTRON2_DATASETS": str(tmp_path)}, kill_after=kill_after)


@pytest.mark.slow
def test_sigkill_after_first_checkpoint_then_resume_finishes(tmp_path):
    shapes_root(tmp_path)
    out = tmp_path / "out"
    run = TrainNet(tmp_path, "SOLVER.MAX_ITER", 200, "SOLVER.CHECKPOINT_PERIOD", 2)
    deadline = time.time() + 600
    while not (out / "last_checkpoint").exists() and time.time() < deadline and run.proc.poll() is None:
        time.sleep(0.2)
    os.kill(run.proc.pid, signal.SIGKILL)
    returncode, log = run.wait()
    assert returncode == -signal.SIGKILL and (out / "last_checkpoint").exists(), log[-3000:]
    saved = (out / "last_checkpoint").read_text()
    assert (out / saved).exists()  # the tag never points at a missing or partial file (a kill mid-save leaves a .tmp)
    start = torch.load(out / saved, map_location="cpu", weights_only=False)["iteration"] + 1

    returncode, log = TrainNet(tmp_path, "SOLVER.MAX_ITER", start + 2, "SOLVER.CHECKPOINT_PERIOD", 100,
                               resume=True).wait()
    assert returncode == 0, log[-3000:]
    assert f"Starting training from iteration {start}" in log
    assert (out / "model_final.pth").exists() and (out / "last_checkpoint").read_text() == "model_final.pth"


# Momentum SGD, a warmup across the kill, 2 of the 4 images per step (the stream position matters), random
# proposal sampling (the generators matter); no flip (its randomness would be in the data loader), no evaluation.
EXACT = ["SOLVER.MAX_ITER", 6, "SOLVER.CHECKPOINT_PERIOD", 2, "SOLVER.WARMUP_ITERS", 4, "INPUT.RANDOM_FLIP", "none",
         "DATASETS.TEST", "()", "SEED", 5]


@pytest.mark.slow
def test_run_sigkilled_after_a_checkpoint_and_resumed_ends_bit_identical_to_an_uninterrupted_run(tmp_path):
    shapes_root(tmp_path)
    returncode, log = TrainNet(tmp_path, *EXACT, out="uninterrupted").wait()
    assert returncode == 0, log[-3000:]
    returncode, log = TrainNet(tmp_path, *EXACT, out="killed", kill_after=3).wait()
    assert returncode == -signal.SIGKILL, log[-3000:]
    assert (tmp_path / "killed" / "last_checkpoint").read_text() == "model_0000003.pth"
    assert not (tmp_path / "killed" / "model_final.pth").exists()
    returncode, log = TrainNet(tmp_path, *EXACT, out="killed", resume=True).wait()
    assert returncode == 0 and "Starting training from iteration 4" in log, log[-3000:]
    assert "will not equal an uninterrupted run" not in log and "restarts" not in log

    expected, resumed = check_resumed_weights_equal_uninterrupted(tmp_path)
    for key in ("optimizer", "grad_scaler"):  # the trainer states too
        assert (key in expected["trainer"]["_trainer"]) == (key in resumed["trainer"]["_trainer"])
    torch.testing.assert_close(resumed["trainer"]["_trainer"]["optimizer"], expected["trainer"]["_trainer"]["optimizer"],
                               rtol=0, atol=0)


@pytest.mark.slow
def test_a_run_from_plain_weights_with_identity_insertion_resumes_bit_identical(tmp_path):
    """The resumed run loads its checkpoint, which holds the GE weights: nothing is inserted again."""
    shapes_root(tmp_path)
    plain = build_model(get_ge_cfg(DEMO, [*TINY, "MODEL.GE.VARIANT", "none", "MODEL.DEVICE", "cpu"]))
    DetectionCheckpointer(plain, save_dir=str(tmp_path)).save("plain")
    opts = [*EXACT, "MODEL.WEIGHTS", tmp_path / "plain.pth", "MODEL.GE.INIT", "identity"]
    returncode, log = TrainNet(tmp_path, *opts, out="uninterrupted").wait()
    assert returncode == 0 and log.count("inserted as the identity") == 1, log[-3000:]
    returncode, log = TrainNet(tmp_path, *opts, out="killed", kill_after=3).wait()
    assert returncode == -signal.SIGKILL, log[-3000:]
    returncode, log = TrainNet(tmp_path, *opts, out="killed", resume=True).wait()
    assert returncode == 0 and "Starting training from iteration 4" in log, log[-3000:]
    assert "inserted as the identity" not in log
    check_resumed_weights_equal_uninterrupted(tmp_path)


def test_kill_while_saving_keeps_the_previous_checkpoint(tmp_path):
    model = torch.nn.Linear(3, 3)
    checkpointer = GECheckpointer(model, save_dir=str(tmp_path))
    checkpointer.save("model_0000009")
    before = (tmp_path / "model_0000009.pth").read_bytes()

    class KilledWhileSaving(Exception):
        pass

    def state_dict_then_die():
        raise KilledWhileSaving()

    with pytest.raises(KilledWhileSaving):  # torch.save dies half-way through the file
        with checkpointer.path_manager.open(str(tmp_path / "model_0000019.pth"), "wb") as f:
            f.write(before[: len(before) // 2])
            state_dict_then_die()
    assert not (tmp_path / "model_0000019.pth").exists() and not list(tmp_path.glob("*.tmp*"))
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    assert (tmp_path / "model_0000009.pth").read_bytes() == before
    restored = GECheckpointer(torch.nn.Linear(3, 3), save_dir=str(tmp_path))
    restored.resume_or_load("", resume=True)
    torch.testing.assert_close(restored.model.weight, model.weight)


def register_bad_dataset(tmp_path, name, corrupt_images=1, box_edits=None):
    """4 generated images, ``corrupt_images`` of them overwritten with garbage, annotations edited."""
    import json

    root = tmp_path / name
    generate_shapes_split(str(root / "img"), str(root / "ann.json"), 4, 5, image_size=64, min_side=12, max_side=30)
    for i in range(1, corrupt_images + 1):
        (root / "img" / f"{i:06d}.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    coco = json.loads((root / "ann.json").read_text())
    for ann, bbox in zip(coco["annotations"], box_edits or []):
        ann["bbox"] = bbox
    (root / "ann.json").write_text(json.dumps(coco))
    if name not in DatasetCatalog.list():
        register_coco_instances(name, {}, str(root / "ann.json"), str(root / "img"))
    return name


def tiny_train_cfg(tmp_path, train_name, iters=2, extra=()):
    return get_ge_cfg(DEMO, TINY + ["DATASETS.TRAIN", (train_name,), "DATASETS.TEST", (), "SOLVER.MAX_ITER", iters,
                                    "OUTPUT_DIR", str(tmp_path / "out"), "MODEL.RESNETS.DEPTH", 50, *extra])


@pytest.mark.slow
def test_corrupt_images_and_bad_boxes_are_skipped_with_counts(tmp_path, caplog):
    edits = [[0, 0, 0, 10], [10, 10, -5, 8], [500, 500, 10, 10], [float("nan"), 1, 5, 5]]
    name = register_bad_dataset(tmp_path, "bad_train", corrupt_images=1, box_edits=edits)
    cfg = tiny_train_cfg(tmp_path, name)
    with caplog.at_level(logging.WARNING, logger="ge_detectron"):
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=False)
        trainer.train()
    text = " ".join(r.getMessage() for r in caplog.records if r.name.startswith("ge_detectron"))
    assert "Dropped 4 annotations with degenerate or out-of-image boxes" in text
    assert "Skipped unreadable image" in text and "000001.jpg" in text and "1 skipped so far" in text
    assert trainer.iter == cfg.SOLVER.MAX_ITER


def test_dataset_without_usable_boxes_is_a_clear_error(tmp_path):
    name = register_bad_dataset(tmp_path, "all_bad_train", corrupt_images=0, box_edits=[[0, 0, 0, 0]] * 100)
    with pytest.raises(InvalidDatasetError, match="all_bad_train.*no"):
        Trainer(tiny_train_cfg(tmp_path, name))


@pytest.mark.slow
def test_a_checkpoint_of_detectron2_0_6s_trainer_resumes_with_a_warning_saying_what_is_lost(tmp_path, caplog):
    name = register_bad_dataset(tmp_path, "v06_checkpoint_train", corrupt_images=0)
    trainer = Trainer(tiny_train_cfg(tmp_path, name, iters=2))
    trainer.resume_or_load(resume=False)
    trainer.train()
    path = tmp_path / "out" / "model_final.pth"
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    # What detectron2 0.6's DefaultTrainer saves as the trainer state: no "_trainer", only its own hooks.
    checkpoint["trainer"] = {"iteration": 1, "hooks": {"LRScheduler": checkpoint["trainer"]["hooks"]["LRScheduler"]}}
    torch.save(checkpoint, path)

    resumed = Trainer(tiny_train_cfg(tmp_path, name, iters=3))
    with caplog.at_level(logging.WARNING, logger="ge_detectron"):
        resumed.resume_or_load(resume=True)
    text = " ".join(r.getMessage() for r in caplog.records if r.name.startswith("ge_detectron"))
    assert "holds no optimizer state (SGD momentum restarts from zero) and no data stream position" in text
    assert "resumes at iteration 2" in text and "run without --resume, with MODEL.WEIGHTS" in text
    assert resumed.start_iter == 2
    resumed.train()
    assert resumed.iter == 3


@pytest.mark.slow
def test_temporary_files_left_by_a_kill_while_saving_are_removed_on_the_next_start(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(ended.stdout)  # a process that has exited
    stale = [f"last_checkpoint.tmp{dead}", f"model_0000001.pth.tmp{dead}", f"model_final.pth.tmp{dead}"]
    kept = [f"model_0000002.pth.tmp{os.getpid()}",  # a running process is writing it
            f"notes.txt.tmp{dead}", "model_0000001.pth", "last_checkpoint"]  # not a checkpoint's temporary file
    for name in stale + kept:
        (out / name).write_bytes(b"partial")
    name = register_bad_dataset(tmp_path, "tmp_files_train", corrupt_images=0)
    Trainer(tiny_train_cfg(tmp_path, name)).resume_or_load(resume=False)
    left = set(os.listdir(out))
    assert not left & set(stale) and set(kept) <= left


@pytest.mark.slow
def test_non_finite_loss_stops_with_the_iteration_and_keeps_the_last_good_checkpoint(tmp_path):
    shapes_root(tmp_path)
    returncode, log = TrainNet(tmp_path, "SOLVER.MAX_ITER", 30, "SOLVER.CHECKPOINT_PERIOD", 1,
                               "SOLVER.BASE_LR", 1e12).wait()
    assert returncode != 0
    assert "error: training stopped, the loss is not finite" in log and "iteration=" in log
    assert "Traceback" not in log, log[-3000:]  # detectron2's traceback of the fault is in log.txt only
    assert "Traceback" in (tmp_path / "out" / "log.txt").read_text()
    last = (tmp_path / "out" / (tmp_path / "out" / "last_checkpoint").read_text())
    state = torch.load(last, map_location="cpu", weights_only=False)["model"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def run_losses(tmp_path, name, tag):
    cfg = tiny_train_cfg(tmp_path / tag, name, iters=5, extra=["SEED", 7, "CUDNN_BENCHMARK", False])
    seed_all_rng(cfg.SEED)
    torch.use_deterministic_algorithms(True)
    try:
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=False)
        trainer.train()
    finally:
        torch.use_deterministic_algorithms(False)
    return [v for v, _ in trainer.storage.history("total_loss").values()]


@pytest.mark.slow
def test_two_seeded_cpu_runs_give_identical_losses(tmp_path):
    name = register_bad_dataset(tmp_path, "determinism_train", corrupt_images=0)
    first, second = run_losses(tmp_path, name, "a"), run_losses(tmp_path, name, "b")
    assert len(first) == 5 and first == second
