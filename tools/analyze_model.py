#!/usr/bin/env python
"""Parameters (millions) and FLOPs (fvcore) of the GE-ResNet ImageNet classifiers at 224x224, as one
markdown table with the change against the plain ResNet of the same depth; with --detectors, of
detection configs too (slow on a CPU: one inference at 800x1333 per config).

    python tools/analyze_model.py                                   # R50, R101 x variants x extents
    python tools/analyze_model.py --depths 50 --extents 0 8
    python tools/analyze_model.py --depths --detectors configs/faster_rcnn_r50.yaml configs/faster_rcnn_ge_r50.yaml
"""
import argparse
import os

import ge_detectron  # noqa: F401  (compat fixes before detectron2 is used)
from ge_detectron.pretrain.complexity import (classifier_cfg, classifier_stats, detector_cfg, detector_stats,
                                              markdown_table)

IMAGENET_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "pretrain", "Base-ImageNet.yaml")


def classifier_grid(depths, variants, extents):
    """(depth, variant, extent) points: the plain ResNet first; "none" and "se" have no extent."""
    for depth in depths:
        yield depth, "none", 0
        for variant in variants:
            if variant == "se":
                yield depth, variant, 0
            elif variant != "none":
                yield from ((depth, variant, extent) for extent in extents)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classifier-config", default=IMAGENET_CONFIG,
                        help="pretraining config of the classifiers (default: %(default)s)")
    parser.add_argument("--depths", type=int, nargs="*", default=[50, 101])
    parser.add_argument("--variants", nargs="+", default=["se", "theta_minus", "theta", "theta_plus"])
    parser.add_argument("--extents", type=int, nargs="+", default=[0, 2, 4, 8], help="0 = global")
    parser.add_argument("--detectors", nargs="*", default=[], metavar="CONFIG")
    parser.add_argument("--detector-size", type=int, nargs=2, default=[800, 1333], metavar=("H", "W"))
    args = parser.parse_args()

    rows, plain = [], {}
    for depth, variant, extent in classifier_grid(args.depths, args.variants, args.extents):
        params, flops = classifier_stats(classifier_cfg(args.classifier_config, depth, variant, extent))
        base_params, base_flops = plain.setdefault(depth, (params, flops))
        extent_name = "-" if variant == "none" else "global" if extent == 0 else f"E{extent}"
        rows.append([f"R{depth}", variant, extent_name, f"{params / 1e6:.3f}", f"{(params - base_params) / 1e6:+.3f}",
                     f"{flops / 1e9:.4f}", f"{100 * (flops - base_flops) / base_flops:+.3f}%"])
    if rows:
        print(markdown_table(["depth", "variant", "extent", "params (M)", "Δ params (M)", "GFLOPs", "Δ FLOPs"], rows))

    rows = []
    for config in args.detectors:
        params, flops = detector_stats(detector_cfg(config), *args.detector_size)
        rows.append([config, f"{params / 1e6:.3f}", f"{flops / 1e9:.1f}"])
    if rows:
        h, w = args.detector_size
        print(f"\nDetectors, one {h}x{w} image in inference, MODEL.RPN.POST_NMS_TOPK_TEST proposals:")
        print(markdown_table(["config", "params (M)", "GFLOPs"], rows))


if __name__ == "__main__":
    main()
