"""The generated GE shapes dataset: deterministic, valid COCO, as described; and its registration."""
import hashlib
import os

import pytest
from pycocotools.coco import COCO

from ge_detectron.data import DatasetMissingError, SHAPES_CLASSES, generate_shapes_split, prepare_datasets


def digest(folder):
    h = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        h.update(name.encode() + open(os.path.join(folder, name), "rb").read())
    return h.hexdigest()


def test_generation_is_deterministic_and_seeded(tmp_path):
    for run in ("a", "b"):
        generate_shapes_split(str(tmp_path / run), str(tmp_path / f"{run}.json"), 6, seed=3, image_size=96)
    generate_shapes_split(str(tmp_path / "c"), str(tmp_path / "c.json"), 6, seed=4, image_size=96)
    assert digest(tmp_path / "a") == digest(tmp_path / "b") != digest(tmp_path / "c")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()


def test_annotations_are_valid_coco_with_all_classes(tmp_path):
    generate_shapes_split(str(tmp_path / "imgs"), str(tmp_path / "ann.json"), 40, seed=0, image_size=128)
    coco = COCO(str(tmp_path / "ann.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(SHAPES_CLASSES)
    anns = coco.loadAnns(coco.getAnnIds())
    assert {a["category_id"] for a in anns} == {1, 2, 3, 4}
    per_image = [len(coco.getAnnIds(imgIds=[i])) for i in coco.getImgIds()]
    assert min(per_image) >= 1 and max(per_image) <= 5 and len(set(per_image)) > 1
    sides = [min(a["bbox"][2:]) for a in anns]
    assert min(sides) >= 10 and max(sides) <= 70
    for a in anns:
        x, y, w, h = a["bbox"]
        assert x >= 0 and y >= 0 and x + w <= 128 and y + h <= 128
    assert all(os.path.exists(tmp_path / "imgs" / img["file_name"]) for img in coco.loadImgs(coco.getImgIds()))


def test_missing_datasets_are_clear_errors_and_demo_data_is_registered(tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    root = tmp_path / "ge_shapes"
    register_coco_instances("ondemand_val", {}, str(root / "val.json"), str(root / "val"))
    with pytest.raises(DatasetMissingError, match="ondemand_val.*DETECTRON2_DATASETS.*make demo"):
        prepare_datasets(["ondemand_val"])
    with pytest.raises(DatasetMissingError, match="not registered"):
        prepare_datasets(["no_such_dataset"])
    assert MetadataCatalog.get("ge_shapes_val").json_file.endswith(os.path.join("ge_shapes", "val.json"))
    assert "ge_shapes_train" in DatasetCatalog.list()
