"""The options of the tools that take a trained detector's config (tools/predict.py, tools/export_model.py)."""
import argparse

from ..detection.task_mixin import add_register_coco_option

__all__ = ["weights_epilog", "add_dataset_and_override_options"]


def weights_epilog(verb):
    """The help's last paragraph: where the weights come from; ``verb``: what the tool does with them."""
    return ("Without MODEL.WEIGHTS (YAML) or train.init_checkpoint=... (LazyConfig) the last checkpoint "
            f"that training with the config wrote to its output directory is {verb}.")


def add_dataset_and_override_options(parser):
    """``--register-coco`` and the trailing config overrides, the last options of ``parser``."""
    add_register_coco_option(parser)
    parser.add_argument("opts", nargs=argparse.REMAINDER,
                        help="config overrides: KEY VALUE pairs (YAML) or key=value (LazyConfig)")
    return parser
