"""Faults in classification pretraining: unreadable images, empty datasets, a non-finite loss or state."""
import contextlib
import logging
import os
import re
import subprocess
import sys

import ge_detectron  # noqa: F401  (compat fixes first)
import pytest
import torch
from ge_detectron.data import DatasetMissingError, InvalidDatasetError, shape_classes
from detectron2.engine import HookBase
from ge_detectron.data.classification import (MAX_UNREADABLE_IN_A_ROW, ReadableImageFolder, build_eval_transform,
                                              build_train_transform, check_image_folders)
from ge_detectron.engine import train_or_exit
from ge_detectron.pretrain import PretrainTrainer, get_pretrain_cfg
from helpers import PRETRAIN_DEMO, TINY_PRETRAIN, class_folders

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def tiny_cfg(tmp_path, *opts):
    return get_pretrain_cfg(PRETRAIN_DEMO, ["PRETRAIN.TRAIN_DIR", str(tmp_path / "train"), "PRETRAIN.VAL_DIR",
                                            str(tmp_path / "val"), "OUTPUT_DIR", str(tmp_path / "out"), *TINY_PRETRAIN,
                                            *opts])


def break_images(tmp_path):
    """Garbage bytes, a truncated PNG and an empty file in train; garbage in val. Returns the train paths."""
    garbage, truncated, empty = (tmp_path / "train" / cls / "00000.png" for cls in ("circle", "square", "ring"))
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    truncated.write_bytes(truncated.read_bytes()[:60])
    empty.write_bytes(b"")
    (tmp_path / "val" / "cross" / "00001.png").write_bytes(b"GIF89a garbage")
    return [str(p) for p in (garbage, truncated, empty)]


@contextlib.contextmanager
def warnings_of(name="ge_detectron"):
    """The messages of the warnings ``name``'s loggers emit (detectron2's setup_logger stops propagation)."""
    messages, handler = [], logging.Handler(logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger(name).addHandler(handler)
    try:
        yield messages
    finally:
        logging.getLogger(name).removeHandler(handler)


def test_unreadable_training_images_are_replaced_and_counted(tmp_path):
    bad = break_images(class_folders(tmp_path))
    dataset = ReadableImageFolder(tiny_cfg(tmp_path), "TRAIN_DIR", build_train_transform(tiny_cfg(tmp_path)),
                                  replace=True)
    indices = [i for i, (path, _) in enumerate(dataset.samples) if path in bad]
    assert len(indices) == 3
    with warnings_of() as messages:
        items = [dataset[i] for i in indices]
    assert all(image.shape == (3, 32, 32) and image.dtype == torch.uint8 for image, _ in items)  # replacements
    assert dataset.skipped >= 3 and len(messages) == dataset.skipped  # >: a replacement drawn among the bad
    assert all(f"; {count} skipped so far in this data loader worker." in m for count, m in enumerate(messages, 1))
    assert all(any(f"Skipped unreadable image {path!r}" in m for m in messages) for path in bad), messages
    assert any("UnidentifiedImageError" in m for m in messages) and any("truncated" in m for m in messages)


@pytest.mark.slow
def test_unreadable_validation_images_are_left_out_of_the_evaluation(tmp_path):
    bad = break_images(class_folders(tmp_path))
    cfg = tiny_cfg(tmp_path)
    dataset = ReadableImageFolder(cfg, "VAL_DIR", build_eval_transform(cfg), replace=False)
    assert dataset[[p for p, _ in dataset.samples].index(str(tmp_path / "val" / "cross" / "00001.png"))] is None
    assert not any(p in bad for p, _ in dataset.samples)

    with warnings_of() as messages:
        trainer = PretrainTrainer(tiny_cfg(tmp_path, "SOLVER.MAX_ITER", "2"))
        trainer.resume_or_load(resume=False)
        trainer.train()  # 2 steps of 8 images: the 3 bad ones among 16 are drawn, then replaced
        results = PretrainTrainer.test(cfg, trainer.model)
    assert trainer.iter == 2 and 0 <= results["classification"]["top1"] <= 100
    assert "1 of the 16 images in" in " ".join(messages) and "top-1 / top-5 are over the other 15" in " ".join(messages)
    assert any("Skipped unreadable image" in m and "00001.png" in m for m in messages)


def test_a_batch_of_unreadable_images_is_an_empty_batch(tmp_path):
    class_folders(tmp_path, train_per_class=1, val_per_class=1)
    for cls in shape_classes.CLASSES:
        (tmp_path / "val" / cls / "00000.png").write_bytes(b"")
    cfg = tiny_cfg(tmp_path)
    loader = PretrainTrainer.build_test_loader(cfg)
    with warnings_of() as messages:
        (images, labels), = list(loader)
    assert images.shape == (0, 3, 32, 32) and labels.shape == (0,) and len(messages) == 8
    with pytest.raises(RuntimeError, match="none of its images could be read"):
        PretrainTrainer.test(cfg, PretrainTrainer.build_model(cfg).eval())


def test_a_training_set_of_unreadable_images_is_a_clear_error(tmp_path):
    class_folders(tmp_path, train_per_class=1, val_per_class=1)
    for cls in shape_classes.CLASSES:
        (tmp_path / "train" / cls / "00000.png").write_bytes(b"not an image")
    cfg = tiny_cfg(tmp_path)
    dataset = ReadableImageFolder(cfg, "TRAIN_DIR", build_train_transform(cfg), replace=True)
    with warnings_of(), pytest.raises(InvalidDatasetError, match=f"{MAX_UNREADABLE_IN_A_ROW} images in a row"):
        dataset[0]


def test_empty_datasets_are_a_clear_error(tmp_path):
    for split in ("train", "val"):
        for cls in shape_classes.CLASSES:
            os.makedirs(tmp_path / split / cls)
    (tmp_path / "train" / "circle" / "notes.txt").write_text("no images here")
    with pytest.raises(DatasetMissingError, match=r"PRETRAIN.TRAIN_DIR: the dataset at .* is empty: none of its "
                                                  r"8 class folders holds an image \(.jpg"):
        check_image_folders(tiny_cfg(tmp_path))
    with pytest.raises(DatasetMissingError, match="is empty"):  # also where the loaders are built
        PretrainTrainer.build_train_loader(tiny_cfg(tmp_path))

    class_folders(tmp_path / "partly")
    for path in (tmp_path / "partly" / "val" / "ring").iterdir():
        path.unlink()
    with pytest.raises(InvalidDatasetError, match=r"PRETRAIN.VAL_DIR: 1 of the 8 class folders in .* hold no "
                                                  r"image .*: 'ring'. Every class needs images."):
        check_image_folders(tiny_cfg(tmp_path / "partly"))


class PoisonPixelStd(HookBase):
    """From iteration ``at`` on, the classifier divides its input by 0: inf pixels, a NaN loss."""

    def __init__(self, at):
        self.at = at

    def before_step(self):
        if self.trainer.iter == self.at:
            self.trainer.model.classifier.pixel_std.zero_()


def finite(checkpoint):
    return all(torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point())


@pytest.mark.slow
def test_non_finite_loss_stops_pretraining_with_the_iteration_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = tiny_cfg(class_folders(tmp_path), "SOLVER.MAX_ITER", "5", "SOLVER.CHECKPOINT_PERIOD", "1",
                   "TEST.EVAL_PERIOD", "0")
    trainer = PretrainTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.register_hooks([PoisonPixelStd(at=2)])
    with pytest.raises(SystemExit) as stop:
        train_or_exit(trainer)
    out = tmp_path / "out"
    assert str(stop.value) == (
        "error: training stopped, the loss is not finite: Loss became infinite or NaN at iteration=2! loss_dict = "
        f"{{'loss_cls': np.float64(nan)}} The last good checkpoint is kept: {out / 'model_0000001.pth'}. Lower "
        "SOLVER.BASE_LR or raise SOLVER.WARMUP_ITERS, then --resume.")
    assert (out / "last_checkpoint").read_text() == "model_0000001.pth" and not (out / "model_0000002.pth").exists()
    checkpoint = torch.load(out / "model_0000001.pth", map_location="cpu", weights_only=False)
    assert checkpoint["iteration"] == 1 and finite(checkpoint)


@pytest.mark.slow
def test_divergence_stops_pretrain_net_before_a_non_finite_checkpoint(tmp_path):
    """A huge learning rate: the weights or the norm statistics overflow after a step whose loss was finite
    (no checkpoint of them is written), or the next loss is NaN; either way the tool stops with one line."""
    class_folders(tmp_path)
    opts = ["PRETRAIN.TRAIN_DIR", str(tmp_path / "train"), "PRETRAIN.VAL_DIR", str(tmp_path / "val"),
            "OUTPUT_DIR", str(tmp_path / "out"), *TINY_PRETRAIN, "SOLVER.MAX_ITER", "20", "SOLVER.CHECKPOINT_PERIOD", "1",
            "SOLVER.BASE_LR", "1e12", "SOLVER.WARMUP_ITERS", "0", "TEST.EVAL_PERIOD", "0"]
    result = subprocess.run([sys.executable, "tools/pretrain_net.py", "--config-file", PRETRAIN_DEMO, *opts], cwd=ROOT,
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr, (result.stdout + result.stderr)[-3000:]
    message = result.stderr.strip().splitlines()[-1]
    match = re.fullmatch(r"error: training stopped, (the loss is|the model's weights are) not finite: .*"
                         r"iteration=(\d+).* The last good checkpoint is kept: (.*)\. Lower SOLVER.BASE_LR .*", message)
    assert match, result.stderr[-3000:]
    iteration, last = int(match[2]), (tmp_path / "out" / (tmp_path / "out" / "last_checkpoint").read_text())
    assert match[3] == str(last)
    checkpoint = torch.load(last, map_location="cpu", weights_only=False)
    assert checkpoint["iteration"] == iteration - 1 and finite(checkpoint)
