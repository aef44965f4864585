"""tools/export_model.py: a trained detector of a YAML config or a LazyConfig, its weights found as
tools/predict.py finds them, exported to TorchScript or ONNX (``export.export_predictor``)."""
import argparse

from ..detection.images import read_input
from ..detection.predictor import build_predictor
from ..detection.task_mixin import register_coco_datasets
from ..export.exporter import FORMATS, check_format, export_predictor, spec_path
from .checks import exit_on_check_error
from .options import add_dataset_and_override_options, weights_epilog

__all__ = ["export_argument_parser", "run_export"]


def export_argument_parser():
    parser = argparse.ArgumentParser(
        prog="export_model.py",
        description="Export a trained detector to TorchScript or ONNX: DIR/model.ts or DIR/model.onnx, and "
                    "DIR/model.onnx.json or model.ts.json (the input format, test resize, class names, output layout).",
        epilog=weights_epilog("exported"))
    parser.add_argument("--config-file", required=True, metavar="FILE", help="a YAML config or a LazyConfig (.py)")
    parser.add_argument("--format", required=True, metavar="FORMAT", help=" or ".join(FORMATS))
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the model file and its JSON file")
    parser.add_argument("--sample-image", metavar="IMG",
                        help="the image to trace with (best one with detections); default: a noise image")
    return add_dataset_and_override_options(parser)


def run_export(argv=None):
    parser = export_argument_parser()
    args = parser.parse_args(argv)
    with exit_on_check_error(f"{parser.prog}: error"):
        check_format(args.format, "--format")
        register_coco_datasets(args)
        predictor = build_predictor(args.config_file, args.opts)
        config = {"config_file": args.config_file, "overrides": list(args.opts)}
        image = read_input(args.sample_image, predictor.image_format) if args.sample_image else None
        path = export_predictor(predictor, args.format, args.output, config, image)
    print(f"wrote {path} and {spec_path(path)}")
    return path
