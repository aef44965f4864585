"""A detector's images in and out, for every predictor (the PyTorch ``detection.predictor.Predictor`` and the
exported ``export.predictor.ExportedPredictor``): the inputs a user names, an image read in the model's input
format, the test resize the model sees, the detections drawn with detectron2's Visualizer, and the pictures and
COCO-format results written (tools/predict.py).

A predictor here is a callable HWC image -> ``Instances`` at the image's size, with ``image_format``,
``metadata`` (the class names) and ``categories`` ([(dataset category id, name)] by class index, or None).
"""
import glob
import json
import os

import numpy as np
import torch
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.utils.visualizer import ColorMode, Visualizer
from PIL import Image

from ..data.sanitize import UNREADABLE_IMAGE_ERRORS, skipped_image_message

__all__ = ["IMAGE_EXTENSIONS", "PredictError", "ImageOverPixelLimit", "list_inputs", "read_input", "model_input", "draw_detections",
           "write_predictions"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class PredictError(ValueError):
    """A missing or unreadable input, missing weights, or weights that do not fit the config's model."""


class ImageOverPixelLimit(PredictError):
    """An input image with more pixels than PIL decodes (``Image.MAX_IMAGE_PIXELS``; above twice as many,
    PIL raises DecompressionBombError from the header, before decoding): a decompression bomb."""

    def __init__(self, path, error):
        super().__init__(f"cannot read image {path!r}: {type(error).__name__}: {error}")
        self.path, self.reason = path, f"{type(error).__name__}: {error}"


def list_inputs(paths):
    """The image files named by ``paths``: files, directories (their images with an IMAGE_EXTENSIONS
    suffix, sorted) and glob patterns (sorted matches), in the order given, each once."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(os.path.join(path, f) for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTENSIONS))
            if not found:
                raise PredictError(f"input directory {path!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
        elif os.path.isfile(path):
            found = [path]
        elif glob.has_magic(path):
            found = sorted(p for p in glob.glob(path, recursive=True) if os.path.isfile(p))
            if not found:
                raise PredictError(f"input pattern {path!r} matches no file.")
        else:
            raise PredictError(f"input not found: {path!r}.")
        files += [f for f in found if f not in files]
    return files


def read_input(path, image_format):
    """``path`` as an HWC uint8 array in ``image_format`` (detectron2's ``read_image``, EXIF orientation applied)."""
    try:
        return utils.read_image(path, format=image_format)
    except Image.DecompressionBombError as e:
        raise ImageOverPixelLimit(path, e) from None
    except UNREADABLE_IMAGE_ERRORS as e:
        raise PredictError(f"cannot read image {path!r}: {type(e).__name__}: {e}") from None


def model_input(augmentations, image):
    """The (C, H, W) uint8 tensor the model sees for an HWC image: resized by the test ``augmentations``
    (a ``T.AugmentationList``), as evaluation's test mapper does."""
    aug_input = T.AugInput(image)
    augmentations(aug_input)
    return torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))


def draw_detections(image, image_format, metadata, instances, score_threshold):
    """The image (HWC in ``image_format``; returned RGB, at its size) with the ``instances`` scoring at least
    ``score_threshold`` drawn on it, named by ``metadata``'s class names."""
    rgb = utils.convert_image_to_rgb(image, image_format)
    keep = instances[instances.scores >= score_threshold]
    return Visualizer(rgb, metadata, scale=1.0, instance_mode=ColorMode.IMAGE).draw_instance_predictions(
        keep).get_image()


def _output_names(files):
    """``<stem>.png`` per input; a stem seen before gets ``_2``, ``_3``, ..."""
    names, seen = [], {}
    for path in files:
        stem = os.path.splitext(os.path.basename(path))[0]
        seen[stem] = seen.get(stem, 0) + 1
        names.append(f"{stem}.png" if seen[stem] == 1 else f"{stem}_{seen[stem]}.png")
    return names


def write_predictions(predictor, files, output_dir, score_threshold=0.5, json_path=None, log=print):
    """Predict every file; write ``output_dir/<stem>.png`` (the input with its detections at or above
    ``score_threshold``) and, with ``json_path``, all detections as COCO results (``image_id``: the input's
    position from 1, ``file_name``: its path; ``category_id``: the dataset's category id). Returns the
    number of detections drawn per file. An image over PIL's pixel limit is skipped with a line naming it."""
    os.makedirs(output_dir, exist_ok=True)
    results, drawn, skipped = [], {}, 0
    id_of_class = [cid for cid, _ in predictor.categories] if predictor.categories else None
    for image_id, (path, name) in enumerate(zip(files, _output_names(files)), start=1):
        try:
            image = read_input(path, predictor.image_format)
        except ImageOverPixelLimit as e:
            skipped += 1
            log(skipped_image_message(path, e.reason, skipped))
            continue
        instances = predictor(image)
        picture = draw_detections(image, predictor.image_format, predictor.metadata, instances, score_threshold)
        Image.fromarray(picture).save(os.path.join(output_dir, name))
        drawn[path] = int((instances.scores >= score_threshold).sum())
        log(f"{path}: {len(instances)} detections, {drawn[path]} with score >= {score_threshold} drawn to "
            f"{os.path.join(output_dir, name)}")
        for det in instances_to_coco_json(instances, image_id):
            det["file_name"] = path
            if id_of_class is not None:
                det["category_id"] = id_of_class[det["category_id"]]
            results.append(det)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(results, f)
        log(f"wrote {len(results)} detections of {len(files)} images as COCO results to {json_path}")
    return drawn
