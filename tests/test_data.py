"""The generated GE shapes dataset: deterministic, valid COCO with masks, as described; and its registration."""
import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image, ImageDraw
from pycocotools import mask as maskUtils
from pycocotools.coco import COCO

from ge_detectron.data import (DatasetMissingError, SHAPES_CLASSES, ensure_shapes_dataset, generate_shapes_split,
                               prepare_datasets, shapes)


def digest(folder):
    h = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        h.update(name.encode() + open(os.path.join(folder, name), "rb").read())
    return h.hexdigest()


def dilate(mask):
    """``mask`` grown by one pixel (3x3 neighbourhood)."""
    padded = np.pad(mask, 1)
    h, w = mask.shape
    return np.any([padded[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)], axis=0)


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


def test_boxes_are_those_of_format_1(tmp_path):
    """Masks were added to the generated data without changing its images' content or boxes: the boxes
    of a seeded split are those the box-only generator (FORMAT_VERSION 1) wrote."""
    generate_shapes_split(str(tmp_path / "img"), str(tmp_path / "a.json"), 20, seed=0, image_size=160)
    coco = json.loads((tmp_path / "a.json").read_text())
    boxes = json.dumps([(a["image_id"], a["category_id"], a["bbox"]) for a in coco["annotations"]])
    assert hashlib.sha256(boxes.encode()).hexdigest() == "bfe99c69c9e857b1e548dfa8d685ee4985f77db461f4ad9b0904d2a14aecedbe"


def test_masks_are_the_drawn_shapes(tmp_path):
    """Each polygon, rasterised by pycocotools, covers the pixels that drawing its shape alone colours."""
    generate_shapes_split(str(tmp_path / "img"), str(tmp_path / "a.json"), 30, seed=2, image_size=128)
    coco = COCO(str(tmp_path / "a.json"))
    anns = coco.loadAnns(coco.getAnnIds())
    assert {a["category_id"] for a in anns} == {1, 2, 3, 4}
    for a in anns:
        x, y, w, h = a["bbox"]
        polygon = np.array(a["segmentation"][0]).reshape(-1, 2)
        assert len(a["segmentation"]) == 1 and len(polygon) >= 3
        # the polygon spans its box, within the 0.01 px rounding of its vertices
        assert np.allclose(polygon.min(0), [x, y], atol=0.01) and np.allclose(polygon.max(0), [x + w, y + h], atol=0.01)
        canvas = Image.new("L", (128, 128))
        shapes._draw_object(ImageDraw.Draw(canvas), SHAPES_CLASSES[a["category_id"] - 1], (x, y, x + w, y + h), 255)
        drawn, mask = np.array(canvas) > 0, coco.annToMask(a).astype(bool)
        # the two rasterisers differ along the outline only: PIL includes the right and bottom edge pixels,
        # and the pixel under a triangle's apex
        assert not (mask & ~dilate(dilate(drawn))).any() and not (drawn & ~dilate(dilate(mask))).any(), a
        assert (drawn & mask).sum() / (drawn | mask).sum() > 0.7, a
        assert a["area"] == pytest.approx(maskUtils.area(coco.annToRLE(a)), rel=0.15)  # the mask's area, as in COCO


def test_a_split_of_an_older_format_is_regenerated(tmp_path):
    root = tmp_path / "ge_shapes"
    ensure_shapes_dataset(str(root), num_train=3, num_val=2, image_size=96)
    current = (root / "train.json").read_text()
    old = json.loads(current)  # a box-only split as FORMAT_VERSION 1 wrote it
    old["info"]["version"] = 1
    for a in old["annotations"]:
        del a["segmentation"]
    (root / "train.json").write_text(json.dumps(old))
    images = digest(root / "train")
    ensure_shapes_dataset(str(root), num_train=3, num_val=2, image_size=96)
    assert (root / "train.json").read_text() == current and digest(root / "train") == images
