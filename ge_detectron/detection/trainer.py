"""The detection config systems' shared part (``DetectionData``: ``--register-coco`` and the datasets
checked before training) and the YAML one (tools/train_net.py): ``YAMLDetection``, detectron2's
DefaultTrainer builders with the training and test data through the bad-data handling of ``data/sanitize.py`` and
COCO evaluation (box AP, and mask AP for Mask R-CNN); ``DetectionTrainer``, the trainer of it."""
import os

from detectron2.data import DatasetMapper
from detectron2.engine import DefaultTrainer

from ..config import get_ge_cfg
from ..data import check_num_classes, prepare_datasets, register_coco_dataset
from ..data.sanitize import build_sanitized_test_loader, build_sanitized_train_loader, load_train_dataset_dicts
from ..engine import GETrainer, YAMLConfigSystem
from ..evaluation import build_coco_evaluator

__all__ = ["DetectionData", "YAMLDetection", "DetectionTrainer"]


class DetectionData:
    """What the detection config systems share: the ``--register-coco`` option, the config of the tool's
    arguments (``load(config_file, opts)`` of the subclass) and the datasets checked before training
    (registered, on disk, the demo data generated on first use, as many categories as the detector has
    classes). A subclass says ``dataset_names()`` (train, test) and ``num_classes`` ((key, value) or None)."""

    @classmethod
    def add_arguments(cls, parser):
        parser.add_argument("--register-coco", nargs=3, action="append", default=[],
                            metavar=("NAME", "JSON", "IMAGE_ROOT"),
                            help="register a COCO-format instances dataset (annotation JSON, image folder) as NAME, "
                                 "to name in the config's datasets; repeatable")
        return parser

    @staticmethod
    def register_datasets(args):
        for name, json_file, image_root in args.register_coco:
            register_coco_dataset(name, json_file, image_root)

    @classmethod
    def from_args(cls, args):
        cls.register_datasets(args)
        return cls(cls.load(args.config_file, args.opts))

    def check(self, eval_only):
        """The datasets (the test datasets alone for ``--eval-only``) on disk and of the detector's classes."""
        train_names, test_names = self.dataset_names()
        names = ([] if eval_only else train_names) + test_names
        prepare_datasets(names)
        if self.num_classes is not None:
            check_num_classes(names, *self.num_classes)


class YAMLDetection(DetectionData, YAMLConfigSystem):
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
    config_system = YAMLDetection
