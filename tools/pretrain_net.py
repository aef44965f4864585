#!/usr/bin/env python
"""Pretrain a GE-ResNet classifier on ImageNet (or any ImageFolder) with detectron2's training loop.

    python tools/pretrain_net.py --config-file configs/pretrain/r50_theta.yaml --num-gpus 8
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_endpoint HOST:29500 tools/pretrain_net.py --config-file ...
    torchrun --nproc_per_node 2 tools/pretrain_net.py --config-file ...     # several CPU processes (gloo)
    python tools/pretrain_net.py --config-file ... --resume                 # continue from OUTPUT_DIR/last_checkpoint
    python tools/pretrain_net.py --config-file ... --eval-only MODEL.WEIGHTS out/model_final.pth

Trailing ``KEY VALUE`` pairs override the config. Then hand the weights to a detector with
tools/convert_weights.py (docs/pretraining.md).
"""
import sys

import ge_detectron  # noqa: F401  (compat fixes before detectron2 is used)
from detectron2.engine import default_argument_parser
from ge_detectron.data import DatasetMissingError
from ge_detectron.data.classification import prepare_image_folders
from ge_detectron.engine import train_or_evaluate
from ge_detectron.launch import check_launch_args, launch_from_args
from ge_detectron.pretrain import PretrainTrainer, get_pretrain_cfg


def main(args):
    return train_or_evaluate(PretrainTrainer, get_pretrain_cfg(args.config_file, args.opts), args)


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    try:  # fail fast, with a message instead of a traceback, before any worker starts
        cfg = get_pretrain_cfg(args.config_file, args.opts)
        prepare_image_folders(cfg)
        check_launch_args(args, cfg.MODEL.DEVICE, cfg.SOLVER.IMS_PER_BATCH)
    except (ValueError, DatasetMissingError) as e:
        sys.exit(f"pretrain_net.py: error: {e}")
    launch_from_args(main, args, cfg.MODEL.DEVICE)
