"""Image classification data for pretraining: ImageFolder datasets, the usual ImageNet transforms,
and loaders built on detectron2's distributed samplers.

Batches are ``(images, labels)``: uint8 (N, 3, H, W) pixel values in ``INPUT.FORMAT`` channel order
(the classifier normalises them, as detectron2's detectors do) and int64 (N,) class indices.

Bad data: a dataset folder without images is a DatasetMissingError, class folders without images or
that differ between TRAIN_DIR and VAL_DIR an InvalidDatasetError; an image that cannot be read or
decoded (``ge_detectron.data.sanitize.UNREADABLE_IMAGE_ERRORS``) is skipped with a warning that counts
the skipped images (``ReadableImageFolder``).
"""
import functools
import logging
import os
import random

import torch
from detectron2.data.build import worker_init_reset_seed
from detectron2.data.samplers import InferenceSampler
from detectron2.utils import comm
from PIL import Image
from torch.utils.data import default_collate
from torchvision import datasets, transforms
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from .sanitize import UNREADABLE_IMAGE_ERRORS, skipped_image_message
from . import shape_classes
from .datasets import DatasetMissingError, InvalidDatasetError, NumClassesMismatchError, datasets_root
from .resumable import ResumableLoader, ResumableTrainingSampler

# Size of the generated demo set (PRETRAIN.GENERATE_DEMO_DATA): images per class, image side.
DEMO_TRAIN_PER_CLASS, DEMO_VAL_PER_CLASS, DEMO_IMAGE_SIZE = 200, 50, 64
# Training gives up, with an InvalidDatasetError, after this many unreadable images in a row.
MAX_UNREADABLE_IN_A_ROW = 100

logger = logging.getLogger(__name__)


def resolve_dataset_dir(path):
    """``path`` itself if absolute, else ``path`` under $DETECTRON2_DATASETS (default ./datasets)."""
    return path if os.path.isabs(path) else os.path.join(datasets_root(), path)


def _holds_an_image(folder):
    """Whether ``folder`` or a folder under it holds a file with an image extension (stops at the first)."""
    for _, _, names in os.walk(folder, followlinks=True):
        if any(has_file_allowed_extension(name, IMG_EXTENSIONS) for name in names):
            return True
    return False


def class_folders(cfg, key):
    """The class folder names of PRETRAIN.{key}. Raises (short message, what to do) DatasetMissingError
    unless it is an ImageFolder root (one sub-folder of images per class) with images, InvalidDatasetError
    if some class folders hold none."""
    root = resolve_dataset_dir(cfg.PRETRAIN[key])
    names = sorted(e.name for e in os.scandir(root) if e.is_dir()) if os.path.isdir(root) else []
    if not names:
        raise DatasetMissingError(
            f"PRETRAIN.{key}: no image folder at {root!r} (it must hold one sub-folder of images per "
            f"class). Put ImageNet under $DETECTRON2_DATASETS/imagenet/{{train,val}} (now "
            f"{datasets_root()!r}), point PRETRAIN.{key} at any ImageFolder root, or use "
            "configs/pretrain/demo_shapes.yaml to pretrain on generated data.")
    empty = [name for name in names if not _holds_an_image(os.path.join(root, name))]
    if empty:
        extensions = ", ".join(IMG_EXTENSIONS)
        if len(empty) == len(names):
            raise DatasetMissingError(f"PRETRAIN.{key}: the dataset at {root!r} is empty: none of its {len(names)} "
                                      f"class folders holds an image ({extensions}).")
        raise InvalidDatasetError(
            f"PRETRAIN.{key}: {len(empty)} of the {len(names)} class folders in {root!r} hold no image ({extensions}): "
            f"{', '.join(map(repr, empty[:5]))}{', ...' if len(empty) > 5 else ''}. Every class needs images.")
    return names


def check_image_folders(cfg):
    """Raise ``class_folders``' errors unless PRETRAIN.TRAIN_DIR and VAL_DIR are ImageFolder roots whose
    class folders all hold images; InvalidDatasetError unless they have the same class folders,
    NumClassesMismatchError unless as many as MODEL.GE.NUM_CLASSES (short messages, what to do)."""
    classes = {key: class_folders(cfg, key) for key in ("TRAIN_DIR", "VAL_DIR")}
    if classes["TRAIN_DIR"] != classes["VAL_DIR"]:
        raise InvalidDatasetError("PRETRAIN.TRAIN_DIR and PRETRAIN.VAL_DIR have different class folders "
                                  f"({len(classes['TRAIN_DIR'])} and {len(classes['VAL_DIR'])} classes).")
    if len(classes["TRAIN_DIR"]) != cfg.MODEL.GE.NUM_CLASSES:
        raise NumClassesMismatchError(f"MODEL.GE.NUM_CLASSES is {cfg.MODEL.GE.NUM_CLASSES} but PRETRAIN.TRAIN_DIR "
                                  f"has {len(classes['TRAIN_DIR'])} class folders: set MODEL.GE.NUM_CLASSES to match.")


def prepare_image_folders(cfg):
    """Generate the demo set into PRETRAIN.TRAIN_DIR / VAL_DIR if PRETRAIN.GENERATE_DEMO_DATA asks for it
    and they are missing, then ``check_image_folders``."""
    if cfg.PRETRAIN.GENERATE_DEMO_DATA:
        for key, per_class, seed in (("TRAIN_DIR", DEMO_TRAIN_PER_CLASS, 0), ("VAL_DIR", DEMO_VAL_PER_CLASS, 1)):
            shape_classes.ensure_split(resolve_dataset_dir(cfg.PRETRAIN[key]), per_class, seed, DEMO_IMAGE_SIZE)
    check_image_folders(cfg)


def _rgb_to_bgr(image):
    return image.flip(0)


def _to_input_format(cfg):
    """uint8 CHW tensor from the RGB PIL image, channels flipped for INPUT.FORMAT "BGR"."""
    return [transforms.PILToTensor()] + ([transforms.Lambda(_rgb_to_bgr)] if cfg.INPUT.FORMAT == "BGR" else [])


def build_train_transform(cfg):
    """Random-resized crop (area fraction PRETRAIN.CROP_SCALE) to PRETRAIN.CROP_SIZE, horizontal flip."""
    p = cfg.PRETRAIN
    return transforms.Compose([transforms.RandomResizedCrop(p.CROP_SIZE, scale=tuple(p.CROP_SCALE)),
                               transforms.RandomHorizontalFlip(), *_to_input_format(cfg)])


def build_eval_transform(cfg):
    """Shorter side resized to PRETRAIN.RESIZE_SIZE, centre crop of PRETRAIN.CROP_SIZE."""
    p = cfg.PRETRAIN
    return transforms.Compose([transforms.Resize(p.RESIZE_SIZE), transforms.CenterCrop(p.CROP_SIZE),
                               *_to_input_format(cfg)])


class ReadableImageFolder(datasets.ImageFolder):
    """torchvision's ImageFolder over PRETRAIN.{key}, except that an image which cannot be read or decoded
    (missing, truncated, not an image) is skipped with a warning that counts the skipped images (per data
    loader worker). With ``replace`` (training) a randomly drawn other image takes its place, so batches
    keep their size; without (evaluation) the item is None and ``collate_readable`` leaves it out.
    Dataset folders without images raise as in ``class_folders``."""

    def __init__(self, cfg, key, transform, replace):
        class_folders(cfg, key)  # a clear error where torchvision's would be a FileNotFoundError
        super().__init__(resolve_dataset_dir(cfg.PRETRAIN[key]), transform)
        self.replace = replace
        self.skipped = 0

    def __getitem__(self, index):
        for _ in range(MAX_UNREADABLE_IN_A_ROW):
            path, label = self.samples[index]
            try:
                image = self.loader(path)
            except UNREADABLE_IMAGE_ERRORS as e:
                self.skipped += 1
                logger.warning(skipped_image_message(path, f"{type(e).__name__}: {e}", self.skipped, per_worker=True))
                if not self.replace:
                    return None
                index = random.randrange(len(self.samples))
                continue
            return self.transform(image), label
        raise InvalidDatasetError(f"{MAX_UNREADABLE_IN_A_ROW} images in a row could not be read from {self.root!r}: "
                                  "check the files (the warnings above name them).")


class ImagesWithinPixelLimit:
    """``is_valid_file`` of torchvision's ImageFolder: a file with an image extension whose header claims no
    more pixels than PIL decodes (over twice ``Image.MAX_IMAGE_PIXELS``, ``Image.open`` raises
    DecompressionBombError from the header: a decompression bomb). The others are skipped, each with a
    warning that counts them; a file that is unreadable otherwise is kept, and fails when it is read."""

    def __init__(self):
        self.skipped = 0

    def __call__(self, path):
        if not has_file_allowed_extension(path, IMG_EXTENSIONS):
            return False
        try:
            with Image.open(path):
                return True
        except Image.DecompressionBombError as e:
            self.skipped += 1
            logger.warning(skipped_image_message(path, f"{type(e).__name__}: {e}", self.skipped))
            return False
        except UNREADABLE_IMAGE_ERRORS:
            return True


def collate_readable(batch, image_shape):
    """default_collate of the readable items; a batch with none is an empty one of ``image_shape`` images."""
    batch = [item for item in batch if item is not None]
    if not batch:
        return torch.empty(0, *image_shape, dtype=torch.uint8), torch.empty(0, dtype=torch.int64)
    return default_collate(batch)


def build_classification_train_loader(cfg):
    """Infinite loader over PRETRAIN.TRAIN_DIR, SOLVER.IMS_PER_BATCH images per step over all processes;
    each process reads its own shard of a shuffled stream (detectron2's TrainingSampler), which a
    checkpoint resumes (ResumableLoader)."""
    dataset = ReadableImageFolder(cfg, "TRAIN_DIR", build_train_transform(cfg), replace=True)
    batch = cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()  # divisibility: ge_detectron.launch.check_launch_args
    sampler = ResumableTrainingSampler(len(dataset), shuffle=True, seed=cfg.SEED if cfg.SEED >= 0 else None)
    return ResumableLoader(torch.utils.data.DataLoader(
        dataset,
        batch_sampler=torch.utils.data.BatchSampler(sampler, batch, drop_last=True),
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        worker_init_fn=worker_init_reset_seed,
        pin_memory=cfg.MODEL.DEVICE.startswith("cuda"),
    ), sampler)


def build_classification_test_loader(cfg):
    """One pass over PRETRAIN.VAL_DIR; each process reads a distinct part (no image twice). Unreadable
    images are left out of their batches (which may then be empty)."""
    dataset = ReadableImageFolder(cfg, "VAL_DIR", build_eval_transform(cfg), replace=False)
    batch = max(1, cfg.PRETRAIN.EVAL_IMS_PER_BATCH // comm.get_world_size())
    crop = cfg.PRETRAIN.CROP_SIZE
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=torch.utils.data.BatchSampler(InferenceSampler(len(dataset)), batch, drop_last=False),
        collate_fn=functools.partial(collate_readable, image_shape=(3, crop, crop)),
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        pin_memory=cfg.MODEL.DEVICE.startswith("cuda"),
    )
