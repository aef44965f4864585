"""Export a Predictor's detector to TorchScript or ONNX: the model file and a JSON file beside it with what
the deployed side needs to prepare images and read the outputs (docs/export.md)."""
import io
from importlib.metadata import version
import json
import os

import detectron2
import numpy as np
import torch

from ..atomic import AtomicFile
from ..detection.images import model_input
from .schema import schema_to_json
from .tracing import augmentations_to_json, tracing_adapter

__all__ = ["ExportError", "FORMATS", "ONNX_OPSET", "check_format", "export_predictor", "spec_path", "sample_input",
           "foreign_operators"]

FORMATS = {"torchscript": "model.ts", "onnx": "model.onnx"}
# RoIAlign with aligned=True (detectron2's ROIAlign) needs opset 16 (coordinate_transformation_mode)
ONNX_OPSET = 17
# the namespaces a TorchScript file may call: torch's own and torchvision's (roi_align, nms)
TORCHSCRIPT_NAMESPACES = ("aten", "prim", "torchvision")


class ExportError(ValueError):
    """An output folder that cannot be written, a format that does not exist, or a graph with operators
    outside the format's standard set."""


def check_format(fmt, name="format"):
    """Raise ExportError unless ``fmt`` is one of FORMATS; ``name``: what the message calls it (the tool:
    ``--format``), so that the tool checks before building the model with the exporter's own check."""
    if fmt not in FORMATS:
        raise ExportError(f"{name} {fmt!r} is not one of {', '.join(FORMATS)}.")


def spec_path(model_path):
    """The JSON file beside an exported model file: ``model.onnx`` -> ``model.onnx.json`` (one per format,
    so both formats can share a folder)."""
    return model_path + ".json"


def sample_input(predictor, image=None):
    """The resized (C, H, W) uint8 tensor the model sees for ``image`` (HWC in the predictor's format);
    without one a seeded 480 x 640 noise image. Any image traces the same graph; one with detections
    is what ``--sample-image`` is for (the trace also runs the model once)."""
    if image is None:
        image = np.random.default_rng(0).integers(0, 256, size=(480, 640, 3), dtype=np.uint8)
    return model_input(predictor.augmentations, image)


def foreign_operators(fmt, model_bytes):
    """The operators of an exported file outside the format's standard set (sorted names)."""
    if fmt == "onnx":
        import onnx  # the optional "export" extra: only ONNX export needs it

        model = onnx.load_from_string(model_bytes)
        return sorted({f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain not in ("", "ai.onnx")})
    graph = torch.jit.load(io.BytesIO(model_bytes)).inlined_graph
    return sorted({n.kind() for n in graph.nodes() if n.kind().split("::")[0] not in TORCHSCRIPT_NAMESPACES})


def _trace(adapter, fmt):
    """The exported file's bytes."""
    buffer = io.BytesIO()
    if fmt == "torchscript":
        torch.jit.save(torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False), buffer)
    else:
        torch.onnx.export(adapter, adapter.flattened_inputs, buffer, dynamo=False, opset_version=ONNX_OPSET,
                          input_names=["image"], dynamic_axes={"image": {1: "height", 2: "width"}})
    return buffer.getvalue()


def _score_threshold(model):
    """The detector's test score threshold (its detections below it are not in the outputs)."""
    heads = getattr(model, "roi_heads", None)
    predictor = getattr(heads, "box_predictor", None)
    return getattr(predictor, "test_score_thresh", getattr(model, "test_score_thresh", None))


def export_predictor(predictor, fmt, output_dir, config, sample_image=None):
    """Write ``output_dir/model.ts`` (``fmt`` "torchscript") or ``model.onnx`` ("onnx") and ``model.onnx.json`` / ``model.ts.json``;
    ``config``: what to record of where the model came from (config file, overrides, weights). Returns the
    model file's path. Raises ExportError before tracing if ``output_dir`` cannot be written."""
    check_format(fmt)
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as e:
        raise ExportError(f"cannot create output folder {output_dir!r}: {e.strerror}.") from None
    if not os.access(output_dir, os.W_OK | os.X_OK):
        raise ExportError(f"cannot write to output folder {output_dir!r}: permission denied.")

    image = sample_input(predictor, sample_image)
    adapter = tracing_adapter(predictor.model, image)
    try:
        model_bytes = _trace(adapter, fmt)
    except RuntimeError as e:  # the exporter's own errors (e.g. an operator ONNX has no translation for)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ExportError(f"the {fmt} exporter cannot export this model: {type(e).__name__}: {first}") from None
    foreign = foreign_operators(fmt, model_bytes)
    if foreign:
        raise ExportError(f"the {fmt} graph calls operators outside its standard set: {', '.join(foreign)}.")
    if fmt == "onnx":
        import onnx  # the optional "export" extra: only ONNX export needs it

        onnx.checker.check_model(onnx.load_from_string(model_bytes), full_check=True)

    model_path = os.path.join(output_dir, FORMATS[fmt])
    spec = {
        "format": fmt,
        "model_file": FORMATS[fmt],
        "config": config,
        "input": {"name": "image", "layout": "CHW", "dtype": "uint8", "image_format": predictor.image_format,
                  "traced_size": list(image.shape[1:])},
        "test_resize": augmentations_to_json(predictor.augmentations),
        "class_names": list(predictor.metadata.get("thing_classes", [])),
        "category_ids": [cid for cid, _ in predictor.categories] if predictor.categories else None,
        "score_threshold": _score_threshold(predictor.model),
        "outputs_schema": schema_to_json(adapter.outputs_schema),
        "onnx_opset": ONNX_OPSET if fmt == "onnx" else None,
        "versions": {"torch": torch.__version__, "detectron2": detectron2.__version__, "ge_detectron": version("ge_detectron")},
    }
    with AtomicFile(model_path, "wb") as f:
        f.write(model_bytes)
    with AtomicFile(spec_path(model_path)) as f:
        json.dump(spec, f, indent=2)
    return model_path
