"""COCO evaluation (box AP, and mask AP for Mask R-CNN) with detectron2's COCOEvaluator.

Its fast backend is detectron2's C++ ``COCOeval_opt``. Where detectron2 was built without its
extension, ``ge_detectron.compat`` puts ``fast_coco_eval`` in its place: faster-coco-eval's
``COCOeval_faster`` (identical numbers to pycocotools, several times faster), or pycocotools' own
``COCOeval`` for data that faster-coco-eval cannot take: image or category ids that are not integers,
such as the file-name ids of detectron2's builtin Pascal VOC datasets.
"""
import logging
import numbers

from detectron2.evaluation import COCOEvaluator
from pycocotools.cocoeval import COCOeval

logger = logging.getLogger(__name__)


def _non_integer_id(coco_gt):
    """An image or category id of ``coco_gt`` that is not an integer, or None."""
    return next((i for i in [*coco_gt.getImgIds(), *coco_gt.getCatIds()] if not isinstance(i, numbers.Integral)), None)


def fast_coco_eval(coco_gt, coco_dt, iou_type):
    """A ``COCOeval``-compatible evaluator of ``coco_dt`` against ``coco_gt``: faster-coco-eval's where it
    can take the data (and is installed), else pycocotools' (one log line says why)."""
    try:
        from faster_coco_eval import COCOeval_faster
    except ImportError:
        logger.info("COCO evaluation with pycocotools: faster-coco-eval is not installed.")
        return COCOeval(coco_gt, coco_dt, iou_type)
    example = _non_integer_id(coco_gt)
    if example is not None:
        logger.info(f"COCO evaluation with pycocotools: faster-coco-eval needs integer image and category ids, "
                    f"this dataset has e.g. {example!r}.")
        return COCOeval(coco_gt, coco_dt, iou_type)
    return COCOeval_faster(coco_gt, coco_dt, iou_type)


def coco_evaluator(dataset_name, output_dir=None):
    """COCOEvaluator with the fast backend (identical stats to pycocotools): box AP, and mask AP for a
    detector that predicts masks (the tasks follow the predictions). LazyConfigs use it as
    ``dataloader.evaluator``."""
    return COCOEvaluator(dataset_name, distributed=True, output_dir=output_dir, use_fast_impl=True)


def build_coco_evaluator(cfg, dataset_name, output_dir):
    """``coco_evaluator`` for a YAML config's test dataset."""
    return coco_evaluator(dataset_name, output_dir)
