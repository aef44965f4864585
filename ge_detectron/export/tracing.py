"""What an exported detector computes, and the glue around it that stays in Python.

The exported graph is detectron2's model from the resized image to its ``Instances`` at the resized size,
traced through detectron2's ``TracingAdapter``: its input is the (C, H, W) uint8 image the test mapper
produced, any H and W; its outputs are the flat tensors of those ``Instances``. Resizing before the graph
and ``detector_postprocess`` after it (rescaling to the input's size, pasting masks) are the PyTorch
predictor's own steps (``tools/predict.py``), run by ``ExportedPredictor`` with detectron2's code.
"""
import inspect

from detectron2.export import TracingAdapter
from detectron2.modeling import GeneralizedRCNN
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.utils.registry import _convert_target_to_string, locate

__all__ = ["tracing_adapter", "augmentations_to_json", "augmentations_from_json", "detector_postprocess"]


def _instances_at_input_size(model, inputs):
    """The model's ``Instances`` for one image, at that image's size. R-CNNs skip their own post-processing
    (it would paste masks at a fixed size); other detectors (RetinaNet) rescale to the image's own size,
    which changes nothing but clipping."""
    if isinstance(model, GeneralizedRCNN):
        return model.inference(inputs, do_postprocess=False)[0]
    return model(inputs)[0]["instances"]


def tracing_adapter(model, image):
    """detectron2's TracingAdapter of ``model`` on one resized (C, H, W) image tensor, both in eval mode (the
    ONNX exporter leaves a module in the mode it found it in, and the adapter's mode is the model's)."""
    return TracingAdapter(model, [{"image": image}], _instances_at_input_size).eval()


def augmentations_to_json(augmentations):
    """The test mapper's augmentations (a ``T.AugmentationList`` or list) as [{"class", "args"}]: each
    augmentation's constructor arguments, read back from the attributes detectron2 stores them in."""
    described = []
    for aug in getattr(augmentations, "augs", augmentations):
        names = [n for n in inspect.signature(type(aug).__init__).parameters if n != "self" and hasattr(aug, n)]
        args = {n: list(v) if isinstance(v, tuple) else v for n, v in ((n, getattr(aug, n)) for n in names)}
        described.append({"class": _convert_target_to_string(type(aug)), "args": args})
    return described


def augmentations_from_json(described):
    """The augmentations ``augmentations_to_json`` described."""
    return [locate(a["class"])(**a["args"]) for a in described]
