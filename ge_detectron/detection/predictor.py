"""A trained detector on the user's own images (tools/predict.py): the inputs, the weights, the
predictions drawn with detectron2's Visualizer, and COCO-format results.

The model sees each image as evaluation does: read with detectron2's ``read_image`` in the config's
input format and resized by the config's test-time augmentation (its test ``DatasetMapper``); its
outputs are at the input's size.
"""
import glob
import json
import logging
import os

import numpy as np
import torch
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.data.catalog import Metadata
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.utils.visualizer import ColorMode, Visualizer
from PIL import Image

from ..checkpoint import load_weights
from ..data import check_num_classes, dataset_categories
from ..data.sanitize import UNREADABLE_IMAGE_ERRORS
from ..launch import check_device
from ..safe_load import UnsafeFileError
from .lazy import LazyDetection
from .trainer import YAMLDetection

__all__ = ["PredictError", "ImageOverPixelLimit", "list_inputs", "read_input", "model_input", "load_trained_weights", "Predictor", "config_system_of",
           "build_predictor", "write_predictions"]

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


def load_trained_weights(model, weights, config_file):
    """Load ``weights`` into ``model``. Raise PredictError if the file is missing or unreadable, or if it does
    not hold exactly the model's parameters and buffers with the model's shapes (e.g. weights of another
    detector, or trained for another number of classes): predicting with a half-loaded model would draw
    random boxes without a word."""
    if not weights:
        raise PredictError(f"no weights given for {config_file!r}.")
    if "://" not in weights and not os.path.isfile(weights):
        raise PredictError(f"weights file not found: {weights!r}.")
    loader_log = logging.getLogger("fvcore.common.checkpoint")  # its per-tensor mismatch warnings: said below
    level = loader_log.level
    loader_log.setLevel(logging.ERROR)
    try:
        incompatible = load_weights(model, weights)
    except UnsafeFileError as e:  # it names what the file refers to
        raise PredictError(str(e)) from None
    except Exception as e:  # a truncated, foreign or unreachable file: say which
        raise PredictError(f"cannot load weights {weights!r}: {type(e).__name__}: {e}") from None
    finally:
        loader_log.setLevel(level)
    shapes = {key: (tuple(ckpt), tuple(mine)) for key, ckpt, mine in incompatible.incorrect_shapes}
    missing = [k for k in incompatible.missing_keys if k not in shapes]
    if shapes or missing or incompatible.unexpected_keys:
        parts = []
        if shapes:
            key, (theirs, ours) = next(iter(shapes.items()))
            parts.append(f"{len(shapes)} tensors have other shapes than the model's (e.g. {key}: {theirs} in the "
                         f"weights, {ours} in the model)")
        parts += [f"{len(missing)} model tensors are missing (e.g. {missing[0]})"] if missing else []
        parts += ([f"{len(incompatible.unexpected_keys)} weights are not in the model (e.g. "
                   f"{incompatible.unexpected_keys[0]})"] if incompatible.unexpected_keys else [])
        raise PredictError(f"weights {weights!r} do not fit the model of {config_file!r}: {'; '.join(parts)}. "
                           "Use the weights a training run with this config wrote (OUTPUT_DIR/model_final.pth).")


def model_input(augmentations, image):
    """The (C, H, W) uint8 tensor the model sees for an HWC image: resized by the test ``augmentations``
    (a ``T.AugmentationList``), as evaluation's test mapper does."""
    aug_input = T.AugInput(image)
    augmentations(aug_input)
    return torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))


class Predictor:
    """``model`` (in eval mode) on single images, as the test ``mapper`` prepares them for evaluation.
    ``metadata`` gives the Visualizer the class names; ``categories`` ([(dataset category id, name)] by
    class index) the category ids of COCO results."""

    def __init__(self, model, mapper, metadata, categories=None):
        self.model, self.metadata, self.categories = model.eval(), metadata, categories
        self.augmentations = mapper.augmentations  # a T.AugmentationList
        self.image_format = mapper.image_format

    def __call__(self, image):
        """``Instances`` of one HWC image in ``self.image_format``, at its size, on the CPU."""
        height, width = image.shape[:2]
        tensor = model_input(self.augmentations, image)
        with torch.no_grad():
            return self.model([{"image": tensor, "height": height, "width": width}])[0]["instances"].to("cpu")

    def draw(self, image, instances, score_threshold):
        """The image (RGB, at its size) with the instances scoring at least ``score_threshold`` drawn on it."""
        rgb = utils.convert_image_to_rgb(image, self.image_format)
        keep = instances[instances.scores >= score_threshold]
        return Visualizer(rgb, self.metadata, scale=1.0, instance_mode=ColorMode.IMAGE).draw_instance_predictions(
            keep).get_image()


def _metadata_and_categories(dataset_names, num_classes):
    """Metadata with the class names of the first dataset that has categories, and its [(id, name)];
    ``num_classes`` ((config key, value) or None) is checked against it."""
    for name in dataset_names:
        categories = dataset_categories(name)
        if categories is not None:
            if num_classes is not None:
                check_num_classes([name], *num_classes)
            return Metadata(name=name, thing_classes=[n for _, n in categories]), categories
    return Metadata(name="unknown"), None


def config_system_of(config_file):
    """The detection config system of ``config_file``: LazyDetection for a ``.py`` file, else YAMLDetection."""
    return LazyDetection if str(config_file).endswith(".py") else YAMLDetection


def _weights(config, config_file, opts):
    """The weights an override sets (the config's weights differ from those of the file alone), else the last
    checkpoint a training run with the config wrote to its output directory."""
    system = type(config)
    if opts and config.weights != system(system.load(config_file)).weights:
        return config.weights
    tag = os.path.join(config.output_dir, "last_checkpoint")
    if not os.path.isfile(tag):
        example = system.OVERRIDE.format(key=system.WEIGHTS, value="path/to/model.pth")
        raise PredictError(f"no trained weights for {config_file!r}: {tag!r} does not exist. Train with this config "
                           f"first, or give {example}.")
    with open(tag) as f:
        return os.path.join(config.output_dir, f.read().strip())


def build_predictor(config_file, opts=(), weights=None):
    """The Predictor of detection config ``config_file`` (YAML or LazyConfig) with overrides ``opts``:
    ``weights`` if given, else the weights an override sets (MODEL.WEIGHTS, train.init_checkpoint), else
    the last checkpoint in the config's output directory; the test-time preprocessing of the config's test
    mapper; class names (and COCO category ids) from its test (or train) datasets. Raises GEConfigError,
    ValueError (a CUDA device without a GPU) or PredictError."""
    system = config_system_of(config_file)
    config = system(system.load(config_file, opts))
    check_device(config.device, system.DEVICE)
    train_names, test_names = config.dataset_names()
    metadata, categories = _metadata_and_categories(test_names + train_names, config.num_classes)
    model = config.build_model()
    load_trained_weights(model, weights or _weights(config, config_file, opts), config_file)
    return Predictor(model, config.build_test_mapper(), metadata, categories)


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
            log(f"Skipped unreadable image {path!r} ({e.reason}); {skipped} skipped so far.")
            continue
        instances = predictor(image)
        Image.fromarray(predictor.draw(image, instances, score_threshold)).save(os.path.join(output_dir, name))
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
