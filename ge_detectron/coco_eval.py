"""``fast_coco_eval``: a ``COCOeval``-compatible evaluator, faster-coco-eval's ``COCOeval_faster`` (identical
numbers to pycocotools, several times faster), or pycocotools' own ``COCOeval`` for data that faster-coco-eval
cannot take: image or category ids that are not integers, such as the file-name ids of detectron2's builtin
Pascal VOC datasets.

It imports pycocotools and faster-coco-eval only, no detectron2 module: ``ge_detectron.compat`` puts it in
place of detectron2's C++ ``COCOeval_opt`` where detectron2 was built without its extension, before any
detectron2 module that needs the extension is imported.
"""
import logging
import numbers

from pycocotools.cocoeval import COCOeval

__all__ = ["fast_coco_eval"]

logger = logging.getLogger(__name__)


def _non_integer_id(coco_gt):
    """An image or category id of ``coco_gt`` that is not an integer, or None."""
    return next((i for i in [*coco_gt.getImgIds(), *coco_gt.getCatIds()] if not isinstance(i, numbers.Integral)), None)


def fast_coco_eval(coco_gt, coco_dt, iou_type):
    """A ``COCOeval``-compatible evaluator of ``coco_dt`` against ``coco_gt``: faster-coco-eval's where it
    can take the data (and is installed), else pycocotools' (one log line says why)."""
    try:
        from faster_coco_eval import COCOeval_faster  # optional: the fallback is pycocotools'
    except ImportError:
        logger.info("COCO evaluation with pycocotools: faster-coco-eval is not installed.")
        return COCOeval(coco_gt, coco_dt, iou_type)
    example = _non_integer_id(coco_gt)
    if example is not None:
        logger.info(f"COCO evaluation with pycocotools: faster-coco-eval needs integer image and category ids, "
                    f"this dataset has e.g. {example!r}.")
        return COCOeval(coco_gt, coco_dt, iou_type)
    return COCOeval_faster(coco_gt, coco_dt, iou_type)
