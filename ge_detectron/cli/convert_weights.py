"""tools/convert_weights.py: backbone weights (a pretraining checkpoint, a torchvision ResNet state_dict, a
MindSpore GENet_Res50 checkpoint) to a detectron2 .pkl for MODEL.WEIGHTS, and a report of what it holds."""
import argparse
import os
import pickle
import sys

from fvcore.common.checkpoint import get_missing_parameters_message, get_unexpected_parameters_message

from ..config import GEConfigError, get_ge_cfg
from ..pretrain.convert import (TORCHVISION_CONVENTIONS, detect_format, load_into_detector, load_state_dict,
                      to_backbone_checkpoint)
from ..pretrain.mindspore import genet_checkpoint_to_pkl

USAGE = """Convert backbone weights for the GE detectors (docs/pretraining.md, "Weight hand-off").

    python tools/convert_weights.py output/pretrain/r50_theta_e8/model_final.pth r50_theta_e8.pkl
    python tools/convert_weights.py resnet50-0676ba61.pth r50_torchvision.pkl        # torchvision state_dict
    python tools/convert_weights.py IN.pth OUT.pkl --check configs/faster_rcnn_ge_r50_pretrained.yaml
    python tools/convert_weights.py genetres50_plus_...top5acc94.14.ckpt output/weights/mindspore_r50_theta_plus.pkl

The input is a tools/pretrain_net.py checkpoint or a torchvision ResNet-50/101/152 state_dict (told
apart by their parameter names unless --format says), or one of MindSpore's GENet_Res50 checkpoints (a
``.ckpt``: its variant is recognised from its tensors; the sha256 is printed and matched against the three
published files). The output is a detectron2 ``.pkl`` for MODEL.WEIGHTS; from a MindSpore checkpoint it
also holds the classifier (``linear.*``), used by configs/pretrain/mindspore/ and ignored by detectors. ``--check CONFIG`` builds that detector on the CPU, loads the output into it and lists
what the checkpoint does not cover (missing) and what the detector does not use (unused).
"""


def print_mindspore_report(report, output):
    variant = report["variant"]
    print(f"sha256 {report['sha256']}")
    if report["published"]:
        _, name, accuracy = report["published"]
        print(f"This is MindSpore's published GENet_Res50 {variant} checkpoint {name}.ckpt "
              f"(ImageNet top-1 / top-5 {accuracy} as reported by MindSpore).")
    else:
        print("This is not one of the three published GENet_Res50 files (docs/pretraining.md lists their sha256).")
    (tensors, values), (out_tensors, out_values) = report["read"], report["written"]
    ignored = f", {len(report['ignored'])} optimizer entries ignored" if report["ignored"] else ""
    print(f"Read GENet_Res50 {variant}: {tensors} tensors, {values:,} values{ignored}. Wrote {out_tensors} tensors, "
          f"{out_values:,} values (backbone and linear.* head) to {output}.")
    print(f"Evaluate it with configs/pretrain/mindspore/r50_{variant}.yaml, train a detector from it with "
          f"configs/faster_rcnn_ge_{variant}_global_r50_mindspore.yaml (MODEL.WEIGHTS {output}).")


def run_convert_weights(argv=None):
    """tools/convert_weights.py: convert, write the .pkl, say what it holds and, with --check, what the detector
    of a config takes from it."""
    parser = argparse.ArgumentParser(prog="convert_weights.py", description=USAGE,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="pretraining checkpoint (.pth), torchvision ResNet state_dict (.pth) or "
                                      "MindSpore GENet_Res50 checkpoint (.ckpt)")
    parser.add_argument("output", help="detectron2 checkpoint to write (.pkl)")
    parser.add_argument("--format", choices=("auto", "pretrain", "torchvision", "mindspore"), default="auto",
                        help="auto: mindspore for a .ckpt, else told apart by the parameter names")
    parser.add_argument("--check", metavar="CONFIG", help="detection config to load the result into, as a check")
    parser.add_argument("opts", nargs="*", help="KEY VALUE overrides of the --check config")
    args = parser.parse_intermixed_args(argv)
    if not args.output.endswith(".pkl"):
        sys.exit("convert_weights.py: error: the output must end in .pkl (detectron2 reads .pkl files as "
                 "model-zoo checkpoints with name matching).")
    mindspore = args.format == "mindspore" or (args.format == "auto" and args.input.endswith(".ckpt"))
    try:
        if mindspore:
            source, (checkpoint, report) = "mindspore", genet_checkpoint_to_pkl(args.input)
        else:
            state_dict = load_state_dict(args.input)
            source = detect_format(state_dict) if args.format == "auto" else args.format
            checkpoint = to_backbone_checkpoint(state_dict, source, f"ge_detectron convert_weights ({source})")
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError) as e:
        sys.exit(f"convert_weights.py: error: cannot convert {args.input!r}: {e}")
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "wb") as f:
        pickle.dump(checkpoint, f)
    if mindspore:
        print_mindspore_report(report, args.output)
    elif source == "torchvision":
        print(f"Wrote {len(checkpoint['model'])} {source} backbone tensors to {args.output}.")
        print("Torchvision weights need these detection keys (configs/faster_rcnn_ge_r50_torchvision.yaml sets them):")
        for key, value in TORCHVISION_CONVENTIONS.items():
            print(f"  {key}: {value}")
    else:
        print(f"Wrote {len(checkpoint['model'])} {source} backbone tensors to {args.output}.")
        print("The detection config must use the pretraining config's MODEL.RESNETS, MODEL.GE, MODEL.PIXEL_MEAN / "
              "PIXEL_STD and INPUT.FORMAT; for configs/pretrain/* that is configs/faster_rcnn_ge_r50_pretrained.yaml.")
    if args.check:
        try:
            cfg = get_ge_cfg(args.check, ["MODEL.WEIGHTS", args.output, "MODEL.DEVICE", "cpu", *args.opts])
        except GEConfigError as e:
            sys.exit(f"convert_weights.py: error: {e}")
        _, incompatible = load_into_detector(cfg, args.output)
        print(f"Loaded into the detector of {args.check}:")
        print(get_missing_parameters_message(incompatible.missing_keys) if incompatible.missing_keys
              else "  every detector parameter was in the checkpoint.")
        if incompatible.unexpected_keys:
            print(get_unexpected_parameters_message(incompatible.unexpected_keys))
        for key, shape_ckpt, shape_model in incompatible.incorrect_shapes:
            print(f"  skipped {key}: checkpoint shape {shape_ckpt}, detector shape {shape_model}")

