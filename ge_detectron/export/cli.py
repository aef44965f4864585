"""tools/export_model.py: a trained detector of a YAML config or a LazyConfig, its weights found as
tools/predict.py finds them, exported to TorchScript or ONNX (``export_predictor``)."""
import argparse
import sys

from ..config import get_ge_cfg
from ..detection.cli import CHECK_ERRORS, add_register_coco_argument, register_datasets_from_args
from ..detection.lazy import load_lazy_config
from ..detection.predictor import read_input, predictor_from_lazy, predictor_from_yaml
from ..launch import check_device
from .exporter import FORMATS, export_predictor, spec_path

__all__ = ["export_argument_parser", "predictor_from_config", "run_export"]


def export_argument_parser():
    parser = argparse.ArgumentParser(
        prog="export_model.py",
        description="Export a trained detector to TorchScript or ONNX: DIR/model.ts or DIR/model.onnx, and "
                    "DIR/model.onnx.json or model.ts.json (the input format, test resize, class names, output layout).",
        epilog="Without MODEL.WEIGHTS (YAML) or train.init_checkpoint=... (LazyConfig) the last checkpoint "
               "that training with the config wrote to its output directory is exported.")
    parser.add_argument("--config-file", required=True, metavar="FILE", help="a YAML config or a LazyConfig (.py)")
    parser.add_argument("--format", required=True, metavar="FORMAT", help=" or ".join(FORMATS))
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the model file and its JSON file")
    parser.add_argument("--sample-image", metavar="IMG",
                        help="the image to trace with (best one with detections); default: a noise image")
    add_register_coco_argument(parser)
    parser.add_argument("opts", nargs=argparse.REMAINDER,
                        help="config overrides: KEY VALUE pairs (YAML) or key=value (LazyConfig)")
    return parser


def predictor_from_config(config_file, opts):
    """The PyTorch Predictor of a config file with overrides, its weights as tools/predict.py finds them,
    and {"config_file", "overrides", "weights"} to record."""
    if config_file.endswith(".py"):
        cfg = load_lazy_config(config_file, opts)
        given = [o.split("=", 1)[1] for o in opts if o.lstrip("+").startswith("train.init_checkpoint=")]
        check_device(cfg.train.device, "train.device")
        predictor = predictor_from_lazy(cfg, config_file, given[-1] if given else None)
    else:
        cfg = get_ge_cfg(config_file, opts)
        given = ["MODEL.WEIGHTS"] if "MODEL.WEIGHTS" in opts[::2] else []
        check_device(cfg.MODEL.DEVICE)
        predictor = predictor_from_yaml(cfg, config_file, cfg.MODEL.WEIGHTS if given else None)
    return predictor, {"config_file": config_file, "overrides": list(opts)}


def run_export(argv=None):
    parser = export_argument_parser()
    args = parser.parse_args(argv)
    try:
        if args.format not in FORMATS:
            raise ValueError(f"--format {args.format!r} is not one of {', '.join(FORMATS)}.")
        register_datasets_from_args(args)
        predictor, config = predictor_from_config(args.config_file, args.opts)
        image = read_input(args.sample_image, predictor.image_format) if args.sample_image else None
        path = export_predictor(predictor, args.format, args.output, config, image)
    except CHECK_ERRORS as e:
        sys.exit(f"{parser.prog}: error: {e}")
    print(f"wrote {path} and {spec_path(path)}")
    return path
