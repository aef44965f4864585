#!/usr/bin/env python
"""The GE paper's Section 4 analyses of a classifier checkpoint (docs/analysis.md): class selectivity of the
blocks of a stage (Fig. 3), top-1 when a block's residual channels are zeroed in the order of their excite
gates (Fig. 5), and the distribution of the gates per stage and per class.

    python tools/analyze_features.py --config-file configs/pretrain/demo_shapes.yaml \\
        --compare configs/pretrain/demo_shapes.yaml --compare-opts MODEL.GE.VARIANT none \\
        OUTPUT_DIR output/pretrain/demo_shapes_none --data datasets/ge_shape_classes/val \\
        --output output/analysis/demo_shapes --stage res4

The weights are MODEL.WEIGHTS, or OUTPUT_DIR/model_final.pth when it is empty (tools/pretrain_net.py's
output). Trailing KEY VALUE pairs override --config-file; --compare-opts (which takes the KEY VALUE
pairs up to the next option) override --compare. Writes analysis.json (every plotted number) and
selectivity.png, pruning.png, gates.png into --output.
"""
import argparse
import sys

import ge_detectron  # noqa: F401  (compat fixes before detectron2 is used)
from ge_detectron.analysis import PARTS, analyze_features, image_folder_loader, load_classifier, save_results
from ge_detectron.data.classification import build_eval_transform
from ge_detectron.pretrain import get_pretrain_cfg

_INPUT_KEYS = ("PRETRAIN.CROP_SIZE", "PRETRAIN.RESIZE_SIZE", "INPUT.FORMAT")


def describe(cfg):
    ge = cfg.MODEL.GE
    if ge.VARIANT == "none":
        return f"ResNet-{cfg.MODEL.RESNETS.DEPTH}"
    extent = "" if ge.VARIANT == "se" else " global" if ge.EXTENT == 0 else f" E{ge.EXTENT}"
    return f"GE-{ge.VARIANT}{extent} ResNet-{cfg.MODEL.RESNETS.DEPTH}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="pretraining config of the (GE) classifier")
    parser.add_argument("--compare", metavar="CONFIG", help="config of a classifier to compare with (e.g. no GE)")
    parser.add_argument("--compare-opts", nargs="*", default=[], metavar="KEY VALUE", help="overrides of --compare")
    parser.add_argument("--data", required=True, help="ImageFolder of the model's classes (e.g. the validation set)")
    parser.add_argument("--output", required=True, help="folder for analysis.json and the figures")
    parser.add_argument("--stage", default="res4", help="stage of the selectivity and pruning analyses")
    parser.add_argument("--blocks", type=int, nargs="+", help="blocks of --stage for selectivity (default: all)")
    parser.add_argument("--prune-blocks", type=int, nargs="+", help="blocks of --stage to prune (default: the last)")
    parser.add_argument("--prune-ratios", type=float, nargs="+", default=[round(0.1 * i, 1) for i in range(11)])
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--images-per-class", type=int, default=0, help="the first N images of each class (0: all)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--gate-classes", type=int, default=8, help="classes drawn in the per-class gate plot")
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE", help="overrides of --config-file")
    args = parser.parse_args()
    try:
        cfg = get_pretrain_cfg(args.config_file, args.opts)
        compare_cfg = get_pretrain_cfg(args.compare, args.compare_opts) if args.compare else None
        for key in _INPUT_KEYS if compare_cfg else ():
            section, name = key.split(".")
            if cfg[section][name] != compare_cfg[section][name]:
                raise ValueError(f"--compare has {key} {compare_cfg[section][name]!r}, --config-file "
                                 f"{cfg[section][name]!r}: both models must see the same input.")
        if compare_cfg and compare_cfg.MODEL.GE.NUM_CLASSES != cfg.MODEL.GE.NUM_CLASSES:
            raise ValueError("--compare has another MODEL.GE.NUM_CLASSES than --config-file: compare models of the "
                             "same classes.")
        loader, classes = image_folder_loader(args.data, build_eval_transform(cfg), args.batch_size,
                                              cfg.MODEL.GE.NUM_CLASSES, args.images_per_class,
                                              cfg.DATALOADER.NUM_WORKERS)
        allow_missing_head = "pruning" not in args.parts
        model = load_classifier(cfg, allow_missing_head)
        compare = load_classifier(compare_cfg, allow_missing_head) if compare_cfg else None
        results = analyze_features(model, loader, classes, compare=compare, stage=args.stage, blocks=args.blocks,
                                   prune_blocks=args.prune_blocks, prune_ratios=sorted(set(args.prune_ratios)),
                                   parts=args.parts, gate_classes=args.gate_classes)
    except ValueError as e:  # GEConfigError, PretrainConfigError, AnalysisError
        sys.exit(f"analyze_features.py: error: {e}")
    results["labels"] = {"model": describe(cfg), "compare": describe(compare_cfg) if compare_cfg else ""}
    for path in save_results(results, args.output):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
