"""Everything a checkpoint needs to resume a run exactly, on detectron2 0.6 and main alike: the trainer
state's format, the data stream position and random generators (``ExactResumeState``, with the
resumable stream of ge_detectron.data.resumable), the warning for a checkpoint that lacks part of it, and
the resume of workers that torchrun restarted (``torchrun_restart``)."""
import logging
import os
import random

import numpy as np
import torch
from detectron2.engine import HookBase, TrainerBase
from detectron2.utils import comm

from ..data.resumable import ResumableLoader

__all__ = ["ExactResumeState", "rng_state", "set_rng_state", "is_checkpoint_iteration", "trainer_state",
           "load_trainer_state", "warn_if_resume_is_inexact", "torchrun_restart", "log_restart"]

logger = logging.getLogger(__name__)


def trainer_state(trainer, layout):
    """``trainer``'s (a DefaultTrainer's) state in ``layout``: "DefaultTrainer" is detectron2 main's
    DefaultTrainer state (the iteration, the hooks' states and ``_trainer``: the inner trainer's optimizer and
    AMP grad scaler, which 0.6's DefaultTrainer leaves out); "SimpleTrainer" is what detectron2's
    tools/lazyconfig_train_net.py saves, the inner trainer's state with the hooks in it."""
    state = TrainerBase.state_dict(trainer)
    if layout == "SimpleTrainer":
        return {**trainer._trainer.state_dict(), **state}
    return {**state, "_trainer": trainer._trainer.state_dict()}


def load_trainer_state(trainer, state):
    """Load a ``trainer_state`` of either layout (or one 0.6's DefaultTrainer wrote: no optimizer state);
    return whether it held the optimizer's state."""
    TrainerBase.load_state_dict(trainer, state)
    inner = state.get("_trainer", state if "optimizer" in state else None)
    if inner is not None:
        trainer._trainer.load_state_dict({**inner, "hooks": {}})  # the hooks are the outer trainer's
    return inner is not None


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


def torchrun_restart():
    """How many times torchrun's agent has restarted this machine's workers (TORCHELASTIC_RESTART_COUNT;
    0 without torchrun). Restarted workers have the first ones' command line: they resume as --resume would."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def log_restart(restart, checkpoint, start_iter, output_dir):
    """The one line saying where restarted workers (``restart``: torchrun_restart()) continue: from
    ``checkpoint`` (None: the output directory holds none) at ``start_iter``."""
    if checkpoint:
        logger.info(f"torchrun restarted the workers (restart {restart}): resuming from {checkpoint} at "
                    f"iteration {start_iter}.")
    else:
        logger.info(f"torchrun restarted the workers (restart {restart}): no checkpoint in {output_dir} yet, "
                    "training starts over at iteration 0.")


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
                           f"processes, this run has {comm.get_world_size()}. Training resumes with the config "
                           "scaled to this run's processes (detectron2's SOLVER.REFERENCE_WORLD_SIZE, when set) but "
                           "is not bit-identical to an uninterrupted run.")
        else:
            self.pending_rng = rngs[comm.get_rank()]
