"""GE-ResNet backbones and the C4 ROI head: shapes, strides, freezing, checkpoints, tracing, errors."""
import logging
import pickle
import re

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import build_backbone, build_model

from ge_detectron import GatherExcite, GEBottleneckBlock, GEConfigError
from ge_detectron.checkpoint import GECheckpointer, load_weights
from ge_detectron.config import get_ge_cfg


def cfg_for(backbone="c4", depth=50, variant="theta", extent=8, stages=("res2", "res3", "res4", "res5"), **extra):
    base = {"c4": "configs/Base-GE-RCNN-C4.yaml", "fpn": "configs/Base-GE-RCNN-FPN.yaml"}[backbone]
    opts = ["MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", depth, "MODEL.GE.VARIANT", variant,
            "MODEL.GE.EXTENT", extent, "MODEL.GE.STAGES", list(stages)]
    for k, v in extra.items():
        opts += [k, v]
    return get_ge_cfg(base, opts)


@pytest.mark.parametrize("depth", [50, 101])
def test_c4_backbone_shapes(depth):
    bb = build_backbone(cfg_for("c4", depth))
    assert bb.output_shape() == {"res4": ShapeSpec(channels=1024, stride=16)}
    assert len(bb.res4) == {50: 6, 101: 23}[depth]
    out = bb(torch.randn(1, 3, 64, 96))
    assert out["res4"].shape == (1, 1024, 4, 6)
    assert all(isinstance(b, GEBottleneckBlock) for s in (bb.res2, bb.res3, bb.res4) for b in s)


@pytest.mark.parametrize("depth", [50, 101])
def test_fpn_backbone_shapes(depth):
    bb = build_backbone(cfg_for("fpn", depth))
    shapes = bb.output_shape()
    assert {k: (v.channels, v.stride) for k, v in shapes.items()} == {
        "p2": (256, 4), "p3": (256, 8), "p4": (256, 16), "p5": (256, 32), "p6": (256, 64)}
    out = bb(torch.randn(1, 3, 64, 128))
    for name, t in out.items():
        assert t.shape == (1, 256, 64 // shapes[name].stride, 128 // shapes[name].stride)
    bottom = bb.bottom_up
    assert {k: v.channels for k, v in bottom.output_shape().items()} == {"res2": 256, "res3": 512, "res4": 1024, "res5": 2048}


def test_c4_roi_head_res5_has_ge_only_when_asked():
    model = build_model(cfg_for("c4", stages=("res4", "res5")))
    assert all(isinstance(b.ge, torch.nn.Module) for b in model.roi_heads.res5)
    assert not any(isinstance(b, GEBottleneckBlock) for b in model.backbone.res3)
    model = build_model(cfg_for("c4", stages=("res4",)))
    assert not any(isinstance(b, GEBottleneckBlock) for b in model.roi_heads.res5)


def test_freeze_at_freezes_ge_with_its_stage():
    bb = build_backbone(cfg_for("fpn", **{"MODEL.BACKBONE.FREEZE_AT": 2})).bottom_up
    for name, p in bb.named_parameters():
        frozen = name.startswith(("stem.", "res2."))
        assert p.requires_grad != frozen, name
    assert isinstance(bb.res2[0].ge.gather[0].norm, FrozenBatchNorm2d)
    assert bb.res3[0].ge.gather[0].weight.requires_grad


def _plain_state_dict(backbone):
    cfg = cfg_for(backbone, variant="none")
    model = build_model(cfg)
    return model, {k: v.detach().clone() for k, v in model.state_dict().items()}


def _to_c2_name(d2_name):
    """detectron2 ResNet name -> the Caffe2 (MSRA R-50.pkl) name, the inverse of detectron2's converter."""
    name = re.sub(r"^(backbone\.(bottom_up\.)?|roi_heads\.)", "", d2_name)
    name = name.replace("norm.weight", "bn_s").replace("norm.bias", "bn_b").replace(".weight", "_w")
    if name.startswith("stem."):
        return name.replace("stem.conv1.", "res_conv1_").replace("stem.conv1_w", "conv1_w")
    for d2, c2 in (("conv1", "branch2a"), ("conv2", "branch2b"), ("conv3", "branch2c"), ("shortcut", "branch1")):
        name = name.replace(d2, c2)
    return name.replace(".", "_")


@pytest.mark.parametrize("backbone", ["c4", "fpn"])
def test_msra_style_c2_checkpoint_loads_with_only_ge_keys_missing(backbone, tmp_path):
    plain, state = _plain_state_dict(backbone)
    resnet_keys = [k for k in state if re.search(r"(stem|res\d)\.", k) and "running_" not in k]
    blobs = {_to_c2_name(k): state[k].numpy() for k in resnet_keys}
    assert "res2_0_branch2a_w" in blobs and "res_conv1_bn_s" in blobs and "conv1_w" in blobs
    path = tmp_path / "R-50.pkl"
    path.write_bytes(pickle.dumps({"blobs": blobs}))

    model = build_model(cfg_for(backbone, stages=("res3", "res4", "res5")))
    incompatible = load_weights(model, str(path))
    ge_missing = {k for k in incompatible.missing_keys if ".ge." in k}
    resnet_missing = {k for k in incompatible.missing_keys if re.search(r"(stem|res\d)\.", k)} - ge_missing
    # FrozenBN fills absent running statistics itself, so only GE conv and norm weights are reported
    assert ge_missing == {k for k in model.state_dict() if ".ge." in k and "running_" not in k} and ge_missing
    assert not resnet_missing
    for k in resnet_keys:
        torch.testing.assert_close(model.state_dict()[k], state[k])


def test_d2_checkpoint_loads_into_ge_backbone_with_only_ge_keys_missing(tmp_path):
    plain, _ = _plain_state_dict("fpn")
    DetectionCheckpointer(plain, save_dir=str(tmp_path)).save("plain")
    model = build_model(cfg_for("fpn", variant="theta_plus", extent=0, stages=("res3", "res4", "res5")))
    incompatible = load_weights(model, str(tmp_path / "plain.pth"))
    assert incompatible.missing_keys and all(".ge." in k for k in incompatible.missing_keys)
    assert not incompatible.unexpected_keys


def test_frozen_random_ge_gets_a_loud_warning(tmp_path, caplog):
    plain, _ = _plain_state_dict("fpn")
    DetectionCheckpointer(plain, save_dir=str(tmp_path)).save("plain")
    model = build_model(cfg_for("fpn", variant="theta", stages=("res2", "res3"), **{"MODEL.BACKBONE.FREEZE_AT": 2}))
    with caplog.at_level(logging.WARNING, logger="ge_detectron.checkpoint"):
        GECheckpointer(model).load(str(tmp_path / "plain.pth"))
    ours = " ".join(r.getMessage() for r in caplog.records if r.name == "ge_detectron.checkpoint")
    assert "FROZEN" in ours and "backbone.bottom_up.res2" in ours and "res3" not in ours


@pytest.mark.parametrize("backbone,variant,extent", [("c4", "theta", 8), ("fpn", "theta_plus", 0), ("fpn", "theta_minus", 4)])
def test_jit_trace_equals_eager(backbone, variant, extent):
    torch.manual_seed(0)
    bb = build_backbone(cfg_for(backbone, variant=variant, extent=extent, **{"MODEL.RESNETS.NORM": "GN"})).eval()
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        traced = torch.jit.trace(bb, x, strict=False)
        eager, out = bb(x), traced(x)
        for module in bb.modules():  # a trace records the reference excite (deployable without the custom op)
            if isinstance(module, GatherExcite):
                module.fused = "off"
        eager_reference = bb(x)
    assert eager.keys() == out.keys()
    for k in eager:
        torch.testing.assert_close(out[k], eager_reference[k])
        # the fused kernel and the reference agree to float32 rounding, accumulated over the network
        torch.testing.assert_close(out[k], eager[k], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("key,value,message", [
    ("MODEL.GE.VARIANT", "gamma", "MODEL.GE.VARIANT = 'gamma' is invalid: allowed are 'none', 'theta_minus'"),
    ("MODEL.GE.EXTENT", 6, "MODEL.GE.EXTENT = 6 is invalid: use 0 for a global gather or a power of two"),
    ("MODEL.GE.STAGES", ["res1"], "MODEL.GE.STAGES = \\['res1'\\] is invalid"),
    ("MODEL.GE.NORM", "LayerNormX", "MODEL.GE.NORM = 'LayerNormX' is invalid"),
    ("MODEL.GE.REDUCTION", 0, "MODEL.GE.REDUCTION = 0 is invalid"),
    ("MODEL.GE.FUSED", "maybe", "MODEL.GE.FUSED = 'maybe' is invalid"),
    ("MODEL.GE.GLOBAL_INPUT_SIZE", 100, "MODEL.GE.GLOBAL_INPUT_SIZE = 100 is invalid"),
    ("MODEL.GE.INIT", "zero", "MODEL.GE.INIT = 'zero' is invalid: allowed are 'paper', 'identity'"),
])
def test_bad_config_values_raise_value_errors_naming_key_and_value(key, value, message):
    with pytest.raises(ValueError, match=message):
        get_ge_cfg("configs/faster_rcnn_ge_r50.yaml", [key, value])


def test_unsupported_depth_is_a_clear_error():
    with pytest.raises(GEConfigError, match="MODEL.RESNETS.DEPTH = 34 is invalid"):
        build_backbone(cfg_for("c4", depth=34))


@pytest.mark.parametrize("variant", ["none", "theta_plus_plus", None])
def test_ge_bottleneck_without_a_ge_variant_cannot_be_built(variant):
    # A GEBottleneckBlock always has a GE module for its tail: "none" is a plain BottleneckBlock instead.
    with pytest.raises(ValueError, match=rf"GEBottleneckBlock ge_variant={re.escape(repr(variant))} is invalid"):
        GEBottleneckBlock(64, 256, bottleneck_channels=64, ge_variant=variant)
