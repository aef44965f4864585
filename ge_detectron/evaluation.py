"""COCO evaluation (box AP, and mask AP for Mask R-CNN) with detectron2's COCOEvaluator.

Its fast backend is detectron2's C++ ``COCOeval_opt``. Where detectron2 was built without its
extension, ``ge_detectron.compat`` puts ``coco_eval.fast_coco_eval`` in its place (faster-coco-eval, or
pycocotools for non-integer ids).
"""
from detectron2.evaluation import COCOEvaluator

from .coco_eval import fast_coco_eval

__all__ = ["fast_coco_eval", "coco_evaluator", "build_coco_evaluator"]


def coco_evaluator(dataset_name, output_dir=None):
    """COCOEvaluator with the fast backend (identical stats to pycocotools): box AP, and mask AP for a
    detector that predicts masks (the tasks follow the predictions). LazyConfigs use it as
    ``dataloader.evaluator``."""
    return COCOEvaluator(dataset_name, distributed=True, output_dir=output_dir, use_fast_impl=True)


def build_coco_evaluator(cfg, dataset_name, output_dir):
    """``coco_evaluator`` for a YAML config's test dataset."""
    return coco_evaluator(dataset_name, output_dir)
