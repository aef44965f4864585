"""The pretraining task adapter (tools/pretrain_net.py): detectron2's YAML keys with the classification
model, data and evaluation plugged in (``Pretraining``), and its trainer (``PretrainTrainer``)."""
import logging

from detectron2.engine import default_writers
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm

from ..data.classification import (build_classification_test_loader, build_classification_train_loader,
                                   prepare_image_folders)
from ..engine import GETrainer, YAMLTaskAdapter
from ..modeling.classifier import build_ge_classifier, zero_init_residual
from .config import get_pretrain_cfg
from .evaluator import ClassificationEvaluator
from .printer import PretrainMetricPrinter
from .task import ClassificationTask

__all__ = ["Pretraining", "PretrainTrainer"]

logger = logging.getLogger(__name__)


class Pretraining(YAMLTaskAdapter):
    """Trains ``ClassificationTask(build_ge_classifier(cfg))`` on PRETRAIN.TRAIN_DIR and evaluates top-1 /
    top-5 on PRETRAIN.VAL_DIR every TEST.EVAL_PERIOD iterations and at the end."""

    @classmethod
    def from_args(cls, args):
        return cls(get_pretrain_cfg(args.config_file, args.opts))

    def check(self, eval_only):
        prepare_image_folders(self.cfg)

    def build_model(self):
        cfg = self.cfg
        classifier = build_ge_classifier(cfg)
        if cfg.PRETRAIN.ZERO_INIT_RESIDUAL:
            zero_init_residual(classifier)
        model = ClassificationTask(classifier, cfg.PRETRAIN.LABEL_SMOOTHING).to(cfg.MODEL.DEVICE)
        if cfg.MODEL.BACKBONE.FREEZE_AT > 0:
            logger.warning(f"MODEL.BACKBONE.FREEZE_AT = {cfg.MODEL.BACKBONE.FREEZE_AT}: the first stages stay frozen "
                           "during pretraining; pretraining configs use 0.")
        logger.info(f"Model:\n{model}")
        return model

    def build_train_loader(self):
        return build_classification_train_loader(self.cfg)

    def build_test_loader(self, dataset_name=None):
        return build_classification_test_loader(self.cfg)

    def test(self, model, evaluators=None):
        """Top-1 / top-5 on PRETRAIN.VAL_DIR: ``{"classification": {"top1": %, "top5": %}}``. Images that
        could not be read are left out, with a warning that counts them."""
        cfg, loader, evaluator = self.cfg, self.build_test_loader(), evaluators or ClassificationEvaluator()
        results = inference_on_dataset(model, loader, evaluator)
        if comm.is_main_process():
            counted, total = getattr(evaluator, "count", None), len(loader.dataset)
            if counted is not None and counted < total:
                logger.warning(f"{total - counted} of the {total} images in {cfg.PRETRAIN.VAL_DIR} could not be "
                               f"read: top-1 / top-5 are over the other {counted}.")
            logger.info(f"Evaluation on {cfg.PRETRAIN.VAL_DIR}{'' if counted is None else f' ({counted} images)'}:")
            print_csv_format(results)
        return results

    def build_writers(self, max_iter, data_loader):
        """detectron2's default writers (metrics.json, TensorBoard) with our printer for its CommonMetricPrinter."""
        printer = PretrainMetricPrinter(max_iter, self.cfg.SOLVER.IMS_PER_BATCH, len(data_loader.dataset))
        return [printer, *default_writers(self.cfg.OUTPUT_DIR, max_iter)[1:]]


class PretrainTrainer(GETrainer):
    task_adapter = Pretraining
