"""A trained detector of a config on the user's own images (tools/predict.py): the config's model with its
trained weights, as a predictor of ``detection.images`` (which reads the inputs, draws the predictions with
detectron2's Visualizer and writes COCO-format results).

The model sees each image as evaluation does: read with detectron2's ``read_image`` in the config's
input format and resized by the config's test-time augmentation (its test ``DatasetMapper``); its
outputs are at the input's size.
"""
import logging
import os

import torch
from detectron2.data.catalog import Metadata

from ..checkpoint import load_weights, weights_mismatch
from ..data import check_num_classes, dataset_categories
from ..launch import check_device
from ..safe_load import UnsafeFileError
from .images import PredictError, model_input
from .lazy import LazyDetection
from .trainer import YAMLDetection

__all__ = ["load_trained_weights", "Predictor", "task_adapter_of", "build_predictor"]


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
    mismatch = weights_mismatch(incompatible)
    if mismatch:
        raise PredictError(f"weights {weights!r} do not fit the model of {config_file!r}: {mismatch}. "
                           "Use the weights a training run with this config wrote (OUTPUT_DIR/model_final.pth).")


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


def task_adapter_of(config_file):
    """The detection task adapter of ``config_file``: LazyDetection for a ``.py`` file, else YAMLDetection."""
    return LazyDetection if str(config_file).endswith(".py") else YAMLDetection


def _weights(config, config_file, opts):
    """The weights an override sets (the config's weights differ from those of the file alone), else the last
    checkpoint a training run with the config wrote to its output directory."""
    adapter = type(config)
    if opts and config.weights != adapter(adapter.load(config_file)).weights:
        return config.weights
    tag = os.path.join(config.output_dir, "last_checkpoint")
    if not os.path.isfile(tag):
        example = adapter.override(adapter.WEIGHTS, "path/to/model.pth")
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
    adapter = task_adapter_of(config_file)
    config = adapter(adapter.load(config_file, opts))
    check_device(config.device, adapter.DEVICE)
    train_names, test_names = config.dataset_names()
    metadata, categories = _metadata_and_categories(test_names + train_names, config.num_classes)
    model = config.build_model()
    load_trained_weights(model, weights or _weights(config, config_file, opts), config_file)
    return Predictor(model, config.build_test_mapper(), metadata, categories)
