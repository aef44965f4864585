#!/usr/bin/env python
"""Train or evaluate a Gather-Excite detector from a YAML config with detectron2's standard training flow.

    python tools/train_net.py --config-file configs/faster_rcnn_ge_r50.yaml --num-gpus 8
    python tools/train_net.py --config-file configs/faster_rcnn_ge_r50.yaml --eval-only MODEL.WEIGHTS out/model_final.pth
    python tools/train_net.py --config-file ... --resume            # continue from OUTPUT_DIR/last_checkpoint
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_endpoint HOST:29500 tools/train_net.py --config-file ...
    torchrun --nproc_per_node 2 tools/train_net.py --config-file ...  # several CPU processes (gloo)
    python tools/train_net.py --config-file configs/mask_rcnn_ge_r50_fpn.yaml \\
        --register-coco my_train my/train.json my/train_images --register-coco my_val my/val.json my/val_images \\
        DATASETS.TRAIN '("my_train",)' DATASETS.TEST '("my_val",)' MODEL.ROI_HEADS.NUM_CLASSES 3

Trailing ``KEY VALUE`` pairs override the config. Evaluation is COCO box AP, and mask AP for Mask R-CNN
(COCOEvaluator). The flow lives in ge_detectron.cli.train.
"""
from ge_detectron.cli.train import run_train_net

if __name__ == "__main__":
    run_train_net()
