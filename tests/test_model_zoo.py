"""ge_detectron.model_zoo: configs by name, from the checkout's configs/ (the wheel's copy: tests/test_wheel.py)."""
import os

import pytest
from detectron2.config import CfgNode

from ge_detectron import GEConfigError, model_zoo
from ge_detectron.config import get_ge_cfg
from ge_detectron.detection.lazy import load_lazy_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_name_resolves_to_the_checkouts_configs():
    assert model_zoo.get_config_file("faster_rcnn_ge_r50.yaml") == os.path.join(REPO, "configs",
                                                                               "faster_rcnn_ge_r50.yaml")
    names = model_zoo.list_configs()
    assert {"faster_rcnn_ge_r50.yaml", "faster_rcnn_ge_r50.py", "demo/faster_rcnn_ge_theta_e8_r50_fpn_shapes.yaml",
            "Base-GE-RCNN-C4.yaml"} <= set(names)
    assert not [n for n in names if n.startswith("common/")]


def test_get_config_yaml_has_the_ge_keys_of_the_file_and_its_base():
    cfg = model_zoo.get_config("faster_rcnn_ge_r50.yaml", ["MODEL.DEVICE", "cpu"])
    assert isinstance(cfg, CfgNode) and cfg.is_frozen()
    assert (cfg.MODEL.GE.VARIANT, cfg.MODEL.GE.EXTENT) == ("theta", 8)  # the file's literals
    assert cfg.MODEL.BACKBONE.NAME == "build_ge_resnet_backbone"  # from _BASE_: Base-GE-RCNN-C4.yaml
    assert cfg.MODEL.DEVICE == "cpu"


def test_get_config_lazy_is_the_lazyconfig_with_its_common_imports():
    cfg = model_zoo.get_config("faster_rcnn_ge_r50.py", ["train.max_iter=7"])
    assert cfg.train.max_iter == 7
    assert "train" in cfg.dataloader  # from configs/common/data.py, a relative import of the config


def test_the_loaders_take_a_name_where_they_take_a_path():
    assert get_ge_cfg("faster_rcnn_ge_r50.yaml").MODEL.GE.EXTENT == 8
    assert load_lazy_config("faster_rcnn_ge_r50.py", ["train.max_iter=3"]).train.max_iter == 3


def test_an_unknown_name_is_one_line_saying_how_to_list_the_names():
    with pytest.raises(GEConfigError) as info:
        model_zoo.get_config_file("no_such_config.yaml")
    message = str(info.value)
    assert "'no_such_config.yaml'" in message and "model_zoo.list_configs()" in message and "\n" not in message
    with pytest.raises(GEConfigError, match="no_such_config.yaml"):
        get_ge_cfg("no_such_config.yaml")
