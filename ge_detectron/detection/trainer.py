"""The detection trainer of YAML configs (tools/train_net.py): GETrainer with the training data through
the bad-data handling of ``data/sanitize.py`` and COCO evaluation (box AP, and mask AP for Mask R-CNN)."""
import os

from detectron2.data import DatasetMapper

from ..data.sanitize import build_sanitized_train_loader, load_train_dataset_dicts
from ..engine import GETrainer
from ..evaluation import build_coco_evaluator


class DetectionTrainer(GETrainer):
    @classmethod
    def build_train_loader(cls, cfg):
        return build_sanitized_train_loader(cfg, dataset=load_train_dataset_dicts(cfg),
                                            mapper=DatasetMapper(cfg, is_train=True))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_coco_evaluator(cfg, dataset_name, output_folder or os.path.join(cfg.OUTPUT_DIR, "inference"))
