"""The pretraining loop: detectron2's DefaultTrainer (hooks, checkpointing, LR schedule, evaluation,
writers, ``resume_or_load``) with the classification model, data and evaluation plugged in."""
import logging

from detectron2.engine import default_writers
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm

from ..data.classification import build_classification_test_loader, build_classification_train_loader
from ..engine import GETrainer
from ..modeling.classifier import build_ge_classifier, zero_init_residual
from .evaluator import ClassificationEvaluator
from .printer import PretrainMetricPrinter
from .task import ClassificationTask

logger = logging.getLogger(__name__)


class PretrainTrainer(GETrainer):
    """Trains ``ClassificationTask(build_ge_classifier(cfg))`` on PRETRAIN.TRAIN_DIR and evaluates top-1 /
    top-5 on PRETRAIN.VAL_DIR every TEST.EVAL_PERIOD iterations and at the end. GETrainer's constructor
    (DDP on the CPU too, AMP on CUDA only, GECheckpointer)."""

    @classmethod
    def build_model(cls, cfg):
        classifier = build_ge_classifier(cfg)
        if cfg.PRETRAIN.ZERO_INIT_RESIDUAL:
            zero_init_residual(classifier)
        model = ClassificationTask(classifier, cfg.PRETRAIN.LABEL_SMOOTHING).to(cfg.MODEL.DEVICE)
        if cfg.MODEL.BACKBONE.FREEZE_AT > 0:
            logger.warning(f"MODEL.BACKBONE.FREEZE_AT = {cfg.MODEL.BACKBONE.FREEZE_AT}: the first stages stay frozen "
                           "during pretraining; pretraining configs use 0.")
        logger.info(f"Model:\n{model}")
        return model

    @classmethod
    def build_train_loader(cls, cfg):
        return build_classification_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name=None):
        return build_classification_test_loader(cfg)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name=None):
        return ClassificationEvaluator()

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Top-1 / top-5 on PRETRAIN.VAL_DIR: ``{"classification": {"top1": %, "top5": %}}``. Images that
        could not be read are left out, with a warning that counts them."""
        loader, evaluator = cls.build_test_loader(cfg), evaluators or cls.build_evaluator(cfg)
        results = inference_on_dataset(model, loader, evaluator)
        if comm.is_main_process():
            counted, total = getattr(evaluator, "count", None), len(loader.dataset)
            if counted is not None and counted < total:
                logger.warning(f"{total - counted} of the {total} images in {cfg.PRETRAIN.VAL_DIR} could not be "
                               f"read: top-1 / top-5 are over the other {counted}.")
            logger.info(f"Evaluation on {cfg.PRETRAIN.VAL_DIR}{'' if counted is None else f' ({counted} images)'}:")
            print_csv_format(results)
        return results

    def build_writers(self):
        """detectron2's default writers (metrics.json, TensorBoard) with our printer for its CommonMetricPrinter."""
        printer = PretrainMetricPrinter(self.max_iter, self.cfg.SOLVER.IMS_PER_BATCH, len(self.data_loader.dataset))
        return [printer, *default_writers(self.cfg.OUTPUT_DIR, self.max_iter)[1:]]

