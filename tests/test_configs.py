"""Every YAML in configs/ merges and builds its model with the GE modules it asks for."""
import glob
import os

import pytest
import torch
from detectron2.modeling import build_model

from ge_detectron import GatherExcite, build_ge_classifier
from ge_detectron.config import get_ge_cfg
from ge_detectron.pretrain import get_pretrain_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DETECTION = sorted(glob.glob(os.path.join(REPO, "configs", "*.yaml")) + glob.glob(os.path.join(REPO, "configs", "demo", "*.yaml")))
PRETRAIN = sorted(glob.glob(os.path.join(REPO, "configs", "pretrain", "*.yaml")))


def check_ge_modules(model, cfg):
    ge_modules = [m for m in model.modules() if isinstance(m, GatherExcite)]
    assert bool(ge_modules) == (cfg.MODEL.GE.VARIANT != "none")
    assert all(m.variant == cfg.MODEL.GE.VARIANT for m in ge_modules)


@pytest.mark.parametrize("path", DETECTION, ids=lambda p: os.path.relpath(p, REPO))
def test_every_detection_config_merges_and_builds(path):
    cfg = get_ge_cfg(path, ["MODEL.DEVICE", "cpu"])
    assert cfg.MODEL.BACKBONE.NAME in ("build_ge_resnet_backbone", "build_ge_resnet_fpn_backbone",
                                       "build_ge_retinanet_resnet_fpn_backbone")
    check_ge_modules(build_model(cfg), cfg)


@pytest.mark.parametrize("path", PRETRAIN, ids=lambda p: os.path.relpath(p, REPO))
def test_every_pretrain_config_merges_and_builds_a_classifier(path):
    cfg = get_pretrain_cfg(path, ["MODEL.DEVICE", "cpu"])
    model = build_ge_classifier(cfg).eval()
    check_ge_modules(model, cfg)
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, cfg.MODEL.GE.NUM_CLASSES)
