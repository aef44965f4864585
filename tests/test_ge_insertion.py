"""MODEL.GE.INIT "identity": GE modules that the loaded weights lack are inserted so that the GE detector
computes the plain detector of those weights (detectron2's own BottleneckBlocks, the reference), in eval
and training mode; with "paper" it does not. The gate's last layer still learns; weights that hold the GE
modules load unchanged; the config errors."""
import logging

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import instantiate
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from torch import nn

from helpers import PAPER, tiny_lazy_cfg

from ge_detectron import GEBottleneckBlock, GEConfigError
from ge_detectron.checkpoint import GECheckpointer
from ge_detectron.config import get_ge_cfg
from ge_detectron.modeling import make_ge_stage

ALL_STAGES = ["res2", "res3", "res4", "res5"]
# narrow, but with channels GroupNorm's 32 groups divide
WIDTHS = ["MODEL.RESNETS.STEM_OUT_CHANNELS", 32, "MODEL.RESNETS.WIDTH_PER_GROUP", 32, "MODEL.RESNETS.RES2_OUT_CHANNELS",
          128, "MODEL.FPN.OUT_CHANNELS", 32, "MODEL.ROI_BOX_HEAD.FC_DIM", 64]
SMALL_HEADS = ["MODEL.RPN.POST_NMS_TOPK_TEST", 30, "MODEL.RPN.POST_NMS_TOPK_TRAIN", 60,
               "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 16, "MODEL.ROI_HEADS.NUM_CLASSES", 4,
               "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0]  # keep every detection: more to compare


def detector_cfg(meta, variant, norm, init="paper", stages=ALL_STAGES, freeze_at=0):
    base = {"c4": "configs/Base-GE-RCNN-C4.yaml", "fpn": "configs/Base-GE-RCNN-FPN.yaml"}[meta]
    return get_ge_cfg(base, ["MODEL.DEVICE", "cpu", "MODEL.GE.VARIANT", variant, "MODEL.GE.EXTENT", 4,
                             "MODEL.GE.INIT", init, "MODEL.GE.STAGES", list(stages), "MODEL.RESNETS.NORM", norm,
                             "MODEL.BACKBONE.FREEZE_AT", freeze_at, *WIDTHS, *SMALL_HEADS])


def calibrate_norms(model, generator):
    """Non-trivial norm affines and statistics, as pretrained weights have them (a fresh norm is the identity,
    which would hide a wrong scaling of the residual branch's last norm)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, FrozenBatchNorm2d)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=generator) * 0.2)
            if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=generator) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator) + 0.5)


def plain_weights(cfg_or_model, tmp_path):
    """A plain detector (no GE) with calibrated norms, saved as a detectron2 checkpoint: (model, path)."""
    torch.manual_seed(0)
    plain = build_model(cfg_or_model) if not isinstance(cfg_or_model, nn.Module) else cfg_or_model
    calibrate_norms(plain, torch.Generator().manual_seed(1))
    DetectionCheckpointer(plain, save_dir=str(tmp_path)).save("plain")
    return plain, str(tmp_path / "plain.pth")


def batch():
    g = torch.Generator().manual_seed(2)
    inputs = []
    for _ in range(2):
        boxes = Boxes(torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 10.0, 60.0, 50.0]]))
        instances = Instances((64, 64), gt_boxes=boxes, gt_classes=torch.tensor([1, 3]))
        inputs.append({"image": torch.randint(0, 256, (3, 64, 64), generator=g).float(), "height": 64, "width": 64,
                       "instances": instances})
    return inputs


def outputs(model, training):
    """Backbone features and, in eval mode, the detections (boxes, scores, classes), in training mode the
    losses (RPN and ROI sampling seeded alike for every model)."""
    model.train(training)
    inputs = batch()
    images = model.preprocess_image(inputs)
    result = {f"feature {k}": v for k, v in model.backbone(images.tensor).items()}
    torch.manual_seed(3)
    if training:
        with EventStorage():
            result.update(model(inputs))
    else:
        with torch.no_grad():
            for i, out in enumerate(model(inputs)):
                inst = out["instances"]
                result.update({f"{i} boxes": inst.pred_boxes.tensor, f"{i} scores": inst.scores,
                               f"{i} classes": inst.pred_classes})
    return result


def load(model, path):
    GECheckpointer(model).load(path)
    return model


def gate_last_layers(model):
    return {name: (b.ge.mlp[-1] if b.ge.mlp is not None else b.ge.gather[-1]).weight
            for name, b in model.named_modules() if isinstance(b, GEBottleneckBlock)}


def check_identity_and_paper(plain, identity, paper):
    for training in (False, True):
        expected = outputs(plain, training)
        got = outputs(identity, training)
        assert got.keys() == expected.keys() and any("boxes" in k or "loss" in k for k in got)
        for k in expected:
            torch.testing.assert_close(got[k], expected[k], msg=f"{k}, training={training}")
        if training:  # step 0: the gate's last layer (zero) gets gradients
            sum(v for k, v in got.items() if k.startswith("loss")).backward()
            last_layers = gate_last_layers(identity)
            assert last_layers
            for name, weight in last_layers.items():
                assert weight.grad is not None and weight.grad.abs().max() > 0, name
        if not training:
            damaged = outputs(paper, training)
            for k in expected:
                if k.startswith("feature"):
                    assert (damaged[k] - expected[k]).abs().max() > 1e-2 * expected[k].abs().max(), k


# every norm, variant and detector kind in the unmarked cases; the other combinations marked slow
@pytest.mark.parametrize("meta,variant,norm", [
    ("c4", "theta", "FrozenBN"), ("fpn", "theta_plus", "GN"), ("fpn", "se", "BN"),
    *(pytest.param(*case, marks=pytest.mark.slow) for case in (
        ("fpn", "theta", "BN"), ("c4", "theta_plus", "BN"), ("c4", "theta", "GN"), ("fpn", "se", "FrozenBN"))),
])
def test_identity_insertion_computes_the_plain_detector_and_paper_does_not(meta, variant, norm, tmp_path, caplog):
    plain, path = plain_weights(detector_cfg(meta, "none", norm), tmp_path)
    with caplog.at_level(logging.INFO, logger="ge_detectron.checkpoint"):
        identity = load(build_model(detector_cfg(meta, variant, norm, "identity")), path)
    paper = load(build_model(detector_cfg(meta, variant, norm, "paper")), path)
    blocks = {"fpn": "backbone.bottom_up.res2 (3), backbone.bottom_up.res3 (4), backbone.bottom_up.res4 (6), "
                     "backbone.bottom_up.res5 (3)",
              "c4": "backbone.res2 (3), backbone.res3 (4), backbone.res4 (6), roi_heads.res5 (3)"}[meta]
    logged = [r.getMessage() for r in caplog.records if "inserted as the identity" in r.getMessage()]
    assert len(logged) == 1 and f"into 16 blocks the checkpoint had no GE weights for: {blocks}." in logged[0]
    check_identity_and_paper(plain, identity, paper)


@pytest.mark.slow
def test_lazy_config_ge_init_identity_computes_the_plain_detector(tiny_shapes, tmp_path):
    def model(*extra):
        torch.manual_seed(0)
        return instantiate(tiny_lazy_cfg(PAPER, tiny_shapes, str(tmp_path), extra).model)

    plain, path = plain_weights(model("model.backbone.stages.ge_variant=none", "model.roi_heads.res5.ge_variant=none"),
                                tmp_path)
    identity = load(model(), path)  # the config's own ge_init: R-50.pkl has no GE weights
    paper = load(model("model.backbone.stages.ge_init=paper", "model.roi_heads.res5.ge_init=paper"), path)
    check_identity_and_paper(plain, identity, paper)


def test_weights_with_the_ge_modules_load_unchanged_and_only_missing_ones_are_inserted(tmp_path, caplog):
    torch.manual_seed(0)
    pretrained = build_model(detector_cfg("fpn", "theta", "BN", stages=["res3", "res4"]))
    calibrate_norms(pretrained, torch.Generator().manual_seed(1))
    DetectionCheckpointer(pretrained, save_dir=str(tmp_path)).save("ge")
    saved = pretrained.state_dict()

    model = build_model(detector_cfg("fpn", "theta", "BN", "identity", stages=["res3", "res4"]))
    load(model, str(tmp_path / "ge.pth"))
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k]), k

    model = build_model(detector_cfg("fpn", "theta", "BN", "identity", stages=["res3", "res4", "res5"]))
    with caplog.at_level(logging.INFO, logger="ge_detectron.checkpoint"):
        load(model, str(tmp_path / "ge.pth"))
    assert "into 3 blocks the checkpoint had no GE weights for: backbone.bottom_up.res5 (3)." in caplog.text
    state = model.state_dict()
    for k, v in saved.items():
        if not k.startswith("backbone.bottom_up.res5."):
            assert torch.equal(state[k], v), k
    assert not state["backbone.bottom_up.res5.0.ge.gather.2.weight"].any()  # E4: conv, ReLU, conv
    torch.testing.assert_close(state["backbone.bottom_up.res5.0.conv3.norm.weight"],
                               2 * saved["backbone.bottom_up.res5.0.conv3.norm.weight"], rtol=0, atol=0)


def test_no_weights_leave_the_initialisation_and_a_frozen_identity_gets_no_warning(tmp_path, caplog):
    torch.manual_seed(0)
    model = build_model(detector_cfg("fpn", "theta", "BN", "identity"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    GECheckpointer(model).load("")  # training from scratch: MODEL.WEIGHTS ""
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())

    _, path = plain_weights(detector_cfg("fpn", "none", "BN", freeze_at=2), tmp_path)
    model = build_model(detector_cfg("fpn", "theta", "BN", "identity", freeze_at=2))
    with caplog.at_level(logging.WARNING, logger="ge_detectron.checkpoint"):
        load(model, path)
    assert "FROZEN" not in caplog.text  # res2's GE is the plain block, not a random gate
    assert not model.backbone.bottom_up.res2[0].ge.gather[-1].weight.any()


def test_identity_with_theta_minus_is_a_one_line_config_error():
    with pytest.raises(GEConfigError, match=r"^MODEL.GE.INIT = 'identity' is invalid: theta_minus has no parameters"):
        get_ge_cfg("configs/faster_rcnn_ge_r50.yaml", ["MODEL.GE.VARIANT", "theta_minus", "MODEL.GE.INIT", "identity"])
    with pytest.raises(ValueError, match="ge_init='identity' is invalid: theta_minus has no parameters"):
        make_ge_stage(num_blocks=1, stride_per_block=[1], in_channels=64, bottleneck_channels=16, out_channels=64,
                      ge_variant="theta_minus", ge_init="identity")
