#!/usr/bin/env python
"""Run a trained detector on your images: one PNG per input with its boxes (and masks) drawn by
detectron2's Visualizer at the input's size, and with --json all detections as COCO results.

    python tools/predict.py --config-file configs/demo/faster_rcnn_ge_theta_e8_r50_fpn_shapes.yaml \\
        --input photo.jpg more_photos/ "shots/*.png" --output output/predictions --json
    python tools/predict.py --config-file configs/faster_rcnn_ge_r50.yaml --input photo.jpg --output out \\
        MODEL.WEIGHTS output/faster_rcnn_ge_r50/model_final.pth
    python tools/predict.py --config-file configs/faster_rcnn_ge_r50.py --input photo.jpg --output out \\
        train.init_checkpoint=output/lazy/faster_rcnn_ge_r50/model_final.pth

Without MODEL.WEIGHTS (YAML) or train.init_checkpoint=... (LazyConfig) it uses the last checkpoint that
training with the config wrote. The flow lives in ge_detectron.cli.predict.
"""
from ge_detectron.cli.predict import run_predict

if __name__ == "__main__":
    run_predict()
