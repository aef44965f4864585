"""The YAML detection task (tools/train_net.py): ``YAMLDetection``, detectron2's
DefaultTrainer builders with the training and test data through the bad-data handling of ``data/sanitize.py`` and
COCO evaluation (box AP, and mask AP for Mask R-CNN); ``DetectionTrainer``, the trainer of it."""
import os

from detectron2.data import DatasetMapper
from detectron2.engine import DefaultTrainer

from ..config import get_ge_cfg
from ..data.sanitize import build_sanitized_test_loader, build_sanitized_train_loader, load_train_dataset_dicts
from ..engine import GETrainer, YAMLTaskAdapter
from ..evaluation import build_coco_evaluator
from .task_mixin import DetectionTaskMixin

__all__ = ["YAMLDetection", "DetectionTrainer"]


class YAMLDetection(DetectionTaskMixin, YAMLTaskAdapter):
    """A YAML detection config (``get_ge_cfg``)."""

    load = staticmethod(get_ge_cfg)

    @property
    def num_classes(self):
        """``(key, value)`` of the detector's number of classes: MODEL.RETINANET.NUM_CLASSES for RetinaNet,
        else MODEL.ROI_HEADS.NUM_CLASSES."""
        if self.cfg.MODEL.META_ARCHITECTURE == "RetinaNet":
            return "MODEL.RETINANET.NUM_CLASSES", self.cfg.MODEL.RETINANET.NUM_CLASSES
        return "MODEL.ROI_HEADS.NUM_CLASSES", self.cfg.MODEL.ROI_HEADS.NUM_CLASSES

    def dataset_names(self):
        return list(self.cfg.DATASETS.TRAIN), list(self.cfg.DATASETS.TEST)

    def build_train_loader(self):
        return build_sanitized_train_loader(self.cfg, dataset=load_train_dataset_dicts(self.cfg),
                                            mapper=DatasetMapper(self.cfg, is_train=True))

    def build_test_mapper(self):
        return DatasetMapper(self.cfg, is_train=False)

    def build_test_loader(self, dataset_name=None):
        return build_sanitized_test_loader(self.cfg, dataset_name, mapper=self.build_test_mapper())

    def test(self, model, evaluators=None):
        """DefaultTrainer's evaluation of every dataset in DATASETS.TEST, with COCOEvaluator."""
        output_folder = os.path.join(self.cfg.OUTPUT_DIR, "inference")
        return DefaultTrainer.test(self.cfg, model, evaluators or [
            build_coco_evaluator(self.cfg, name, output_folder) for name in self.cfg.DATASETS.TEST])


class DetectionTrainer(GETrainer):
    task_adapter = YAMLDetection
