import os

import pytest
import torch

import ge_detectron  # noqa: F401  (compat fixes and registration before detectron2 is used)
from detectron2.data import DatasetCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.utils.env import seed_all_rng
from ge_detectron.data import generate_shapes_split

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def seeded_rngs():
    """Every test starts from the same random state (torch, numpy, random), whatever ran before it."""
    seed_all_rng(0)


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory):
    """A tiny generated detection dataset: 4 train and 2 val images of 64x64, registered once."""
    root = tmp_path_factory.mktemp("tiny_shapes")
    names = {}
    for split, num, seed in (("train", 4, 10), ("val", 2, 11)):
        name = f"tiny_shapes_{split}"
        json_path = str(root / f"{split}.json")
        generate_shapes_split(str(root / split), json_path, num, seed, image_size=64, min_side=12, max_side=30)
        if name not in DatasetCatalog.list():
            register_coco_instances(name, {}, json_path, str(root / split))
        names[split] = name
    return names
