#!/usr/bin/env python
"""Train or evaluate a Gather-Excite detector with detectron2's standard training flow.

    python tools/train_net.py --config-file configs/faster_rcnn_ge_r50.yaml --num-gpus 8
    python tools/train_net.py --config-file configs/faster_rcnn_ge_r50.yaml --eval-only MODEL.WEIGHTS out/model_final.pth
    python tools/train_net.py --config-file ... --resume            # continue from OUTPUT_DIR/last_checkpoint
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_endpoint HOST:29500 tools/train_net.py --config-file ...
    torchrun --nproc_per_node 2 tools/train_net.py --config-file ...  # several CPU processes (gloo)

Trailing ``KEY VALUE`` pairs override the config. Evaluation is COCO box AP (COCOEvaluator).
"""
import os
import sys

from ge_detectron import compat  # first: compat fixes and registration before detectron2 is used
from detectron2.data import DatasetMapper
from detectron2.engine import default_argument_parser, default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from ge_detectron.checkpoint import GECheckpointer
from ge_detectron.config import get_ge_cfg
from ge_detectron.data import DatasetMissingError, prepare_datasets
from ge_detectron.data.resumable import build_detection_train_loader_resumable
from ge_detectron.data.sanitize import SkipUnreadableImages, load_train_dataset_dicts
from ge_detectron.engine import GETrainer, train_or_exit
from ge_detectron.evaluation import build_coco_evaluator
from ge_detectron.launch import check_launch_args, launch_from_args


class Trainer(GETrainer):  # DefaultTrainer, with DDP on the CPU too, GECheckpointer and exact resume
    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader_resumable(cfg, load_train_dataset_dicts(cfg),
                                                      SkipUnreadableImages(DatasetMapper(cfg, is_train=True)))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_coco_evaluator(cfg, dataset_name, output_folder or os.path.join(cfg.OUTPUT_DIR, "inference"))


def setup(args):
    cfg = get_ge_cfg(args.config_file, args.opts)
    prepare_datasets(cfg.DATASETS.TRAIN + cfg.DATASETS.TEST)
    return cfg


def main(args):
    cfg = setup(args)
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="ge_detectron")
    compat.log_applied()
    if args.eval_only:
        model = Trainer.build_model(cfg)
        GECheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return train_or_exit(trainer)  # a non-finite loss: a message naming the iteration, the last good checkpoint kept


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    try:  # fail fast, with a message instead of a traceback, before any worker starts
        cfg = setup(args)
        check_launch_args(args, cfg)
    except (ValueError, DatasetMissingError) as e:  # ValueError: GEConfigError and check_launch_args
        sys.exit(f"error: {e}")
    launch_from_args(main, args, cfg.MODEL.DEVICE)
