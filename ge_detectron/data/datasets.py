"""Dataset registration (the generated demo data, COCO-format files given on the command line) and the
pre-flight checks that a config's datasets are on disk and have as many categories as the detector."""
import json
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from .shapes import CLASSES as SHAPES_CLASSES
from .shapes import ensure_shapes_dataset, shapes_split_paths

SHAPES_NAMES = {"ge_shapes_train": "train", "ge_shapes_val": "val"}


class DatasetMissingError(RuntimeError):
    """A dataset named in the config is registered but its files are not on disk."""


class NumClassesMismatchError(ValueError):
    """The detector's number of classes differs from the number of categories of a dataset it uses."""


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
        metadata = {"thing_classes": list(SHAPES_CLASSES),  # as detectron2's COCO loader will set them
                    "thing_dataset_id_to_contiguous_id": {i + 1: i for i in range(len(SHAPES_CLASSES))}}
        register_coco_instances(name, metadata, json_path, image_dir)


def register_coco_dataset(name, json_file, image_root):
    """Register a COCO-format instances dataset (detectron2's ``register_coco_instances``) under ``name``,
    after checking that its annotation file and image folder exist. Registering the same files under the
    same name again is a no-op (every training process registers); another dataset of that name is an error."""
    if not os.path.isfile(json_file):
        raise DatasetMissingError(f"cannot register COCO dataset {name!r}: the annotation file {json_file!r} "
                                  "does not exist.")
    if not os.path.isdir(image_root):
        raise DatasetMissingError(f"cannot register COCO dataset {name!r}: the image folder {image_root!r} "
                                  "does not exist.")
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        if (meta.get("json_file"), meta.get("image_root")) == (json_file, image_root):
            return
        raise ValueError(f"cannot register COCO dataset {name!r}: a dataset of that name is registered already "
                         f"(annotations {meta.get('json_file')!r}); choose another name.")
    register_coco_instances(name, {}, json_file, image_root)


def dataset_categories(name):
    """``[(category id, name), ...]`` of dataset ``name`` in the order of the detector's class indices (as
    detectron2's COCO loader orders them: by category id), from its metadata or else its COCO JSON; None
    if neither tells."""
    meta = MetadataCatalog.get(name)
    classes, id_map = meta.get("thing_classes"), meta.get("thing_dataset_id_to_contiguous_id")
    if classes is not None and id_map is not None:
        return list(zip(sorted(id_map, key=id_map.get), classes))
    json_file = meta.get("json_file")
    if not json_file or not os.path.isfile(json_file):
        return None
    try:
        with open(json_file) as f:
            categories = json.load(f)["categories"]
        return [(c["id"], c["name"]) for c in sorted(categories, key=lambda c: c["id"])]
    except (ValueError, KeyError, TypeError) as e:
        raise DatasetMissingError(f"dataset {name!r}: {json_file!r} is not a COCO instances file with categories "
                                  f"({type(e).__name__}: {e}).") from None


def check_num_classes(names, key, num_classes):
    """Raise NumClassesMismatchError, naming ``key`` (the config key holding ``num_classes``) and the fix,
    if a dataset of ``names`` has another number of categories."""
    for name in names:
        categories = dataset_categories(name)
        if categories is not None and len(categories) != num_classes:
            shown = ", ".join(n for _, n in categories[:8]) + (", ..." if len(categories) > 8 else "")
            raise NumClassesMismatchError(
                f"{key} = {num_classes} but dataset {name!r} has {len(categories)} categories ({shown}): "
                f"set {key} to {len(categories)}.")


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
