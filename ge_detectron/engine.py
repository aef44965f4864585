"""What the training tools share around detectron2's trainers: the YAML trainer's constructor (DDP on
CPU and GPU, AMP on CUDA only, GECheckpointer), checkpoints that resume exactly (optimizer, LR
scheduler, AMP grad scaler, data stream position and random generators, on detectron2 0.6 and main
alike; ``ExactResumeState``, also in the LazyConfig trainer), a clear stop on a non-finite loss or
non-finite model state (no checkpoint of that is written)."""
import logging
import random
import weakref

import numpy as np
import torch
from detectron2.engine import (AMPTrainer, DefaultTrainer, HookBase, SimpleTrainer, TrainerBase, create_ddp_model,
                               default_setup, hooks)
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from . import compat
from .checkpoint import GECheckpointer
from .data.resumable import ResumableLoader

logger = logging.getLogger(__name__)

class GETrainer(DefaultTrainer):
    """DefaultTrainer with DefaultTrainer's constructor replaced: detectron2's gives the model to
    DistributedDataParallel with ``device_ids=[local rank]``, an error for a CPU model (CPU runs go
    through torchrun + gloo), uses AMPTrainer, which requires CUDA, whenever SOLVER.AMP.ENABLED is
    set, and checkpoints with a plain DetectionCheckpointer instead of GECheckpointer. No ``build_*``
    hook reaches those three (the DDP wrapping, the inner trainer's class, the checkpointer), and each is
    used inside the constructor, so it is restated with them changed; the models, optimizer, data and LR
    scheduler still come from the ``build_*`` hooks, and the hooks from ``build_hooks``."""

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
        ret = with_fault_hooks(super().build_hooks())
        # on every process, before the checkpointer and the evaluation
        scheduler = next(i for i, hook in enumerate(ret) if isinstance(hook, hooks.LRScheduler))
        ret.insert(scheduler + 1, ExactResumeState(self.data_loader, self.cfg.SOLVER.IMS_PER_BATCH,
                                                   self.cfg.SOLVER.CHECKPOINT_PERIOD))
        return ret

    def state_dict(self):
        """detectron2 main's trainer state, on every detectron2: the iteration, the hooks' states (LR scheduler,
        ExactResumeState) and ``_trainer``'s (optimizer, AMP grad scaler), which 0.6's DefaultTrainer leaves out."""
        return {**TrainerBase.state_dict(self), "_trainer": self._trainer.state_dict()}

    def load_state_dict(self, state_dict):
        TrainerBase.load_state_dict(self, state_dict)
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])
        warn_if_resume_is_inexact(self.iter + 1, optimizer_restored="_trainer" in state_dict,
                                  stream_restored=ExactResumeState.__qualname__ in state_dict.get("hooks", {}),
                                  weights_option="MODEL.WEIGHTS")

    def resume_or_load(self, resume=True):
        if comm.is_main_process():
            self.checkpointer.remove_stale_temporary_files()
        super().resume_or_load(resume=resume)


def warn_if_resume_is_inexact(start_iter, optimizer_restored, stream_restored, weights_option):
    """Warn, when a checkpoint lacks part of the training state (one written by detectron2 0.6's
    DefaultTrainer holds no optimizer state; one written without ge_detectron no data stream position),
    that the resumed run will not equal an uninterrupted one, what restarts, and how to start over with
    the checkpoint's weights instead (``weights_option``: MODEL.WEIGHTS, train.init_checkpoint)."""
    missing = ([] if optimizer_restored else ["optimizer state (SGD momentum restarts from zero)"]) + (
        [] if stream_restored else ["data stream position and random generator states (the data stream restarts)"])
    if missing:
        kept = "weights, optimizer and LR schedule" if optimizer_restored else "weights and LR schedule"
        logger.warning(f"!!! The checkpoint (written by detectron2's own trainer or without ge_detectron) holds no "
                       f"{' and no '.join(missing)}: training resumes at iteration {start_iter} with its {kept} "
                       "but will not equal an uninterrupted run. To start over instead, run without --resume, "
                       f"with {weights_option} set to the checkpoint to keep its weights. !!!")


def with_fault_hooks(hook_list):
    """``hook_list`` with CheckFiniteState just before its PeriodicCheckpointer (main process only)."""
    ret = list(hook_list)
    for i, hook in enumerate(ret):
        if isinstance(hook, hooks.PeriodicCheckpointer):
            ret.insert(i, CheckFiniteState(hook))
            break
    return ret


def is_checkpoint_iteration(iteration, period, max_iter):
    """Whether detectron2's PeriodicCheckpointer saves after ``iteration``."""
    return (iteration + 1) % period == 0 or (max_iter is not None and iteration >= max_iter - 1)


def rng_state():
    """This process's random generators: Python's, numpy's, torch's (and the current CUDA device's)."""
    key, pos, has_gauss, gauss = np.random.get_state()[1:]  # plain Python values: checkpoints load with weights_only
    state = {"python": random.getstate(), "numpy": (key.tolist(), int(pos), int(has_gauss), float(gauss)),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state):
    random.setstate(state["python"])
    key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", np.array(key, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class ExactResumeState(HookBase):
    """The rest of what a resumed run needs to continue exactly where it stopped, checkpointed with the
    trainer's state: the training data stream's position (its sampler's seed and the number of images
    each process has trained on; see ge_detectron.data.resumable) and every process's random generators
    (Python, numpy, torch, CUDA), gathered at each checkpoint iteration.

    After a checkpoint iteration every process continues from the generator states it saved, in an
    uninterrupted run as in a resumed one, so that what runs between a checkpoint and the next
    iteration (an evaluation, PreciseBN) changes no later randomness. Bit-identical to an uninterrupted
    run when the data loader's randomness is in the training process (DATALOADER.NUM_WORKERS 0, or
    augmentations without randomness): worker processes start new generators when a run resumes."""

    def __init__(self, data_loader, total_batch_size, checkpoint_period):
        self.loader = data_loader if isinstance(data_loader, ResumableLoader) else None
        self.images_per_step = total_batch_size // comm.get_world_size()
        self.period = checkpoint_period
        self.position, self.saved_rngs, self.pending_rng = 0, None, None
        self.restored = False  # whether a checkpoint's state was loaded

    def before_step(self):
        if self.pending_rng is not None:
            set_rng_state(self.pending_rng)
            self.pending_rng = None

    def after_step(self):
        self.position += self.images_per_step
        if is_checkpoint_iteration(self.trainer.iter, self.period, self.trainer.max_iter):
            self.saved_rngs = comm.all_gather(rng_state())  # a collective: every process runs this hook
            self.pending_rng = self.saved_rngs[comm.get_rank()]

    def state_dict(self):
        data = {"seed": self.loader.sampler.seed, "position": self.position} if self.loader else None
        return {"data": data, "rng": self.saved_rngs}

    def load_state_dict(self, state):
        self.restored = True
        data, rngs = state["data"], state["rng"]
        if data is None or self.loader is None:
            logger.warning("The training data stream restarts from its beginning: "
                           f"{'the checkpoint holds no position' if data is None else 'its loader is not resumable'}.")
        else:
            self.loader.resume(data["seed"], data["position"])
            self.position = data["position"]
        if rngs is None:
            logger.warning("The random generators are not restored: the checkpoint holds none.")
        elif len(rngs) != comm.get_world_size():
            logger.warning(f"The random generators are not restored: the checkpoint was written by {len(rngs)} "
                           f"processes, this run has {comm.get_world_size()}.")
        else:
            self.pending_rng = rngs[comm.get_rank()]


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
        if not is_checkpoint_iteration(iteration, hook.period, hook.max_iter):
            return
        model = self.trainer.model
        state = [*model.named_parameters(), *((n, b) for n, b in model.named_buffers() if b.is_floating_point())]
        bad = [name for name, t in state if not torch.isfinite(t).all()]
        if bad:
            raise NonFiniteState(f"{len(bad)} parameters or buffers became infinite or NaN at iteration={iteration}, "
                                 f"e.g. {', '.join(bad[:3])}; no checkpoint was written for it.")


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
    """What a YAML training tool does in each process: detectron2's ``default_setup`` and a log line of the
    compat fixes applied; with ``--eval-only``, ``trainer_class.test`` of MODEL.WEIGHTS (the last checkpoint
    with ``--resume``); else train, resuming with ``--resume``, through ``train_or_exit``."""
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="ge_detectron")
    compat.log_applied()
    if args.eval_only:
        model = trainer_class.build_model(cfg)
        GECheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return trainer_class.test(cfg, model)
    trainer = trainer_class(cfg)
    trainer.resume_or_load(resume=args.resume)
    return train_or_exit(trainer)
