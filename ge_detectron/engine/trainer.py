"""The one trainer of every task: detectron2's DefaultTrainer, with what it builds coming from the task's
adapter (``task_adapter``, engine.task_adapter) through its ``build_*`` hooks."""
import logging
import weakref

from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, create_ddp_model, hooks
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..checkpoint import GECheckpointer
from .faults import CheckFiniteState, name_write_errors
from .resume import (ExactResumeState, load_trainer_state, log_restart, torchrun_restart, trainer_state,
                     warn_if_resume_is_inexact)

__all__ = ["GETrainer"]

logger = logging.getLogger(__name__)


class GETrainer(DefaultTrainer):
    """DefaultTrainer over a task adapter: a subclass sets ``task_adapter`` (a TaskAdapter class), whose
    adapter of the config supplies the model, optimizer, data, LR schedule, evaluation, the run's settings
    and the option names of messages; the ``build_*`` hooks call it, so a subclass may still override them.

    What no ``build_*`` hook reaches is restated here, once: the constructor (detectron2's gives the model to
    DistributedDataParallel with ``device_ids=[local rank]``, an error for a CPU model, uses AMPTrainer, which
    requires CUDA, whenever AMP is set, and checkpoints with a plain DetectionCheckpointer instead of
    GECheckpointer), ``build_hooks``, ``train`` and ``resume_or_load`` (DefaultTrainer's read YAML keys; the
    same hooks here, with ExactResumeState after the LR scheduler and CheckFiniteState before the
    checkpointer), and the checkpointed state (``engine.resume.trainer_state``)."""

    task_adapter = None

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):  # as DefaultTrainer
            setup_logger()
        self.config = self.task_adapter(cfg).scaled_to(comm.get_world_size())
        cfg = self.config.cfg
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        on_cuda = str(self.config.device).startswith("cuda")
        ddp = dict(self.config.ddp_options)
        ignored = [] if on_cuda else self.config.cuda_only_options()
        if ignored:
            logger.warning(f"{' and '.join(ignored)} {'is' if len(ignored) == 1 else 'are'} ignored: "
                           f"{'it needs' if len(ignored) == 1 else 'they need'} {self.config.DEVICE} cuda.")
        if not on_cuda:
            ddp.update(fp16_compression=False, device_ids=None)
        model = create_ddp_model(model, **ddp)
        self._trainer = (AMPTrainer if on_cuda and self.config.amp else SimpleTrainer)(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = GECheckpointer(model, self.config.output_dir, trainer=weakref.proxy(self))
        self.start_iter, self.max_iter, self.cfg = 0, self.config.max_iter, cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_model(cls, cfg):
        return cls.task_adapter(cfg).build_model()

    @classmethod
    def build_optimizer(cls, cfg, model):
        return cls.task_adapter(cfg).build_optimizer(model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return cls.task_adapter(cfg).build_lr_scheduler(optimizer)

    @classmethod
    def build_train_loader(cls, cfg):
        return cls.task_adapter(cfg).build_train_loader()

    @classmethod
    def build_test_loader(cls, cfg, dataset_name=None):
        return cls.task_adapter(cfg).build_test_loader(dataset_name)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        return cls.task_adapter(cfg).test(model, evaluators)

    def build_hooks(self):
        main = comm.is_main_process()
        checkpointer = hooks.PeriodicCheckpointer(self.checkpointer, **self.config.checkpointer_options)

        def test_and_save_results():
            self._last_eval_results = self.test(self.cfg, self.model)
            return self._last_eval_results

        return [
            hooks.IterationTimer(),
            hooks.LRScheduler(),
            # on every process, before the checkpointer and the evaluation
            ExactResumeState(self.data_loader, self.config.total_batch_size, checkpointer.period),
            self.config.build_precise_bn_hook(self),
            *([CheckFiniteState(checkpointer), checkpointer] if main else []),
            hooks.EvalHook(self.config.eval_period, test_and_save_results),
            hooks.PeriodicWriter(self.build_writers(), period=self.config.log_period) if main else None,
        ]

    def build_writers(self):
        return name_write_errors(self.config.build_writers(self.max_iter, self.data_loader))

    def train(self):
        TrainerBase.train(self, self.start_iter, self.max_iter)
        return self.config.verify_results(getattr(self, "_last_eval_results", None))

    def resume_or_load(self, resume=True):
        """Resume from the output directory's last checkpoint if ``resume`` (or if torchrun restarted the
        workers, saying so in one line) and there is one, else load the config's weights and start at
        iteration 0. Temporary files that a process killed while saving left in the output directory are
        removed first."""
        if comm.is_main_process():
            self.checkpointer.remove_stale_temporary_files()
        restart = torchrun_restart()
        resume = resume or restart > 0
        self.checkpointer.resume_or_load(self.config.weights, resume=resume)
        if resume and self.checkpointer.has_checkpoint():
            self.start_iter = self.iter + 1
        if restart:
            log_restart(restart, self.checkpointer.get_checkpoint_file(), self.start_iter, self.config.output_dir)

    def state_dict(self):
        return trainer_state(self, self.config.TRAINER_STATE)

    def load_state_dict(self, state_dict):
        optimizer_restored = load_trainer_state(self, state_dict)
        warn_if_resume_is_inexact(self.iter + 1, optimizer_restored=optimizer_restored,
                                  stream_restored=ExactResumeState.__qualname__ in state_dict.get("hooks", {}),
                                  weights_option=self.config.WEIGHTS)
