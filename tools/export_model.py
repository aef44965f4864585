#!/usr/bin/env python
"""Export a trained detector to TorchScript or ONNX, with a JSON file (model.onnx.json) beside the model file that
tools/predict.py --onnx (and any deployed code) reads for the preprocessing and the outputs:

    python tools/export_model.py --config-file configs/demo/faster_rcnn_ge_theta_e8_r50_fpn_shapes.yaml \\
        --format onnx --output output/export
    python tools/export_model.py --config-file configs/faster_rcnn_ge_r50.py --format torchscript \\
        --output out train.init_checkpoint=output/lazy/faster_rcnn_ge_r50/model_final.pth

Weights are found as tools/predict.py finds them. The flow lives in ge_detectron.cli.export; docs/export.md.
"""
from ge_detectron.cli.export import run_export

if __name__ == "__main__":
    run_export()
