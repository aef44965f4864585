"""What the training tools share around detectron2's trainers: the
trainer constructor (DDP on CPU and GPU, AMP on CUDA only, GECheckpointer), a clear stop on a
non-finite loss or non-finite model state (no checkpoint of that is written), and an optional
per-rank dump of the final model state (``GE_DUMP_RANK_STATE``)."""
import logging
import os
import weakref

import torch
from detectron2.engine import (AMPTrainer, DefaultTrainer, HookBase, SimpleTrainer, TrainerBase, create_ddp_model,
                               default_setup, hooks)
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from .checkpoint import GECheckpointer

logger = logging.getLogger(__name__)

# A directory: every process saves its model's final parameters and buffers there after training, as
# rank{RANK}.pth, to check that data-parallel processes ended with the same weights (tests/test_distributed.py).
DUMP_RANK_STATE_ENV = "GE_DUMP_RANK_STATE"


class GETrainer(DefaultTrainer):
    """DefaultTrainer with DefaultTrainer's constructor replaced: detectron2's gives the model to
    DistributedDataParallel with ``device_ids=[local rank]``, an error for a CPU model (CPU runs go
    through torchrun + gloo), uses AMPTrainer, which requires CUDA, whenever SOLVER.AMP.ENABLED is
    set, and checkpoints with a plain DetectionCheckpointer instead of GECheckpointer."""

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):  # as DefaultTrainer
            setup_logger()
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

    def build_hooks(self):
        return with_fault_hooks(super().build_hooks())


def with_fault_hooks(hook_list):
    """``hook_list`` with CheckFiniteState just before its PeriodicCheckpointer (main process only) and,
    when GE_DUMP_RANK_STATE is set, DumpRankState at the end."""
    ret = list(hook_list)
    for i, hook in enumerate(ret):
        if isinstance(hook, hooks.PeriodicCheckpointer):
            ret.insert(i, CheckFiniteState(hook))
            break
    if os.environ.get(DUMP_RANK_STATE_ENV):
        ret.append(DumpRankState(os.environ[DUMP_RANK_STATE_ENV]))
    return ret


class NonFiniteState(FloatingPointError):
    """A parameter or buffer of the model is infinite or NaN."""


class CheckFiniteState(HookBase):
    """Runs just before ``checkpointer_hook``: on the iterations it saves a checkpoint at, raise
    NonFiniteState (naming the iteration) if a parameter or a floating-point buffer (norm statistics) is
    infinite or NaN. detectron2 checks only the loss, before the optimizer step; that step can still
    overflow the weights, and a forward pass of a finite loss the norm layers' running statistics, which
    would then be saved as the last checkpoint."""

    def __init__(self, checkpointer_hook):
        self.checkpointer_hook = checkpointer_hook

    def after_step(self):
        iteration, hook = self.trainer.iter, self.checkpointer_hook
        if (iteration + 1) % hook.period and (hook.max_iter is None or iteration < hook.max_iter - 1):
            return  # no checkpoint at this iteration
        model = self.trainer.model
        state = [*model.named_parameters(), *((n, b) for n, b in model.named_buffers() if b.is_floating_point())]
        bad = [name for name, t in state if not torch.isfinite(t).all()]
        if bad:
            raise NonFiniteState(f"{len(bad)} parameters or buffers became infinite or NaN at iteration={iteration}, "
                                 f"e.g. {', '.join(bad[:3])}; no checkpoint was written for it.")


class DumpRankState(HookBase):
    """After training, save ``{"iteration", "parameters", "buffers"}`` of this process's model (unwrapped
    from DDP, on the CPU) to ``directory/rank{rank}.pth``."""

    def __init__(self, directory):
        self.directory = directory

    def after_train(self):
        model = self.trainer.model
        model = getattr(model, "module", model)
        state = {"iteration": self.trainer.iter,
                 "parameters": {k: v.detach().cpu() for k, v in model.named_parameters()},
                 "buffers": {k: v.detach().cpu() for k, v in model.named_buffers()}}
        os.makedirs(self.directory, exist_ok=True)
        torch.save(state, os.path.join(self.directory, f"rank{comm.get_rank()}.pth"))


def train_or_exit(trainer):
    """``trainer.train()``; a non-finite loss (detectron2 checks the losses before each optimizer step and
    raises FloatingPointError naming the iteration) or a non-finite model state at a checkpoint
    (CheckFiniteState) end the run with SystemExit and a message that names the iteration and the
    last good checkpoint, which is kept."""
    try:
        return trainer.train()
    except FloatingPointError as e:
        last = trainer.checkpointer.get_checkpoint_file() or "none was written yet"
        what = "the model's weights are" if isinstance(e, NonFiniteState) else "the loss is"
        reason = " ".join(str(e).split())  # detectron2's message spans two lines
        if "iteration=" not in reason:  # e.g. detectron2's RPN: "Predicted boxes or scores contain Inf/NaN. ..."
            reason = f"{reason} (iteration={trainer.iter})"
        raise SystemExit(f"error: training stopped, {what} not finite: {reason} The last good checkpoint is "
                         f"kept: {last}. Lower SOLVER.BASE_LR or raise SOLVER.WARMUP_ITERS, then --resume.") from None


def train_or_evaluate(trainer_class, cfg, args):
    """What a YAML training tool does in each process: detectron2's ``default_setup``; with ``--eval-only``,
    ``trainer_class.test`` of MODEL.WEIGHTS (the last checkpoint with ``--resume``); else train, resuming with
    ``--resume``, through ``train_or_exit``."""
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="ge_detectron")
    if args.eval_only:
        model = trainer_class.build_model(cfg)
        GECheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return trainer_class.test(cfg, model)
    trainer = trainer_class(cfg)
    trainer.resume_or_load(resume=args.resume)
    return train_or_exit(trainer)
