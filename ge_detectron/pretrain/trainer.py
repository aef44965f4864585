"""The pretraining loop: detectron2's DefaultTrainer (hooks, checkpointing, LR schedule, evaluation,
writers, ``resume_or_load``) with the classification model, data and evaluation plugged in."""
import logging
import os
import weakref

from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.events import JSONWriter, TensorboardXWriter

from ..checkpoint import GECheckpointer
from ..data.classification import build_classification_test_loader, build_classification_train_loader
from ..modeling.classifier import build_ge_classifier
from .evaluator import ClassificationEvaluator
from .printer import PretrainMetricPrinter
from .task import ClassificationTask

logger = logging.getLogger(__name__)


class PretrainTrainer(DefaultTrainer):
    """Trains ``ClassificationTask(build_ge_classifier(cfg))`` on PRETRAIN.TRAIN_DIR and evaluates top-1 /
    top-5 on PRETRAIN.VAL_DIR every TEST.EVAL_PERIOD iterations and at the end.

    Replaces DefaultTrainer's constructor because detectron2's would give a CPU model to
    DistributedDataParallel with ``device_ids`` (an error; CPU runs go through torchrun + gloo) and
    would use AMPTrainer, which requires CUDA, whenever SOLVER.AMP.ENABLED is set.
    """

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        cfg = self.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        on_cuda = cfg.MODEL.DEVICE.startswith("cuda")
        model = create_ddp_model(model, broadcast_buffers=False, **({} if on_cuda else {"device_ids": None}))
        if cfg.SOLVER.AMP.ENABLED and not on_cuda:
            logger.warning("SOLVER.AMP.ENABLED is ignored: mixed precision training needs MODEL.DEVICE cuda.")
        amp = cfg.SOLVER.AMP.ENABLED and on_cuda
        self._trainer = (AMPTrainer if amp else SimpleTrainer)(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = GECheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter, self.max_iter, self.cfg = 0, cfg.SOLVER.MAX_ITER, cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_model(cls, cfg):
        model = ClassificationTask(build_ge_classifier(cfg), cfg.PRETRAIN.LABEL_SMOOTHING).to(cfg.MODEL.DEVICE)
        frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
        if frozen:
            logger.warning(f"{len(frozen)} parameters are frozen during pretraining (MODEL.BACKBONE.FREEZE_AT = "
                           f"{cfg.MODEL.BACKBONE.FREEZE_AT}, MODEL.RESNETS.NORM = {cfg.MODEL.RESNETS.NORM!r}); "
                           "pretraining configs normally use FREEZE_AT 0 and BN.")
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
        """Top-1 / top-5 on PRETRAIN.VAL_DIR: ``{"classification": {"top1": %, "top5": %}}``."""
        results = inference_on_dataset(model, cls.build_test_loader(cfg), evaluators or cls.build_evaluator(cfg))
        if comm.is_main_process():
            logger.info(f"Evaluation on {cfg.PRETRAIN.VAL_DIR}:")
            print_csv_format(results)
        return results

    def build_writers(self):
        images_per_epoch = len(self.data_loader.dataset)
        return [PretrainMetricPrinter(self.max_iter, self.cfg.SOLVER.IMS_PER_BATCH, images_per_epoch),
                JSONWriter(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json")),
                TensorboardXWriter(self.cfg.OUTPUT_DIR)]

