"""COCO box evaluation (detectron2's COCOEvaluator with ge_detectron's backend) for the datasets detectron2
registers: Pascal VOC through detectron2's builtin loader (string image ids), COCO json with a class
that has no annotations, a dataset of one image, no predictions at all. Every number is checked against
pycocotools run directly on ground truth built independently of detectron2 (from the XML files, with
the VOC convention of 1-based pixel coordinates)."""
import json
import logging
import os
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances, register_pascal_voc
from detectron2.evaluation import coco_evaluation
from detectron2.structures import Boxes, Instances
from helpers import DEMO, TINY
from PIL import Image, ImageDraw
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ge_detectron.config import get_ge_cfg
from ge_detectron.detection import DetectionTrainer as Trainer
from ge_detectron.evaluation import build_coco_evaluator, fast_coco_eval

CLASSES = ("circle", "square", "triangle")  # no image has a triangle
METRICS = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
# (file id, [(class, xmin, ymin, xmax, ymax)] in VOC's 1-based pixel coordinates), 64x64 images
VOC_IMAGES = [("000005", [("circle", 5, 6, 30, 28), ("square", 34, 30, 60, 62)]),
              ("000012", [("square", 10, 12, 40, 44)]),
              ("000017", [("circle", 20, 3, 44, 27), ("circle", 4, 36, 21, 57), ("square", 40, 40, 63, 63)])]


def write_voc(root, images, split="test"):
    """A Pascal VOC directory: JPEGImages/*.jpg, Annotations/*.xml, ImageSets/Main/<split>.txt."""
    for folder in ("JPEGImages", "Annotations", "ImageSets/Main"):
        os.makedirs(root / folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for file_id, objects in images:
        image = Image.fromarray(rng.integers(60, 200, (64, 64, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(image)
        annotation = ET.Element("annotation")
        ET.SubElement(annotation, "filename").text = f"{file_id}.jpg"
        size = ET.SubElement(annotation, "size")
        for key, value in (("width", 64), ("height", 64), ("depth", 3)):
            ET.SubElement(size, key).text = str(value)
        for name, *box in objects:
            (draw.ellipse if name == "circle" else draw.rectangle)([v - 1 for v in box], fill=(230, 40, 40))
            obj = ET.SubElement(annotation, "object")
            ET.SubElement(obj, "name").text = name
            ET.SubElement(obj, "difficult").text = "0"
            bndbox = ET.SubElement(obj, "bndbox")
            for key, value in zip(("xmin", "ymin", "xmax", "ymax"), box):
                ET.SubElement(bndbox, key).text = str(value)
        image.save(root / "JPEGImages" / f"{file_id}.jpg")
        ET.ElementTree(annotation).write(root / "Annotations" / f"{file_id}.xml")
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i, _ in images))


def reference_coco(root, file_ids):
    """pycocotools ground truth read from the XML files: VOC boxes are 1-based and inclusive, so the
    0-based box is (xmin - 1, ymin - 1) to (xmax, ymax); categories 1..3 in CLASSES order."""
    images, annotations = [], []
    for file_id in file_ids:
        tree = ET.parse(root / "Annotations" / f"{file_id}.xml")
        images.append({"id": file_id, "width": int(tree.find("size/width").text),
                       "height": int(tree.find("size/height").text)})
        for obj in tree.findall("object"):
            x0, y0, x1, y1 = (float(obj.find(f"bndbox/{k}").text) for k in ("xmin", "ymin", "xmax", "ymax"))
            box = [x0 - 1, y0 - 1, x1 - x0 + 1, y1 - y0 + 1]
            annotations.append({"id": len(annotations) + 1, "image_id": file_id, "bbox": box, "area": box[2] * box[3],
                                "iscrowd": 0, "category_id": CLASSES.index(obj.find("name").text) + 1})
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations,
                    "categories": [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)]}
    coco.createIndex()
    return coco


def predictions_for(objects, image_index):
    """Per image: a shifted hit for every object (score falling with its index), a box of the wrong class
    and a false positive, so that AP is neither 0 nor 100. [(class index, x0, y0, x1, y1, score)] 0-based."""
    out = []
    for k, (name, x0, y0, x1, y1) in enumerate(objects):
        shift = 2 + (k + image_index) % 4
        out.append((CLASSES.index(name), x0 - 1 + shift, y0 - 1, x1 + shift, y1 - shift, 0.9 - 0.1 * k))
    out.append((1, 2.0, 2.0, 14.0, 14.0, 0.85 - 0.2 * image_index))  # a square where there is none
    out.append((2, 30.0, 0.0, 50.0, 20.0, 0.3))  # a triangle: there is none in the dataset
    return out


def evaluate(name, image_ids, predictions, tmp_path):
    evaluator = build_coco_evaluator(None, name, str(tmp_path / f"eval_{name}"))
    evaluator.reset()
    for image_id, boxes in zip(image_ids, predictions):
        instances = Instances((64, 64))
        instances.pred_boxes = Boxes(torch.tensor([b[1:5] for b in boxes], dtype=torch.float32).reshape(-1, 4))
        instances.scores = torch.tensor([b[5] for b in boxes], dtype=torch.float32)
        instances.pred_classes = torch.tensor([b[0] for b in boxes], dtype=torch.int64)
        evaluator.process([{"image_id": image_id}], [{"instances": instances}])
    return evaluator.evaluate()["bbox"]


def reference_metrics(coco_gt, predictions, image_ids, category_ids):
    """pycocotools' six summary numbers (x100, NaN where it says -1) and the AP of each category alone."""
    results = [{"image_id": image_id, "category_id": category_ids[c], "bbox": [x0, y0, x1 - x0, y1 - y0], "score": s}
               for image_id, boxes in zip(image_ids, predictions) for c, x0, y0, x1, y1, s in boxes]
    coco_dt = coco_gt.loadRes(results)

    def stats(cat_ids=None):
        evaluation = COCOeval(coco_gt, coco_dt, "bbox")
        if cat_ids is not None:
            evaluation.params.catIds = cat_ids
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
        return [v * 100 if v >= 0 else float("nan") for v in evaluation.stats[:6]]

    metrics = dict(zip(METRICS, stats()))
    for index, name in enumerate(CLASSES):
        metrics[f"AP-{name}"] = stats([category_ids[index]])[0]
    return metrics


def assert_same_metrics(results, expected):
    assert set(expected) <= set(results)
    for key, value in expected.items():
        assert results[key] == pytest.approx(value, abs=1e-6, nan_ok=True), key


def fallback_lines(caplog):
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("COCO evaluation with pycocotools")]


def faster_coco_eval_backend():
    return coco_evaluation.COCOeval_opt is fast_coco_eval


def test_pascal_voc_through_detectron2s_loader_string_ids_and_a_class_without_annotations(tmp_path, caplog):
    write_voc(tmp_path / "VOC2007", VOC_IMAGES)
    name = "ge_test_voc_2007_test"
    if name not in DatasetCatalog.list():
        register_pascal_voc(name, str(tmp_path / "VOC2007"), "test", 2007, class_names=CLASSES)
    records = DatasetCatalog.get(name)
    assert [r["image_id"] for r in records] == [i for i, _ in VOC_IMAGES]  # detectron2's ids: the file ids
    predictions = [predictions_for(objects, i) for i, (_, objects) in enumerate(VOC_IMAGES)]
    with caplog.at_level(logging.INFO, logger="ge_detectron"):
        results = evaluate(name, [i for i, _ in VOC_IMAGES], predictions, tmp_path)
    expected = reference_metrics(reference_coco(tmp_path / "VOC2007", [i for i, _ in VOC_IMAGES]), predictions,
                                 [i for i, _ in VOC_IMAGES], category_ids=[1, 2, 3])
    assert 0 < expected["AP"] < 100 and np.isnan(expected["AP-triangle"])
    assert_same_metrics(results, expected)
    lines = fallback_lines(caplog)  # faster-coco-eval cannot take string ids: pycocotools, said once
    assert lines == (["COCO evaluation with pycocotools: faster-coco-eval needs integer image and category ids, "
                      "this dataset has e.g. '000005'."] if faster_coco_eval_backend() else [])


def register_coco_json(tmp_path, name, images):
    """The VOC_IMAGES-style ``images`` as a COCO json dataset with integer ids 1, 2, ... (0-based boxes)."""
    coco = {"images": [], "annotations": [], "categories": [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)]}
    for image_id, (_, objects) in enumerate(images, 1):
        coco["images"].append({"id": image_id, "file_name": f"{image_id}.jpg", "width": 64, "height": 64})
        for cls, x0, y0, x1, y1 in objects:
            box = [x0 - 1, y0 - 1, x1 - x0 + 1, y1 - y0 + 1]
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": image_id, "bbox": box,
                                        "area": box[2] * box[3], "iscrowd": 0, "category_id": CLASSES.index(cls) + 1})
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(coco))
    if name not in DatasetCatalog.list():
        register_coco_instances(name, {}, str(path), str(tmp_path))
    DatasetCatalog.get(name)  # sets the metadata's id mapping
    return COCO(str(path))


@pytest.mark.parametrize("images", [VOC_IMAGES, VOC_IMAGES[2:]], ids=["three_images", "one_image"])
def test_coco_json_with_integer_ids_uses_the_fast_backend(images, tmp_path, caplog):
    name = f"ge_test_coco_{len(images)}"
    coco_gt = register_coco_json(tmp_path, name, images)
    predictions = [predictions_for(objects, i) for i, (_, objects) in enumerate(images)]
    with caplog.at_level(logging.INFO, logger="ge_detectron"):
        results = evaluate(name, list(range(1, len(images) + 1)), predictions, tmp_path)
    expected = reference_metrics(coco_gt, predictions, list(range(1, len(images) + 1)), category_ids=[1, 2, 3])
    assert 0 < expected["AP"] < 100
    assert_same_metrics(results, expected)
    assert fallback_lines(caplog) == []


@pytest.fixture(params=["faster-coco-eval", "pycocotools"])
def coco_backend(request, monkeypatch):
    """The project's COCO evaluation as ``compat`` sets it up where detectron2 lacks its extension (COCOEvaluator
    with ``fast_coco_eval`` for ``COCOeval_opt``), on either of its paths: faster-coco-eval, or pycocotools as
    when faster-coco-eval is not installed."""
    monkeypatch.setattr(coco_evaluation, "COCOeval_opt", fast_coco_eval)
    if request.param == "faster-coco-eval":
        pytest.importorskip("faster_coco_eval")
    else:
        monkeypatch.setitem(sys.modules, "faster_coco_eval", None)  # its import raises ImportError
    return request.param


def expected_fallback_lines(backend):
    return [] if backend == "faster-coco-eval" else ["COCO evaluation with pycocotools: faster-coco-eval is not "
                                                     "installed."]


def test_coco_evaluation_of_a_hit_and_a_false_positive_by_hand(coco_backend, tmp_path, caplog):
    """One image with two circles (20 x 20, "small"); a detection on the first circle (score 0.9) and one where
    nothing is (0.8). Precision is 1 up to recall 1/2 at every IoU threshold, then 0 for the missed circle, so
    each AP is the share of COCO's 101 recall points up to 0.5: 51 / 101; no medium or large objects (NaN)."""
    name = f"ge_test_coco_by_hand_{coco_backend}"
    coco_gt = register_coco_json(tmp_path, name, [("1", [("circle", 5, 5, 24, 24), ("circle", 35, 35, 54, 54)])])
    predictions = [[(0, 4.0, 4.0, 24.0, 24.0, 0.9), (0, 40.0, 2.0, 60.0, 22.0, 0.8)]]
    with caplog.at_level(logging.INFO, logger="ge_detectron"):
        results = evaluate(name, [1], predictions, tmp_path)
    by_hand = 100 * 51 / 101
    for key in ("AP", "AP50", "AP75", "APs", "AP-circle"):
        assert results[key] == pytest.approx(by_hand, abs=1e-6), key
    assert all(np.isnan(results[key]) for key in ("APm", "APl", "AP-square", "AP-triangle"))
    assert_same_metrics(results, reference_metrics(coco_gt, predictions, [1], category_ids=[1, 2, 3]))
    assert fallback_lines(caplog) == expected_fallback_lines(coco_backend)


def test_coco_evaluation_of_hand_made_detections_equals_pycocotools(coco_backend, tmp_path, caplog):
    """Three images, two classes with objects and one without; shifted hits, a wrong-class box and false
    positives (``predictions_for``): every summary number and per-class AP equals pycocotools' on the same
    detections, and AP lies strictly between 0 and 100."""
    name = f"ge_test_coco_hand_made_{coco_backend}"
    coco_gt = register_coco_json(tmp_path, name, VOC_IMAGES)
    predictions = [predictions_for(objects, i) for i, (_, objects) in enumerate(VOC_IMAGES)]
    with caplog.at_level(logging.INFO, logger="ge_detectron"):
        results = evaluate(name, [1, 2, 3], predictions, tmp_path)
    expected = reference_metrics(coco_gt, predictions, [1, 2, 3], category_ids=[1, 2, 3])
    assert 0 < expected["AP"] < 100 and 0 < results["AP"] < 100
    assert_same_metrics(results, expected)
    assert fallback_lines(caplog) == expected_fallback_lines(coco_backend)


def test_no_predictions_gives_detectron2s_nan_metrics(tmp_path, caplog):
    name = "ge_test_coco_no_predictions"
    register_coco_json(tmp_path, name, VOC_IMAGES)
    with caplog.at_level(logging.WARNING):
        results = evaluate(name, [1, 2, 3], [[], [], []], tmp_path)
    # detectron2's COCOEvaluator does not run COCOeval on an empty result set (pycocotools' loadRes fails on
    # one): every metric is NaN and it warns.
    assert all(np.isnan(results[key]) for key in METRICS)
    assert any("No predictions from the model" in r.getMessage() for r in caplog.records)


def test_train_net_evaluates_a_pascal_voc_dataset(tmp_path):
    """tools/train_net.py's evaluation (DetectionTrainer.test: test loader, inference, COCOEvaluator) on the VOC
    dataset of an untrained detector, against pycocotools on the detections it wrote."""
    write_voc(tmp_path / "VOC2007", VOC_IMAGES)
    name = "ge_test_voc_2007_trainnet"
    if name not in DatasetCatalog.list():
        register_pascal_voc(name, str(tmp_path / "VOC2007"), "test", 2007, class_names=CLASSES)
    cfg = get_ge_cfg(DEMO, TINY + ["DATASETS.TRAIN", (), "DATASETS.TEST", (name,), "MODEL.ROI_HEADS.NUM_CLASSES", 3,
                                   "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0, "OUTPUT_DIR", str(tmp_path / "out")])
    model = Trainer.build_model(cfg).eval()
    results = Trainer.test(cfg, model)["bbox"]
    detections = json.load(open(tmp_path / "out" / "inference" / "coco_instances_results.json"))
    assert detections and all(isinstance(d["image_id"], str) for d in detections)
    coco_gt = reference_coco(tmp_path / "VOC2007", [i for i, _ in VOC_IMAGES])
    for d in detections:  # detectron2 numbers VOC's categories 0..2 (no dataset id mapping): ours are 1..3
        d["category_id"] += 1
    reference = COCOeval(coco_gt, coco_gt.loadRes(detections), "bbox")
    reference.evaluate()
    reference.accumulate()
    reference.summarize()
    for key, value in zip(METRICS, reference.stats):
        assert results[key] == pytest.approx(value * 100 if value >= 0 else float("nan"), abs=1e-6, nan_ok=True), key
    assert MetadataCatalog.get(name).thing_classes == list(CLASSES)
