"""COCO evaluation with detectron2's COCOEvaluator, backed by faster-coco-eval where detectron2 was
built without its C++ extension (whose ``COCOeval_opt`` would otherwise be the fast backend)."""
from detectron2.evaluation import COCOEvaluator, coco_evaluation

from . import compat


def _use_faster_coco_eval():
    if "detectron2._C placeholder" in compat.APPLIED:
        from faster_coco_eval import COCOeval_faster

        coco_evaluation.COCOeval_opt = COCOeval_faster


def coco_evaluator(dataset_name, output_dir=None):
    """COCOEvaluator with the fast backend (identical stats to pycocotools): box AP, and mask AP for a
    detector that predicts masks (the tasks follow the predictions). LazyConfigs use it as
    ``dataloader.evaluator``."""
    _use_faster_coco_eval()
    return COCOEvaluator(dataset_name, distributed=True, output_dir=output_dir, use_fast_impl=True)


def build_coco_evaluator(cfg, dataset_name, output_dir):
    """``coco_evaluator`` for a YAML config's test dataset."""
    return coco_evaluator(dataset_name, output_dir)
