"""Weight hand-off: torchvision and pretraining checkpoints -> detectron2 backbone checkpoints."""
import os
import pickle
import re

import ge_detectron  # noqa: F401  (compat fixes first)
import pytest
import torch
import torchvision
from detectron2.checkpoint import DetectionCheckpointer
from ge_detectron.checkpoint import load_weights
from ge_detectron.config import get_ge_cfg
from ge_detectron.modeling.classifier import build_ge_classifier
from ge_detectron.pretrain import ClassificationTask, get_pretrain_cfg, load_into_detector, to_backbone_checkpoint
from ge_detectron.pretrain.convert import (classifier_to_backbone_names, detect_format, load_state_dict,
                                           torchvision_to_detectron2)

ROOT = os.path.join(os.path.dirname(__file__), "..")
CONFIGS = os.path.join(ROOT, "configs")
# Parameters a detector gets from no ImageNet checkpoint: the RPN and the box predictor.
HEAD = re.compile(r"^(proposal_generator\.|roi_heads\.box_predictor\.)")
# Where the ResNet's weights live in the C4 detector.
BACKBONE = re.compile(r"^(backbone\.|roi_heads\.res5\.)")


def randomize_norms(model, seed=0):
    """Give every BatchNorm / FrozenBN non-trivial statistics and affine parameters, so that a weight
    put in the wrong norm layer changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "running_var") and module.running_var is not None:
                n = module.running_var.numel()
                module.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                module.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
                module.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return model


def write_pkl(path, checkpoint):
    with open(path, "wb") as f:
        pickle.dump(checkpoint, f)
    return str(path)


@pytest.fixture(scope="module")
def torchvision_r50(tmp_path_factory):
    """A randomly initialised torchvision ResNet-50 (eval mode) and its converted .pkl."""
    torch.manual_seed(0)
    model = randomize_norms(torchvision.models.resnet50()).eval()
    pth = tmp_path_factory.mktemp("tv") / "resnet50.pth"
    torch.save(model.state_dict(), pth)
    state_dict = load_state_dict(str(pth))
    assert detect_format(state_dict) == "torchvision"
    pkl = write_pkl(pth.with_suffix(".pkl"), to_backbone_checkpoint(state_dict, "torchvision", "test"))
    return model, pkl


def classifier_from_torchvision(pkl, tv_model, opts=()):
    """Our GE "none" classifier under the torchvision detection config's conventions, with the converted
    backbone loaded through detectron2's checkpointer and torchvision's fc copied into the linear layer."""
    cfg = get_pretrain_cfg(os.path.join(CONFIGS, "faster_rcnn_ge_r50_torchvision.yaml"),
                           ["MODEL.GE.VARIANT", "none", "MODEL.DEVICE", "cpu", *opts])
    classifier = build_ge_classifier(cfg).eval()
    incompatible = load_weights(classifier, pkl)
    assert sorted(incompatible.missing_keys) == ["resnet.linear.bias", "resnet.linear.weight"]
    classifier.resnet.linear.load_state_dict(tv_model.fc.state_dict())
    return classifier


def torchvision_input(pixels_rgb):
    """torchvision's preprocessing of 0-255 RGB pixels: 0-1, then ImageNet mean and std."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (pixels_rgb / 255 - mean) / std


def test_converted_torchvision_weights_reproduce_torchvision_logits(torchvision_r50):
    tv_model, pkl = torchvision_r50
    pixels = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(1)) * 255
    with torch.no_grad():
        expected = tv_model(torchvision_input(pixels))
        ours = classifier_from_torchvision(pkl, tv_model)(pixels)
        # The same weights with the stride in the 1x1 conv (MSRA convention) must not match: the
        # comparison is sensitive to the documented STRIDE_IN_1X1 difference.
        wrong_stride = classifier_from_torchvision(pkl, tv_model, ["MODEL.RESNETS.STRIDE_IN_1X1", "True"])(pixels)
    scale = expected.abs().max()
    assert scale > 0
    torch.testing.assert_close(ours / scale, expected / scale, atol=1e-5, rtol=0)
    assert (wrong_stride - expected).abs().max() / scale > 1e-2


@pytest.mark.parametrize("config", ["faster_rcnn_ge_r50.yaml", "faster_rcnn_ge_r50_torchvision.yaml"])
def test_torchvision_checkpoint_loads_with_only_ge_parameters_missing(torchvision_r50, config):
    _, pkl = torchvision_r50
    model, incompatible = load_into_detector(get_ge_cfg(os.path.join(CONFIGS, config), ["MODEL.DEVICE", "cpu"]), pkl)
    ge_keys = {k for k in model.state_dict() if ".ge." in k}
    assert ge_keys, "the detector should have GE modules in res3-res5"
    missing_backbone = {k for k in incompatible.missing_keys if not HEAD.match(k)}
    # FrozenBN fills in absent running statistics itself, so only GE parameters are reported.
    assert missing_backbone == {k for k in ge_keys if k.endswith(("weight", "bias"))}
    assert all(BACKBONE.match(k) for k in missing_backbone)
    assert incompatible.unexpected_keys == [] and incompatible.incorrect_shapes == []


def test_conversion_rejects_a_non_resnet_name():
    with pytest.raises(ValueError, match="classifier.weight"):
        torchvision_to_detectron2({"conv1.weight": torch.zeros(1), "classifier.weight": torch.zeros(1)})


def test_prefix_stripping_keeps_only_the_resnet():
    renamed = classifier_to_backbone_names({"module.classifier.resnet.stem.conv1.weight": 1,
                                            "module.classifier.resnet.res2.0.ge.gather.0.weight": 2,
                                            "module.classifier.pixel_mean": 3})
    assert renamed == {"stem.conv1.weight": 1, "res2.0.ge.gather.0.weight": 2}


@pytest.fixture(scope="module")
def pretrained_theta_e8(tmp_path_factory):
    """A pretraining checkpoint of configs/pretrain/r50_theta_e8.yaml as tools/pretrain_net.py saves it
    (random weights, random norm statistics) and its converted .pkl."""
    cfg = get_pretrain_cfg(os.path.join(CONFIGS, "pretrain", "r50_theta_e8.yaml"), ["MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    task = randomize_norms(ClassificationTask(build_ge_classifier(cfg))).eval()
    out = tmp_path_factory.mktemp("pretrain")
    DetectionCheckpointer(task, save_dir=str(out)).save("model_final", iteration=9)
    state_dict = load_state_dict(str(out / "model_final.pth"))
    assert detect_format(state_dict) == "pretrain"
    pkl = write_pkl(out / "backbone.pkl", to_backbone_checkpoint(state_dict, "pretrain", "test"))
    return task.classifier, pkl


def test_pretraining_checkpoint_loads_into_faster_rcnn_ge_r50_with_no_backbone_key_missing(pretrained_theta_e8):
    _, pkl = pretrained_theta_e8
    _, incompatible = load_into_detector(get_ge_cfg(os.path.join(CONFIGS, "faster_rcnn_ge_r50.yaml"),
                                                    ["MODEL.DEVICE", "cpu"]), pkl)
    assert incompatible.missing_keys and all(HEAD.match(k) for k in incompatible.missing_keys)
    # This detector has no GE in res2, so the checkpoint's res2 GE weights are the only ones unused.
    assert incompatible.unexpected_keys and all(re.match(r"^res2\.\d+\.ge\.", k) for k in incompatible.unexpected_keys)


def test_pretraining_checkpoint_gives_the_detector_the_classifier_features(pretrained_theta_e8):
    classifier, pkl = pretrained_theta_e8
    cfg = get_ge_cfg(os.path.join(CONFIGS, "faster_rcnn_ge_r50_pretrained.yaml"), ["MODEL.DEVICE", "cpu"])
    detector, incompatible = load_into_detector(cfg, pkl)
    assert all(HEAD.match(k) for k in incompatible.missing_keys) and incompatible.unexpected_keys == []
    detector.eval()
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    resnet = classifier.resnet
    with torch.no_grad():
        expected = resnet.res3(resnet.res2(resnet.stem(x)))
        expected = resnet.res4(expected), resnet.res5(resnet.res4(expected))
        res4 = detector.backbone(x)["res4"]
        got = res4, detector.roi_heads.res5(res4)
    for e, g in zip(expected, got):  # BN in eval mode and FrozenBN compute the same function
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4)


def lookup(cfg, key):
    for part in key.split("."):
        cfg = cfg[part]
    return list(cfg) if isinstance(cfg, (list, tuple)) else cfg


def test_pretrained_detection_configs_match_the_pretraining_config():
    pretrain = get_pretrain_cfg(os.path.join(CONFIGS, "pretrain", "r50_theta_e8.yaml"))
    for config in ("faster_rcnn_ge_r50_pretrained.yaml", "faster_rcnn_ge_r50_fpn_pretrained.yaml"):
        detection = get_ge_cfg(os.path.join(CONFIGS, config))
        for key in ("INPUT.FORMAT", "MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD", "MODEL.RESNETS.STRIDE_IN_1X1",
                    "MODEL.RESNETS.DEPTH", "MODEL.GE.VARIANT", "MODEL.GE.EXTENT", "MODEL.GE.STAGES"):
            assert lookup(detection, key) == lookup(pretrain, key), (config, key)
