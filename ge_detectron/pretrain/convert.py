"""Weight hand-off: pretraining checkpoints and torchvision ResNets -> detectron2 backbone checkpoints.

The output is a detectron2 model-zoo style ``.pkl``: ``{"model": {name: ndarray}, "__author__": ...,
"matching_heuristics": True}`` with the names of a bare GE-ResNet (``stem.conv1.weight``,
``res2.0.conv1.norm.running_mean``, ``res4.5.ge.gather.0.weight``, ...). With matching heuristics,
detectron2's DetectionCheckpointer maps each name onto its suffix in the detector
(``backbone.res2...``, ``backbone.bottom_up.res2...``, ``roi_heads.res5...``), whatever the architecture.
"""
import re

from detectron2.modeling import build_model

from ..checkpoint import load_weights
from ..safe_load import load_torch

# What a detection config must set to use torchvision weights (configs/faster_rcnn_ge_r50_torchvision.yaml):
# torchvision puts the stride of a bottleneck's first block in its 3x3 conv and normalises RGB input in
# 0-1 by mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225), i.e. these values in 0-255.
TORCHVISION_CONVENTIONS = {
    "MODEL.RESNETS.STRIDE_IN_1X1": False,
    "INPUT.FORMAT": "RGB",
    "MODEL.PIXEL_MEAN": [123.675, 116.28, 103.53],
    "MODEL.PIXEL_STD": [58.395, 57.12, 57.375],
}

_TORCHVISION_RULES = [  # (torchvision name, detectron2 name); layerN is resN+1
    (r"conv1\.(.+)", r"stem.conv1.\1"),
    (r"bn1\.(.+)", r"stem.conv1.norm.\1"),
    (r"layer(\d)\.(\d+)\.conv(\d)\.(.+)", lambda m: f"res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.{m[4]}"),
    (r"layer(\d)\.(\d+)\.bn(\d)\.(.+)", lambda m: f"res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.norm.{m[4]}"),
    (r"layer(\d)\.(\d+)\.downsample\.0\.(.+)", lambda m: f"res{int(m[1]) + 1}.{m[2]}.shortcut.{m[3]}"),
    (r"layer(\d)\.(\d+)\.downsample\.1\.(.+)", lambda m: f"res{int(m[1]) + 1}.{m[2]}.shortcut.norm.{m[3]}"),
    (r"fc\.(.+)", r"linear.\1"),
]


def torchvision_to_detectron2(state_dict):
    """Rename a torchvision ResNet-50/101/152 state_dict to the names of our GE-ResNet (``fc`` -> ``linear``)."""
    renamed = {}
    for name, value in state_dict.items():
        for pattern, replacement in _TORCHVISION_RULES:
            new_name, found = re.subn(f"^{pattern}$", replacement, name)
            if found:
                renamed[new_name] = value
                break
        else:
            raise ValueError(f"{name!r} is not a torchvision ResNet parameter name.")
    return renamed


def classifier_to_backbone_names(state_dict):
    """Strip whatever wraps the ResNet (``classifier.resnet.`` in pretraining checkpoints, ``module.``
    from DistributedDataParallel) and drop everything outside it."""
    stems = [name for name in state_dict if name == "stem.conv1.weight" or name.endswith(".stem.conv1.weight")]
    if len(stems) != 1:
        raise ValueError(f"expected one ResNet in the checkpoint, found {len(stems)} 'stem.conv1.weight' entries.")
    prefix = stems[0][: -len("stem.conv1.weight")]
    return {name[len(prefix):]: value for name, value in state_dict.items() if name.startswith(prefix)}


def load_state_dict(path):
    """The model state_dict in a ``.pth`` file: the file itself, or its "model" / "state_dict" entry. Read
    with ``safe_load.load_torch`` (weights_only: UnsafeFileError for a file that refers to code)."""
    data = load_torch(path, path)
    for key in ("model", "state_dict"):
        if isinstance(data.get(key), dict):
            return data[key]
    return data


def detect_format(state_dict):
    """"torchvision" (names like ``layer1.0.conv1.weight``) or "pretrain" (GE-ResNet names)."""
    if any(re.match(r"^(module\.)?layer1\.0\.conv1\.weight$", name) for name in state_dict):
        return "torchvision"
    return "pretrain"


def to_backbone_checkpoint(state_dict, source_format, author):
    """The detectron2 ``.pkl`` content for a pretraining or torchvision state_dict: backbone weights only
    (no classifier layer, no BatchNorm ``num_batches_tracked`` counters)."""
    if source_format == "torchvision":
        state_dict = torchvision_to_detectron2({re.sub(r"^module\.", "", k): v for k, v in state_dict.items()})
    else:
        state_dict = classifier_to_backbone_names(state_dict)
    weights = {name: value.detach().cpu().numpy() for name, value in state_dict.items()
               if not name.startswith("linear.") and not name.endswith("num_batches_tracked")}
    return {"model": weights, "__author__": author, "matching_heuristics": True}


def load_into_detector(cfg, weights):
    """Build ``cfg``'s detector and load ``weights`` as MODEL.WEIGHTS would; return (model, incompatible),
    where incompatible has ``missing_keys``, ``unexpected_keys`` and ``incorrect_shapes``."""
    model = build_model(cfg)
    return model, load_weights(model, weights)
