"""What an exported detector computes, and the glue around it that stays in Python.

The exported graph is detectron2's model from the resized image to its ``Instances`` at the resized size,
traced through detectron2's ``TracingAdapter``: its input is the (C, H, W) uint8 image the test mapper
produced, any H and W; its outputs are the flat tensors of those ``Instances``. Resizing before the graph
and ``detector_postprocess`` after it (rescaling to the input's size, pasting masks) are the PyTorch
predictor's own steps (``tools/predict.py``), run by ``ExportedPredictor`` with detectron2's code; the
resize is written to the spec as JSON, and only detectron2's deterministic resizes (``TEST_AUGMENTATIONS``)
are built from it.
"""
import inspect

from detectron2.data import transforms as T
from detectron2.export import TracingAdapter
from detectron2.modeling import GeneralizedRCNN
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.utils.registry import _convert_target_to_string

from .spec import SpecError, build_allowed

__all__ = ["TEST_AUGMENTATIONS", "tracing_adapter", "augmentations_to_json", "augmentations_from_json",
           "detector_postprocess"]

# The test-time augmentations of detectron2 a test mapper uses (the configs' ResizeShortestEdge, a fixed
# Resize, LSJ's FixedSizeCrop), by the names augmentations_to_json writes.
TEST_AUGMENTATIONS = {_convert_target_to_string(c): c for c in (T.ResizeShortestEdge, T.Resize, T.FixedSizeCrop)}


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
    augmentation's constructor arguments, read back from the attributes detectron2 stores them in. Raises
    SpecError for an augmentation outside TEST_AUGMENTATIONS, which a spec could not be read back with."""
    described = []
    for aug in getattr(augmentations, "augs", augmentations):
        if _convert_target_to_string(type(aug)) not in TEST_AUGMENTATIONS:
            raise SpecError(f"the test mapper's augmentation {type(aug).__name__} cannot be written to an exported "
                            f"model's spec, which builds only {', '.join(c.__name__ for c in TEST_AUGMENTATIONS.values())}")
        names = [n for n in inspect.signature(type(aug).__init__).parameters if n != "self" and hasattr(aug, n)]
        args = {n: list(v) if isinstance(v, tuple) else v for n, v in ((n, getattr(aug, n)) for n in names)}
        described.append({"class": _convert_target_to_string(type(aug)), "args": args})
    return described


def augmentations_from_json(described):
    """The augmentations ``augmentations_to_json`` described. Raises SpecError (naming the class) for a class
    outside TEST_AUGMENTATIONS or arguments its constructor does not take."""
    if not isinstance(described, list):
        raise SpecError(f"the test resize is {type(described).__name__}, not a list of augmentations")
    return [build_allowed(a, TEST_AUGMENTATIONS, "args") for a in described]
