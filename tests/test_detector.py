"""Faster R-CNN with GE end to end on tiny generated data, every shipped config, and train_net's errors."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from detectron2.data import MetadataCatalog

from ge_detectron.config import get_ge_cfg
from ge_detectron.detection import DetectionTrainer as Trainer

pytestmark = pytest.mark.slow  # every test here trains or runs a subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_cfg(base, tiny_shapes, output_dir, extra=()):
    return get_ge_cfg(os.path.join(REPO, base), [
        "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.RESNETS.NORM", "GN", "MODEL.BACKBONE.FREEZE_AT", 0,
        "MODEL.ROI_HEADS.NUM_CLASSES", 4, "MODEL.RPN.POST_NMS_TOPK_TEST", 50, "MODEL.RPN.PRE_NMS_TOPK_TEST", 200,
        "DATASETS.TRAIN", (tiny_shapes["train"],), "DATASETS.TEST", (tiny_shapes["val"],),
        "INPUT.MIN_SIZE_TRAIN", (64,), "INPUT.MAX_SIZE_TRAIN", 64, "INPUT.MIN_SIZE_TEST", 64, "INPUT.MAX_SIZE_TEST", 64,
        "SOLVER.IMS_PER_BATCH", 2, "SOLVER.MAX_ITER", 1, "SOLVER.BASE_LR", 0.001, "DATALOADER.NUM_WORKERS", 0,
        "TEST.EVAL_PERIOD", 0, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0, "OUTPUT_DIR", str(output_dir), *extra])


@pytest.mark.parametrize("base,extra", [
    ("configs/faster_rcnn_ge_r50.yaml", ()),
    ("configs/faster_rcnn_ge_r50_fpn.yaml", ("MODEL.FPN.NORM", "GN", "MODEL.GE.VARIANT", "theta_plus", "MODEL.GE.EXTENT", 0)),
])
def test_one_training_iteration_then_evaluation_runs(base, extra, tiny_shapes, tmp_path):
    """A smoke test of the whole path: one SGD step with finite losses that moves the GE parameters, then
    tools/train_net.py's evaluation writing the detections it scored. The evaluation's numbers are checked
    against pycocotools and by hand on hand-made detections in test_evaluation.py."""
    cfg = tiny_cfg(base, tiny_shapes, tmp_path, extra)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    ge_params = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if ".ge." in n}
    assert ge_params
    trainer.train()
    assert trainer.iter == cfg.SOLVER.MAX_ITER and trainer.storage.history("total_loss").latest() > 0
    losses = {k: h.latest() for k, h in trainer.storage.histories().items() if k.startswith("loss_")}
    assert {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"} <= set(losses)
    assert all(math.isfinite(v) for v in losses.values()), losses
    changed = [n for n, p in trainer.model.named_parameters() if n in ge_params and not torch.equal(p, ge_params[n])]
    assert changed, "one SGD step should move the GE parameters"

    results = Trainer.test(cfg, trainer.model)["bbox"]
    assert list(results)[:6] == ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    detections = json.load(open(tmp_path / "inference" / "coco_instances_results.json"))
    assert detections, "SCORE_THRESH_TEST 0 keeps the untrained model's boxes"
    image_ids = {image["id"] for image in json.load(open(MetadataCatalog.get(tiny_shapes["val"]).json_file))["images"]}
    assert {d["image_id"] for d in detections} <= image_ids and all(0 <= d["score"] <= 1 for d in detections)


def run_train_net(*args, env=None):
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", "train_net.py"), *args], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=300)


def test_train_net_without_coco_exits_with_a_short_message(tmp_path):
    result = run_train_net("--config-file", "configs/faster_rcnn_ge_r50.yaml", env={"DETECTRON2_DATASETS": str(tmp_path)})
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "coco_2014_train" in result.stderr and str(tmp_path) in result.stderr
    assert "DETECTRON2_DATASETS" in result.stderr and "make demo" in result.stderr


def test_train_net_with_a_bad_extent_exits_with_a_short_message():
    result = run_train_net("--config-file", "configs/faster_rcnn_ge_r50.yaml", "MODEL.GE.EXTENT", "6")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "MODEL.GE.EXTENT = 6 is invalid" in result.stderr and "power of two" in result.stderr
