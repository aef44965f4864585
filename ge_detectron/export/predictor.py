"""``ExportedPredictor``: an exported detector (``model.onnx`` in ONNX Runtime, ``model.ts`` in TorchScript)
with the PyTorch predictor's steps around it, from the JSON file beside it: the test resize of
``detection.images``, rescaling to the input's size and mask pasting; ``detection.images`` reads its inputs,
draws its detections and writes COCO results as for the PyTorch predictor (tools/predict.py --onnx). It
builds no model and reads no config."""
import json
import os

import torch
import torchvision  # noqa: F401  (registers roi_align and nms, which the TorchScript files call)
from detectron2.data import transforms as T
from detectron2.data.catalog import Metadata

from ..detection.images import PredictError, model_input
from .exporter import spec_path
from .schema import schema_from_json
from .spec import SpecError
from .tracing import augmentations_from_json, detector_postprocess

__all__ = ["ExportedPredictor", "onnx_runner", "torchscript_runner"]


def onnx_runner(path):
    """A function (C, H, W) uint8 tensor -> the graph's outputs as tensors, in ONNX Runtime on the CPU."""
    import onnxruntime  # the optional "export" extra: only predicting with a .onnx file needs it

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda image: [torch.from_numpy(o) for o in session.run(None, {name: image.numpy()})]


def torchscript_runner(path):
    """The same for a TorchScript file (torchvision registers the roi_align and nms it calls)."""
    module = torch.jit.load(path, map_location="cpu").eval()

    def run(image):
        with torch.no_grad():
            return list(module(image))

    return run


class ExportedPredictor:
    """Predicts like ``detection.predictor.Predictor`` (``__call__(image) -> Instances`` at the image's size;
    ``image_format``, ``metadata``, ``categories``) with the exported file ``path`` (.onnx or .ts) and the
    ``<file>.json`` beside it. The JSON is read as data
    (export.spec); a ``.ts`` file is TorchScript, a program: load only trusted ones."""

    def __init__(self, path):
        if not os.path.isfile(path):
            raise PredictError(f"exported model not found: {path!r}.")
        if not os.path.isfile(spec_path(path)):
            raise PredictError(f"{spec_path(path)!r} is missing: it is written by tools/export_model.py beside "
                               f"{os.path.basename(path)}; export the model again.")
        try:  # all of the spec, before the model is loaded
            with open(spec_path(path)) as f:
                self.spec = json.load(f)
            self.augmentations = T.AugmentationList(augmentations_from_json(self.spec["test_resize"]))
            self.image_format = self.spec["input"]["image_format"]
            self.outputs_schema = schema_from_json(self.spec["outputs_schema"])
            names, ids = self.spec["class_names"], self.spec["category_ids"]
        except SpecError as e:
            raise PredictError(f"{spec_path(path)} was not used: {e}. Nothing was built from it.") from None
        except (ValueError, KeyError, TypeError, AttributeError) as e:  # not JSON, or not the exporter's layout
            raise PredictError(f"{spec_path(path)} is not a spec of tools/export_model.py ({type(e).__name__}: "
                               f"{e}): export the model again.") from None
        self.run = onnx_runner(path) if path.endswith(".onnx") else torchscript_runner(path)
        self.metadata = Metadata(name=os.path.basename(path), thing_classes=names) if names else Metadata(name="unknown")
        self.categories = list(zip(ids, names)) if ids else None

    def __call__(self, image):
        """``Instances`` of one HWC image in ``self.image_format``, at its size, on the CPU."""
        height, width = image.shape[:2]
        instances = self.outputs_schema(self.run(model_input(self.augmentations, image)))
        return detector_postprocess(instances, height, width)
