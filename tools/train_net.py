#!/usr/bin/env python
"""Train or evaluate a Gather-Excite detector with detectron2's standard training flow.

    python tools/train_net.py --config-file configs/faster_rcnn_ge_r50.yaml --num-gpus 8
    python tools/train_net.py --config-file configs/faster_rcnn_ge_r50.yaml --eval-only MODEL.WEIGHTS out/model_final.pth
    python tools/train_net.py --config-file ... --resume            # continue from OUTPUT_DIR/last_checkpoint

Trailing ``KEY VALUE`` pairs override the config. Evaluation is COCO box AP (COCOEvaluator).
"""
import os
import sys
import weakref

import ge_detectron  # noqa: F401  (compat fixes and registration before detectron2 is used)
from detectron2.data import DatasetMapper, build_detection_train_loader
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from ge_detectron.checkpoint import GECheckpointer
from ge_detectron.config import GEConfigError, get_ge_cfg
from ge_detectron.data import DatasetMissingError, prepare_datasets
from ge_detectron.data.sanitize import SkipUnreadableImages, load_train_dataset_dicts
from ge_detectron.evaluation import build_coco_evaluator


class Trainer(DefaultTrainer):
    @classmethod
    def build_train_loader(cls, cfg):
        mapper = SkipUnreadableImages(DatasetMapper(cfg, is_train=True))
        return build_detection_train_loader(cfg, dataset=load_train_dataset_dicts(cfg), mapper=mapper)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_coco_evaluator(cfg, dataset_name, output_folder or os.path.join(cfg.OUTPUT_DIR, "inference"))

    def build_hooks(self):
        # DefaultTrainer made a plain DetectionCheckpointer just before; use ours in it and in the hooks.
        self.checkpointer = GECheckpointer(self._trainer.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        return super().build_hooks()


def setup(args):
    cfg = get_ge_cfg(args.config_file, args.opts)
    prepare_datasets(cfg.DATASETS.TRAIN + cfg.DATASETS.TEST)
    return cfg


def main(args):
    cfg = setup(args)
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="ge_detectron")
    if args.eval_only:
        model = Trainer.build_model(cfg)
        GECheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    try:
        return trainer.train()
    except FloatingPointError as e:  # detectron2 checks the losses before each optimizer step
        last = trainer.checkpointer.get_checkpoint_file() or "none was written yet"
        raise SystemExit(f"error: training stopped, the loss is not finite: {e} The last good checkpoint is "
                         f"kept: {last}. Lower SOLVER.BASE_LR or raise SOLVER.WARMUP_ITERS, then --resume.") from None


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    try:
        setup(args)  # fail fast, with a message instead of a traceback, before any worker starts
    except (GEConfigError, DatasetMissingError) as e:
        sys.exit(f"error: {e}")
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
