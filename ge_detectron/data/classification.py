"""Image classification data for pretraining: ImageFolder datasets, the usual ImageNet transforms,
and loaders built on detectron2's distributed samplers.

Batches are ``(images, labels)``: uint8 (N, 3, H, W) pixel values in ``INPUT.FORMAT`` channel order
(the classifier normalises them, as detectron2's detectors do) and int64 (N,) class indices.
"""
import os

import torch
from detectron2.data.build import worker_init_reset_seed
from detectron2.data.samplers import InferenceSampler, TrainingSampler
from detectron2.utils import comm
from torchvision import datasets, transforms

from . import shape_classes
from .datasets import DatasetMissingError, datasets_root

# Size of the generated demo set (PRETRAIN.GENERATE_DEMO_DATA): images per class, image side.
DEMO_TRAIN_PER_CLASS, DEMO_VAL_PER_CLASS, DEMO_IMAGE_SIZE = 200, 50, 64


def resolve_dataset_dir(path):
    """``path`` itself if absolute, else ``path`` under $DETECTRON2_DATASETS (default ./datasets)."""
    return path if os.path.isabs(path) else os.path.join(datasets_root(), path)


def check_image_folders(cfg):
    """Raise DatasetMissingError (short message, what to do) unless PRETRAIN.TRAIN_DIR and VAL_DIR are
    ImageFolder roots whose class folders agree in number with MODEL.GE.NUM_CLASSES."""
    classes = {}
    for key in ("TRAIN_DIR", "VAL_DIR"):
        root = resolve_dataset_dir(cfg.PRETRAIN[key])
        names = sorted(e.name for e in os.scandir(root) if e.is_dir()) if os.path.isdir(root) else []
        if not names:
            raise DatasetMissingError(
                f"PRETRAIN.{key}: no image folder at {root!r} (it must hold one sub-folder of images per "
                f"class). Put ImageNet under $DETECTRON2_DATASETS/imagenet/{{train,val}} (now "
                f"{datasets_root()!r}), point PRETRAIN.{key} at any ImageFolder root, or use "
                "configs/pretrain/demo_shapes.yaml to pretrain on generated data.")
        classes[key] = names
    if classes["TRAIN_DIR"] != classes["VAL_DIR"]:
        raise DatasetMissingError("PRETRAIN.TRAIN_DIR and PRETRAIN.VAL_DIR have different class folders "
                                  f"({len(classes['TRAIN_DIR'])} and {len(classes['VAL_DIR'])} classes).")
    if len(classes["TRAIN_DIR"]) != cfg.MODEL.GE.NUM_CLASSES:
        raise DatasetMissingError(f"MODEL.GE.NUM_CLASSES is {cfg.MODEL.GE.NUM_CLASSES} but PRETRAIN.TRAIN_DIR "
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




def build_classification_train_loader(cfg):
    """Infinite loader over PRETRAIN.TRAIN_DIR, SOLVER.IMS_PER_BATCH images per step over all processes;
    each process reads its own shard of a shuffled stream (detectron2's TrainingSampler)."""
    dataset = datasets.ImageFolder(resolve_dataset_dir(cfg.PRETRAIN.TRAIN_DIR), build_train_transform(cfg))
    batch = cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()  # divisibility: pretrain.launch.check_launch_args
    sampler = TrainingSampler(len(dataset), shuffle=True, seed=cfg.SEED if cfg.SEED >= 0 else None)
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=torch.utils.data.BatchSampler(sampler, batch, drop_last=True),
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        worker_init_fn=worker_init_reset_seed,
        pin_memory=cfg.MODEL.DEVICE.startswith("cuda"),
    )


def build_classification_test_loader(cfg):
    """One pass over PRETRAIN.VAL_DIR; each process reads a distinct part (no image twice)."""
    dataset = datasets.ImageFolder(resolve_dataset_dir(cfg.PRETRAIN.VAL_DIR), build_eval_transform(cfg))
    batch = max(1, cfg.PRETRAIN.EVAL_IMS_PER_BATCH // comm.get_world_size())
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=torch.utils.data.BatchSampler(InferenceSampler(len(dataset)), batch, drop_last=False),
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        pin_memory=cfg.MODEL.DEVICE.startswith("cuda"),
    )
