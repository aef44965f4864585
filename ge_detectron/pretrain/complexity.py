"""Parameter and FLOP counts of GE classifiers and detectors (tools/analyze_model.py).

FLOPs are fvcore's: one fused multiply-add counts as one FLOP, convolutions, linear layers, norms
and adaptive pooling are counted, and element-wise operations (ReLU, sigmoid, the excite
multiplication, the residual add, fixed-window pooling) are not.
"""
import torch
from detectron2.export.flatten import TracingAdapter
from detectron2.modeling import build_model
from fvcore.nn import FlopCountAnalysis

from ..config import get_ge_cfg
from ..modeling.classifier import build_ge_classifier
from .config import get_pretrain_cfg


def classifier_cfg(config_file, depth, variant, extent):
    """The classifier config of pretraining config ``config_file`` (e.g. configs/pretrain/Base-ImageNet.yaml:
    1000 classes, GE in every stage) at one grid point, for counting on the CPU."""
    return get_pretrain_cfg(config_file, ["MODEL.RESNETS.DEPTH", depth, "MODEL.GE.VARIANT", variant,
                                          "MODEL.GE.EXTENT", extent, "MODEL.GE.FUSED", "off", "MODEL.DEVICE", "cpu"])


def count_parameters(model):
    return sum(p.numel() for p in model.parameters())


def _quiet(analysis):
    return analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)


def classifier_stats(cfg, size=224):
    """(parameters, FLOPs) of ``build_ge_classifier(cfg)`` on one size x size image."""
    model = build_ge_classifier(cfg).eval()
    with torch.no_grad():
        flops = _quiet(FlopCountAnalysis(model, (torch.zeros(1, 3, size, size),))).total()
    return count_parameters(model), flops


def detector_cfg(config_file):
    """A detection config for counting: on the CPU, with the RPN's NMS off (see ``detector_stats``)."""
    return get_ge_cfg(config_file, ["MODEL.DEVICE", "cpu", "MODEL.GE.FUSED", "off", "MODEL.RPN.NMS_THRESH", 1.0])


def detector_stats(cfg, height=800, width=1333):
    """(parameters, FLOPs) of ``cfg``'s detector in inference on one height x width image, its ROI head
    given exactly MODEL.RPN.POST_NMS_TOPK_TEST proposals (the C4 head's cost is proportional to their
    number). With random weights the RPN's box deltas push proposals out of the image, so they are
    zeroed here (proposals = anchors); ``detector_cfg`` turns off the NMS that would thin them out."""
    model = build_model(cfg).eval()
    deltas = model.proposal_generator.rpn_head.anchor_deltas
    torch.nn.init.zeros_(deltas.weight)
    torch.nn.init.zeros_(deltas.bias)
    # detectron2.utils.analysis.FlopCountAnalysis traces the same way but also stops counting norms,
    # which the classifier counts (fvcore's defaults); the same counting rules for both here.
    adapter = TracingAdapter(model, [{"image": torch.zeros(3, height, width)}], allow_non_tensor=True)
    with torch.no_grad():
        flops = _quiet(FlopCountAnalysis(adapter, adapter.flattened_inputs)).total()
    return count_parameters(model), flops


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])
