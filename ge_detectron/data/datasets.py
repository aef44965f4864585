"""Dataset registration and the pre-flight check that a config's datasets are on disk."""
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from .shapes import ensure_shapes_dataset, shapes_split_paths

SHAPES_NAMES = {"ge_shapes_train": "train", "ge_shapes_val": "val"}


class DatasetMissingError(RuntimeError):
    """A dataset named in the config is registered but its files are not on disk."""


def datasets_root():
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def shapes_root():
    return os.path.join(datasets_root(), "ge_shapes")


def register_shapes_datasets(root=None):
    """Register "ge_shapes_train" / "ge_shapes_val" (generated on first use by ``prepare_datasets``)."""
    root = root or shapes_root()
    for name, split in SHAPES_NAMES.items():
        if name in DatasetCatalog.list():
            continue
        image_dir, json_path = shapes_split_paths(root, split)
        register_coco_instances(name, {}, json_path, image_dir)


def prepare_datasets(names):
    """Generate the GE shapes data if a name needs it; check every other COCO-style dataset's files.

    Raises DatasetMissingError with a short message saying where we looked and what to do.
    """
    for name in names:
        if name in SHAPES_NAMES:
            ensure_shapes_dataset(os.path.dirname(MetadataCatalog.get(name).json_file))
            continue
        if name not in DatasetCatalog.list():
            raise DatasetMissingError(
                f"Dataset {name!r} is not registered in detectron2's DatasetCatalog. Registered COCO names "
                "include coco_2014_train, coco_2014_val, coco_2017_train, coco_2017_val; the generated demo "
                "data is ge_shapes_train / ge_shapes_val.")
        meta = MetadataCatalog.get(name)
        missing = [p for p in (meta.get("json_file"), meta.get("image_root")) if p and not os.path.exists(p)]
        if missing:
            raise DatasetMissingError(
                f"Dataset {name!r} was not found: looked for {' and '.join(map(repr, missing))}. Put COCO under "
                f"$DETECTRON2_DATASETS/coco (now {datasets_root()!r}; layout: coco/train2014, coco/val2014, "
                "coco/annotations/instances_{train,val}2014.json) and set DETECTRON2_DATASETS to the folder "
                "holding it, or run `make demo` to train and evaluate on generated data instead.")
