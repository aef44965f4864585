#!/usr/bin/env python
"""Draw a detector's COCO-format predictions (OUTPUT_DIR/inference/coco_instances_results.json, as
written by train_net's evaluation) on validation images with detectron2's Visualizer, as one PNG.

    python tools/visualize_predictions.py --config-file configs/demo/faster_rcnn_ge_theta_e8_r50_fpn_shapes.yaml
"""
import argparse
import json
import os
from collections import defaultdict

import numpy as np

import ge_detectron  # noqa: F401  (compat fixes and dataset registration)
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.structures import Boxes, BoxMode, Instances
from detectron2.utils.visualizer import Visualizer
from ge_detectron.config import get_ge_cfg
from ge_detectron.data import prepare_datasets
from PIL import Image


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--num-images", type=int, default=8)
    parser.add_argument("--score-threshold", type=float, default=0.5)
    parser.add_argument("--output", help="PNG path (default: OUTPUT_DIR/predictions.png)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args()
    cfg = get_ge_cfg(args.config_file, args.opts)
    dataset = cfg.DATASETS.TEST[0]
    results_path = os.path.join(cfg.OUTPUT_DIR, "inference", "coco_instances_results.json")
    if not os.path.exists(results_path):
        raise SystemExit(f"error: no predictions at {results_path!r}: run tools/train_net.py with this config first.")

    prepare_datasets([dataset])
    records = DatasetCatalog.get(dataset)  # loading also fills the metadata's category mapping
    metadata = MetadataCatalog.get(dataset)
    contiguous = metadata.thing_dataset_id_to_contiguous_id
    by_image = defaultdict(list)
    for det in json.load(open(results_path)):
        if det["score"] >= args.score_threshold:
            by_image[det["image_id"]].append(det)

    panels = []
    for record in records[: args.num_images]:
        image = read_image(record["file_name"], format="RGB")
        dets = by_image.get(record["image_id"], [])
        instances = Instances(image.shape[:2])
        boxes = [BoxMode.convert(d["bbox"], BoxMode.XYWH_ABS, BoxMode.XYXY_ABS) for d in dets]
        instances.pred_boxes = Boxes(np.array(boxes, dtype=np.float32).reshape(-1, 4))
        instances.scores = np.array([d["score"] for d in dets], dtype=np.float32)
        instances.pred_classes = np.array([contiguous[d["category_id"]] for d in dets], dtype=np.int64)
        panels.append(Visualizer(image, metadata, scale=2.0).draw_instance_predictions(instances).get_image())

    columns = min(4, len(panels))
    rows = -(-len(panels) // columns)
    h, w = panels[0].shape[:2]
    grid = np.full((rows * h, columns * w, 3), 255, dtype=np.uint8)
    for i, panel in enumerate(panels):
        grid[(i // columns) * h:(i // columns + 1) * h, (i % columns) * w:(i % columns + 1) * w] = panel
    output = args.output or os.path.join(cfg.OUTPUT_DIR, "predictions.png")
    Image.fromarray(grid).save(output)
    print(f"wrote {output} ({len(panels)} validation images, boxes with score >= {args.score_threshold})")


if __name__ == "__main__":
    main()
