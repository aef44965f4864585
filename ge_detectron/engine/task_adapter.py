"""A task adapter: what the trainer and the command-line flow read from one task's config (detection with
a YAML config or a LazyConfig, pretraining): the model, optimizer, data, LR schedule and evaluation, the
run's settings, and the names of the options that messages give. ``YAMLTaskAdapter`` holds what
detectron2's YAML keys mean for every YAML task; the tasks' adapters are ``detection.trainer.YAMLDetection``,
``detection.lazy.LazyDetection`` and ``pretrain.trainer.Pretraining``."""
import logging

from detectron2.engine import DefaultTrainer, default_writers, hooks
from detectron2.evaluation import verify_results
from detectron2.modeling import build_model
from detectron2.solver import build_lr_scheduler, build_optimizer
from detectron2.utils import comm
from fvcore.nn.precise_bn import get_bn_modules

__all__ = ["TaskAdapter", "YAMLTaskAdapter"]

logger = logging.getLogger(__name__)


class TaskAdapter:
    """One config ``cfg`` of a task, as the trainer and the command-line flow use it.

    A subclass names its options (the class attributes: the keys that messages name, and how an override
    is written on the command line, ``override(key, value)``) and gives
    - the run's settings: ``device``, ``output_dir``, ``weights`` (the weights to start from), ``max_iter``,
      ``total_batch_size``, ``amp`` (mixed precision asked for), ``eval_period``, ``log_period``,
      ``checkpointer_options`` (PeriodicCheckpointer's arguments: period, max_to_keep), ``ddp_options``
      (create_ddp_model's arguments), ``dist_timeout`` (the seconds a process waits for the others in a
      collective before the run stops: engine.faults) and ``cuda_only_options()`` (those set that work only on CUDA);
    - the builders behind the trainer's ``build_*`` hooks: ``build_model()``, ``build_optimizer(model)``,
      ``build_train_loader()``, ``build_test_loader(dataset_name)``, ``build_lr_scheduler(optimizer)``, and
      ``test(model, evaluators)``, the evaluation's results ({} if the config has none);
    - for the command-line flow: ``from_args(args)``, the config of the tool's arguments in this process.
    """

    DEVICE, BATCH, WEIGHTS = "MODEL.DEVICE", "SOLVER.IMS_PER_BATCH", "MODEL.WEIGHTS"
    LR, WARMUP = "SOLVER.BASE_LR", "SOLVER.WARMUP_ITERS"  # the base learning rate and the warmup length
    DIST_TIMEOUT = "GE_DIST.TIMEOUT"
    TRAINER_STATE = "DefaultTrainer"  # the layout of the checkpointed trainer state (engine.resume.trainer_state)

    def __init__(self, cfg):
        self.cfg = cfg

    @staticmethod
    def override(key, value):
        """An override of ``key`` as the tools' trailing arguments write it."""
        return f"{key} {value}"

    @classmethod
    def add_arguments(cls, parser):
        """Options of the tool besides detectron2's ``default_argument_parser``."""
        return parser

    def check(self, eval_only):
        """Checks made once before any process starts (data on disk, the model's arguments); raise
        ValueError or DatasetError naming the problem."""

    def scaled_to(self, world_size):
        """This config for ``world_size`` processes (detectron2's SOLVER.REFERENCE_WORLD_SIZE scaling)."""
        return self

    def build_precise_bn_hook(self, trainer):
        return None

    def build_writers(self, max_iter, data_loader):
        return default_writers(self.output_dir, max_iter)

    def verify_results(self, results):
        """What the trainer's ``train`` returns, given the last evaluation's results."""
        return None


class YAMLTaskAdapter(TaskAdapter):
    """detectron2's YAML keys (a CfgNode): MODEL.*, SOLVER.*, TEST.*, OUTPUT_DIR, as DefaultTrainer reads them."""

    device = property(lambda self: self.cfg.MODEL.DEVICE)
    output_dir = property(lambda self: self.cfg.OUTPUT_DIR)
    weights = property(lambda self: self.cfg.MODEL.WEIGHTS)
    max_iter = property(lambda self: self.cfg.SOLVER.MAX_ITER)
    total_batch_size = property(lambda self: self.cfg.SOLVER.IMS_PER_BATCH)
    eval_period = property(lambda self: self.cfg.TEST.EVAL_PERIOD)
    amp = property(lambda self: self.cfg.SOLVER.AMP.ENABLED)
    log_period = 20  # DefaultTrainer's
    checkpointer_options = property(lambda self: {"period": self.cfg.SOLVER.CHECKPOINT_PERIOD})
    ddp_options = property(lambda self: {"broadcast_buffers": False})
    dist_timeout = property(lambda self: self.cfg.GE_DIST.TIMEOUT)

    def cuda_only_options(self):
        return ["SOLVER.AMP.ENABLED"] if self.cfg.SOLVER.AMP.ENABLED else []

    def scaled_to(self, world_size):
        return type(self)(DefaultTrainer.auto_scale_workers(self.cfg, world_size))

    def build_model(self):
        model = build_model(self.cfg)
        logger.info(f"Model:\n{model}")
        return model

    def build_optimizer(self, model):
        return build_optimizer(self.cfg, model)

    def build_lr_scheduler(self, optimizer):
        return build_lr_scheduler(self.cfg, optimizer)

    def build_precise_bn_hook(self, trainer):
        """DefaultTrainer's PreciseBN hook (TEST.PRECISE_BN), on a loader without worker processes."""
        if not (self.cfg.TEST.PRECISE_BN.ENABLED and get_bn_modules(trainer.model)):
            return None
        cfg = self.cfg.clone()
        cfg.defrost()
        cfg.DATALOADER.NUM_WORKERS = 0
        return hooks.PreciseBN(cfg.TEST.EVAL_PERIOD, trainer.model, trainer.build_train_loader(cfg),
                               cfg.TEST.PRECISE_BN.NUM_ITER)

    def verify_results(self, results):
        """DefaultTrainer's check of TEST.EXPECTED_RESULTS."""
        if len(self.cfg.TEST.EXPECTED_RESULTS) and comm.is_main_process():
            assert results is not None, "No evaluation results obtained during training!"
            verify_results(self.cfg, results)
            return results
        return None
