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

from ge_detectron import compat  # first: compat fixes before detectron2 is used
from detectron2.engine import default_argument_parser, default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from ge_detectron.checkpoint import GECheckpointer
from ge_detectron.data import DatasetMissingError
from ge_detectron.data.classification import prepare_image_folders
from ge_detectron.engine import train_or_exit
from ge_detectron.launch import check_launch_args, launch_from_args
from ge_detectron.pretrain import PretrainTrainer, get_pretrain_cfg


def main(args):
    cfg = get_pretrain_cfg(args.config_file, args.opts)
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="ge_detectron")
    compat.log_applied()
    if args.eval_only:
        model = PretrainTrainer.build_model(cfg)
        GECheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return PretrainTrainer.test(cfg, model)
    trainer = PretrainTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return train_or_exit(trainer)  # a non-finite loss: a message naming the iteration, the last good checkpoint kept


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    try:  # fail fast, with a message instead of a traceback, before any worker starts
        cfg = get_pretrain_cfg(args.config_file, args.opts)
        prepare_image_folders(cfg)
        check_launch_args(args, cfg)
    except (ValueError, DatasetMissingError) as e:
        sys.exit(f"pretrain_net.py: error: {e}")
    launch_from_args(main, args, cfg.MODEL.DEVICE)
