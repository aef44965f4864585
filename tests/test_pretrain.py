"""Backbone pretraining: the classifier, its data and evaluation, and the tools/pretrain_net.py flow."""
import json
import os
import re
import subprocess
import sys

import ge_detectron  # noqa: F401  (compat fixes first)
import numpy as np
import pytest
import torch
from ge_detectron.data import shape_classes
from ge_detectron.data.classification import build_eval_transform
from ge_detectron.modeling.classifier import build_ge_classifier, zero_init_residual
from ge_detectron.pretrain import ClassificationEvaluator, get_pretrain_cfg
from ge_detectron.pretrain.complexity import classifier_cfg, classifier_stats
from helpers import NARROW_R50, TINY_PRETRAIN, class_folders
from PIL import Image

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
CONFIGS = os.path.join(ROOT, "configs")
IMAGENET = os.path.join(CONFIGS, "pretrain", "Base-ImageNet.yaml")
R50_BLOCKS = [(3, 256), (4, 512), (6, 1024), (3, 2048)]  # ResNet-50: blocks and channels of res2..res5
# GE_SPEC.md: the depthwise weights of GE-theta with global extent in all stages of ResNet-50 (~5.5 M)
SPEC_GLOBAL_DEPTHWISE = 3 * 256 * 56 ** 2 + 4 * 512 * 28 ** 2 + 6 * 1024 * 14 ** 2 + 3 * 2048 * 7 ** 2


def count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("depth,variant,extent", [(50, "none", 0), (50, "se", 0), (50, "theta_minus", 8),
                                                  (50, "theta", 0), (50, "theta_plus", 4), (101, "theta_plus", 0)])
def test_classifier_maps_224_images_to_imagenet_logits(depth, variant, extent):
    model = build_ge_classifier(classifier_cfg(IMAGENET, depth, variant, extent)).eval()
    with torch.no_grad():
        logits = model(torch.rand(2, 3, 224, 224) * 255)
    assert logits.shape == (2, 1000) and torch.isfinite(logits).all()
    assert len(model.resnet.res4) == {50: 6, 101: 23}[depth]


def test_classifier_has_the_detection_backbone_module_tree():
    from detectron2.layers import ShapeSpec
    from ge_detectron.modeling import build_ge_resnet_backbone

    cfg = get_pretrain_cfg(os.path.join(CONFIGS, "pretrain", "r50_theta_e8.yaml"),
                           ["MODEL.GE.NUM_CLASSES", 10, "MODEL.RESNETS.OUT_FEATURES", ["res2", "res3", "res4", "res5"]])
    classifier = build_ge_classifier(cfg)
    backbone = build_ge_resnet_backbone(cfg, ShapeSpec(channels=3))
    assert classifier.resnet.linear.out_features == 10
    assert {k for k in classifier.resnet.state_dict() if not k.startswith("linear.")} == set(backbone.state_dict())


@pytest.mark.parametrize("norm", ["BN", "FrozenBN"])
def test_zero_init_residual_makes_every_block_the_identity_on_its_shortcut(norm):
    cfg = get_pretrain_cfg(os.path.join(CONFIGS, "pretrain", "r50_theta_plus.yaml"), ["MODEL.RESNETS.NORM", norm])
    resnet = zero_init_residual(build_ge_classifier(cfg)).resnet.eval()
    x = torch.randn(1, 256, 14, 14)
    with torch.no_grad():
        for block in (resnet.res2[1], resnet.res3[0]):  # both take 256 channels; res3[0] has a projection
            out, shortcut = block(x), block.shortcut(x) if block.shortcut is not None else x
            if norm == "BN":
                torch.testing.assert_close(out, torch.relu(shortcut))
            else:  # FrozenBN has no learnable scale to zero: the block is left as it was
                assert not torch.allclose(out, torch.relu(shortcut))


def test_parameter_counts_match_the_spec():
    none, theta_minus, theta, se = (count(build_ge_classifier(classifier_cfg(IMAGENET, 50, v, 0)))
                                    for v in ("none", "theta_minus", "theta", "se"))
    norms = sum(n * 2 * c for n, c in R50_BLOCKS)  # a weight and a bias per channel and block
    assert theta - none == SPEC_GLOBAL_DEPTHWISE + norms
    assert theta_minus == none
    assert se - none == sum(n * (2 * c * (c // 16) + c // 16 + c) for n, c in R50_BLOCKS)


def test_ge_changes_flops_by_well_under_one_percent():
    _, base = classifier_stats(classifier_cfg(IMAGENET, 50, "none", 0))
    assert 4.0e9 < base < 4.2e9  # ResNet-50 at 224: 4.1 GMACs
    for variant, extent in (("theta", 8), ("theta_plus", 0)):
        _, flops = classifier_stats(classifier_cfg(IMAGENET, 50, variant, extent))
        assert 0 < (flops - base) / base < 0.01, (variant, extent)


def test_evaluator_counts_top1_and_top5():
    logits = torch.tensor([[9.0, 8, 7, 6, 5, 4], [0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0]])
    labels = torch.tensor([0, 5, 5])  # top-1 hit, top-1 hit, outside the top 5
    evaluator = ClassificationEvaluator()
    evaluator.reset()
    evaluator.process((None, labels[:2]), logits[:2])
    evaluator.process((None, labels[2:]), logits[2:])
    assert evaluator.evaluate() == {"classification": {"top1": pytest.approx(200 / 3), "top5": pytest.approx(200 / 3)}}
    evaluator.reset()
    evaluator.process((None, torch.tensor([4, 1, 1])), logits)  # 5th best, 5th best, 5th best
    assert evaluator.evaluate() == {"classification": {"top1": 0.0, "top5": 100.0}}


@pytest.mark.parametrize("fmt,first_channel", [("RGB", 200), ("BGR", 10)])
def test_eval_transform_crops_and_orders_channels(fmt, first_channel):
    cfg = get_pretrain_cfg(os.path.join(CONFIGS, "pretrain", "demo_shapes.yaml"), ["INPUT.FORMAT", fmt])
    image = Image.new("RGB", (96, 80), (200, 100, 10))
    out = build_eval_transform(cfg)(image)
    assert out.dtype == torch.uint8 and out.shape == (3, 64, 64)
    assert out[0].unique().tolist() == [first_channel]


def test_shape_classes_are_deterministic(tmp_path):
    a = shape_classes.generate_split(str(tmp_path / "a"), 2, seed=3, size=32)
    b = shape_classes.generate_split(str(tmp_path / "b"), 2, seed=3, size=32)
    assert sorted(os.listdir(a)) == sorted(shape_classes.CLASSES)
    for cls in shape_classes.CLASSES:
        for name in ("00000.png", "00001.png"):
            pixels = [np.asarray(Image.open(os.path.join(root, cls, name))) for root in (a, b)]
            assert pixels[0].shape == (32, 32, 3) and (pixels[0] == pixels[1]).all()


def run_tool(args, env=None):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})})


@pytest.mark.slow
def test_missing_dataset_exits_with_a_short_message(tmp_path):
    result = run_tool(["tools/pretrain_net.py", "--config-file", "configs/pretrain/r50_theta.yaml"],
                      env={"DETECTRON2_DATASETS": str(tmp_path / "nowhere")})
    assert result.returncode != 0
    assert "no image folder at" in result.stderr and "imagenet/train" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_pretrain_evaluate_resume_convert_and_load_into_a_detector(tmp_path):
    """Two iterations on a tiny generated set, evaluation, a resumed third iteration, conversion, and
    loading into the GE-pretrained detection config (the detector shrunk to the demo's widths)."""
    class_folders(tmp_path, train_per_class=3, val_per_class=2)
    out = tmp_path / "out"
    model_opts = [*NARROW_R50, "MODEL.GE.EXTENT", "0", "MODEL.GE.GLOBAL_INPUT_SIZE", "32"]
    opts = ["PRETRAIN.TRAIN_DIR", str(tmp_path / "train"), "PRETRAIN.VAL_DIR", str(tmp_path / "val"), *TINY_PRETRAIN,
            "OUTPUT_DIR", str(out)]
    train = ["tools/pretrain_net.py", "--config-file", "configs/pretrain/demo_shapes.yaml"]

    result = run_tool(train + opts + ["SOLVER.MAX_ITER", "2"])
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = [json.loads(line) for line in open(out / "metrics.json")]
    assert [m["iteration"] for m in metrics if "classification/top1" in m] == [2]  # final evaluation
    assert 0 <= metrics[-1]["classification/top1"] <= metrics[-1]["classification/top5"] <= 100
    assert np.isfinite(metrics[0]["total_loss"])

    result = run_tool(train + ["--resume"] + opts + ["SOLVER.MAX_ITER", "3"])
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = [json.loads(line) for line in open(out / "metrics.json")]
    assert [m["iteration"] for m in metrics if "classification/top1" in m] == [2, 3]  # iteration 3 only: resumed

    pkl = str(tmp_path / "backbone.pkl")
    result = run_tool(["tools/convert_weights.py", str(out / "model_final.pth"), pkl,
                       "--check", "configs/faster_rcnn_ge_r50_pretrained.yaml", *model_opts])
    assert result.returncode == 0, result.stderr[-3000:]
    report = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout).split("Loaded into the detector")[1].splitlines()[2:]
    heads = ("proposal_generator.", "roi_heads.box_predictor.")
    assert report and all(line.strip().startswith(heads) for line in report), report
