#!/usr/bin/env python
"""Convert backbone weights for the GE detectors (docs/pretraining.md, "Weight hand-off").

    python tools/convert_weights.py output/pretrain/r50_theta_e8/model_final.pth r50_theta_e8.pkl
    python tools/convert_weights.py resnet50-0676ba61.pth r50_torchvision.pkl        # torchvision state_dict
    python tools/convert_weights.py IN.pth OUT.pkl --check configs/faster_rcnn_ge_r50_pretrained.yaml
    python tools/convert_weights.py genetres50_plus_...top5acc94.14.ckpt output/weights/mindspore_r50_theta_plus.pkl

``--help`` describes the inputs and the output. The flow lives in ge_detectron.cli.convert_weights.
"""
from ge_detectron.cli.convert_weights import run_convert_weights

if __name__ == "__main__":
    run_convert_weights()
