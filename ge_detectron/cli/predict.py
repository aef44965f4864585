"""tools/predict.py: a trained detector of a YAML config or a LazyConfig (``detection.predictor``), or an
exported one (``--onnx``: ``export.predictor``), on the user's images (``detection.images``)."""
import argparse
import os

from ..detection.images import list_inputs, write_predictions
from ..detection.predictor import build_predictor
from ..detection.task_mixin import register_coco_datasets
from ..export.predictor import ExportedPredictor
from .checks import exit_on_check_error
from .options import add_dataset_and_override_options, weights_epilog

__all__ = ["predict_argument_parser", "run_predict"]


def predict_argument_parser():
    parser = argparse.ArgumentParser(
        description="Run a trained detector on images; draw its detections (boxes, masks) on each.",
        epilog=weights_epilog("used"))
    parser.add_argument("--config-file", metavar="FILE", help="a YAML config or a LazyConfig (.py)")
    parser.add_argument("--onnx", metavar="FILE", help="instead of --config-file: a model.onnx (or model.ts) of "
                                                       "tools/export_model.py, run in ONNX Runtime (TorchScript)")
    parser.add_argument("--input", required=True, nargs="+", metavar="PATH",
                        help="image files, directories (their images) or glob patterns (quote them)")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for one <input name>.png per input")
    parser.add_argument("--json", action="store_true", help="also write all detections as COCO results to "
                                                             "DIR/predictions.json")
    parser.add_argument("--score-threshold", type=float, default=0.5, help="draw detections scoring at least this")
    return add_dataset_and_override_options(parser)


def run_predict(argv=None):
    parser = predict_argument_parser()
    args = parser.parse_args(argv)
    if (args.config_file is None) == (args.onnx is None):
        parser.error("give either --config-file or --onnx")
    with exit_on_check_error():
        register_coco_datasets(args)
        files = list_inputs(args.input)
        predictor = ExportedPredictor(args.onnx) if args.onnx else build_predictor(args.config_file, args.opts)
        json_path = os.path.join(args.output, "predictions.json") if args.json else None
        write_predictions(predictor, files, args.output, args.score_threshold, json_path)
