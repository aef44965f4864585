"""The command-line flows of tools/train_net.py (YAML configs), tools/lazyconfig_train_net.py (LazyConfigs)
and tools/predict.py.

The training flows share detectron2's options (``--config-file``, ``--resume``, ``--eval-only``,
``--num-gpus``, ``--num-machines``, ``--machine-rank``, ``--dist-url``, trailing overrides) plus
``--register-coco NAME JSON IMAGE_ROOT``, torchrun or detectron2's launch (ge_detectron.launch), and the
same checks before any process starts: the config, the datasets (registered, on disk, with as many
categories as the detector has classes), the device and the process layout. A failed check is a one-line
``error: ...`` and exit status 1, not a traceback.
"""
import argparse
import os
import sys

from detectron2.config import instantiate
from detectron2.engine import default_argument_parser, default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from .. import compat
from ..checkpoint import GECheckpointer
from ..config import detector_num_classes, get_ge_cfg
from ..data import DatasetError, check_num_classes, prepare_datasets, register_coco_dataset
from ..engine import train_or_evaluate, train_or_exit
from ..export import ExportedPredictor
from ..launch import check_device, check_launch_args, launch_from_args
from .lazy import LazyTrainer, check_lazy_model, lazy_dataset_names, lazy_num_classes, lazy_test, load_lazy_config
from .predictor import list_inputs, predictor_from_lazy, predictor_from_yaml, write_predictions
from .trainer import DetectionTrainer

__all__ = ["add_register_coco_argument", "register_datasets_from_args", "setup_yaml", "setup_lazy",
           "train_net_main", "lazyconfig_train_net_main", "run_train_net", "run_lazyconfig_train_net", "run_predict"]

# What a check before training raises: GEConfigError, NumClassesMismatchError and check_launch_args'
# errors are ValueErrors; a dataset that is not there or not usable is a DatasetError.
CHECK_ERRORS = (ValueError, DatasetError)


def add_register_coco_argument(parser):
    parser.add_argument("--register-coco", nargs=3, action="append", default=[], metavar=("NAME", "JSON", "IMAGE_ROOT"),
                        help="register a COCO-format instances dataset (annotation JSON, image folder) as NAME, "
                             "to name in the config's datasets; repeatable")
    return parser


def register_datasets_from_args(args):
    for name, json_file, image_root in args.register_coco:
        register_coco_dataset(name, json_file, image_root)


def setup_yaml(args):
    """The validated YAML config of ``args``, with its datasets (the test datasets alone for ``--eval-only``)
    registered, on disk (the demo data generated on first use) and of the detector's number of classes."""
    register_datasets_from_args(args)
    cfg = get_ge_cfg(args.config_file, args.opts)
    names = [*([] if args.eval_only else cfg.DATASETS.TRAIN), *cfg.DATASETS.TEST]
    prepare_datasets(names)
    check_num_classes(names, *detector_num_classes(cfg))
    return cfg


def setup_lazy(args):
    """The LazyConfig of ``args`` with overrides applied, its datasets checked as in ``setup_yaml``."""
    register_datasets_from_args(args)
    cfg = load_lazy_config(args.config_file, args.opts)
    train_names, test_names = lazy_dataset_names(cfg)
    names = ([] if args.eval_only else train_names) + test_names
    prepare_datasets(names)
    num_classes = lazy_num_classes(cfg)
    if num_classes is not None:
        check_num_classes(names, *num_classes)
    return cfg


def train_net_main(args):
    """tools/train_net.py in one training process."""
    return train_or_evaluate(DetectionTrainer, setup_yaml(args), args)


def lazyconfig_train_net_main(args):
    """tools/lazyconfig_train_net.py in one training process."""
    cfg = setup_lazy(args)
    default_setup(cfg, args)
    setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="ge_detectron")
    compat.log_applied()
    if args.eval_only:
        model = instantiate(cfg.model).to(cfg.train.device)
        GECheckpointer(model, save_dir=cfg.train.output_dir).resume_or_load(cfg.train.init_checkpoint,
                                                                             resume=args.resume)
        return lazy_test(cfg, model)
    trainer = LazyTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return train_or_exit(trainer)


def _parse(argv):
    return add_register_coco_argument(default_argument_parser()).parse_args(argv)


def run_train_net(argv=None):
    args = _parse(argv)
    try:  # fail fast, with a message instead of a traceback, before any worker starts
        cfg = setup_yaml(args)
        check_launch_args(args, cfg.MODEL.DEVICE, cfg.SOLVER.IMS_PER_BATCH)
    except CHECK_ERRORS as e:
        sys.exit(f"error: {e}")
    return launch_from_args(train_net_main, args, cfg.MODEL.DEVICE)


def run_lazyconfig_train_net(argv=None):
    args = _parse(argv)
    try:
        cfg = setup_lazy(args)
        check_lazy_model(cfg)
        check_launch_args(args, cfg.train.device, cfg.dataloader.train.total_batch_size, device_key="train.device",
                          batch_key="dataloader.train.total_batch_size")
    except CHECK_ERRORS as e:
        sys.exit(f"error: {e}")
    return launch_from_args(lazyconfig_train_net_main, args, cfg.train.device)


def predict_argument_parser():
    parser = argparse.ArgumentParser(
        description="Run a trained detector on images; draw its detections (boxes, masks) on each.",
        epilog="Without MODEL.WEIGHTS (YAML) or train.init_checkpoint=... (LazyConfig) the last checkpoint "
               "that training with the config wrote to its output directory is used.")
    parser.add_argument("--config-file", metavar="FILE", help="a YAML config or a LazyConfig (.py)")
    parser.add_argument("--onnx", metavar="FILE", help="instead of --config-file: a model.onnx (or model.ts) of "
                                                       "tools/export_model.py, run in ONNX Runtime (TorchScript)")
    parser.add_argument("--input", required=True, nargs="+", metavar="PATH",
                        help="image files, directories (their images) or glob patterns (quote them)")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for one <input name>.png per input")
    parser.add_argument("--json", action="store_true", help="also write all detections as COCO results to "
                                                             "DIR/predictions.json")
    parser.add_argument("--score-threshold", type=float, default=0.5, help="draw detections scoring at least this")
    add_register_coco_argument(parser)
    parser.add_argument("opts", nargs=argparse.REMAINDER,
                        help="config overrides: KEY VALUE pairs (YAML) or key=value (LazyConfig)")
    return parser


def run_predict(argv=None):
    parser = predict_argument_parser()
    args = parser.parse_args(argv)
    if (args.config_file is None) == (args.onnx is None):
        parser.error("give either --config-file or --onnx")
    try:
        register_datasets_from_args(args)
        files = list_inputs(args.input)
        if args.onnx:
            predictor = ExportedPredictor(args.onnx)
        elif args.config_file.endswith(".py"):
            cfg = load_lazy_config(args.config_file, args.opts)
            given = [o.split("=", 1)[1] for o in args.opts if o.lstrip("+").startswith("train.init_checkpoint=")]
            check_device(cfg.train.device, "train.device")
            predictor = predictor_from_lazy(cfg, args.config_file, given[-1] if given else None)
        else:
            cfg = get_ge_cfg(args.config_file, args.opts)
            given = "MODEL.WEIGHTS" in args.opts[::2]
            check_device(cfg.MODEL.DEVICE)
            predictor = predictor_from_yaml(cfg, args.config_file, cfg.MODEL.WEIGHTS if given else None)
        json_path = os.path.join(args.output, "predictions.json") if args.json else None
        write_predictions(predictor, files, args.output, args.score_threshold, json_path)
    except CHECK_ERRORS as e:
        sys.exit(f"error: {e}")
