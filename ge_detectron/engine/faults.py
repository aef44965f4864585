"""Faults that end a training run with one line instead of a traceback, the last complete checkpoint
kept: a non-finite loss (detectron2's check before each optimizer step) or model state
(``CheckFiniteState``, before each checkpoint is written), and a full disk while a checkpoint (written
atomically: ge_detectron.atomic), the metrics or the log is written, and a lost peer (another process of
a distributed run died or stopped answering within the process group's timeout). detectron2's train loop logs every
exception with its traceback before re-raising it; for these faults that traceback goes to the log file
only, at DEBUG level, so the console ends with the one line (``keep_fault_tracebacks_off_the_console``)."""
import errno
import functools
import logging
import os
import re
import sys

import torch
import torch.distributed as dist
from detectron2.engine import HookBase, TrainerBase
from detectron2.utils.events import EventWriter

from .resume import is_checkpoint_iteration

__all__ = ["NonFiniteState", "CheckFiniteState", "name_write_errors", "stop_on_full_disk_in_log_files",
           "keep_fault_tracebacks_off_the_console", "lost_peer", "train_or_exit"]

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


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


class _NamingWriteErrors(EventWriter):
    """A writer (detectron2's JSONWriter: metrics.json) whose write errors name its file."""

    def __init__(self, writer):
        self.writer = writer

    def _named(self, method):
        try:
            method()
        except OSError as e:
            handle = getattr(self.writer, "_file_handle", None)
            if e.filename is None and handle is not None:
                raise OSError(e.errno, e.strerror, handle.name) from None
            raise

    def write(self):
        self._named(self.writer.write)

    def close(self):
        self._named(self.writer.close)


def name_write_errors(writers):
    """``writers`` (detectron2's EventWriters), those that write a file wrapped so that an OSError names it."""
    return [_NamingWriteErrors(w) if hasattr(w, "_file_handle") else w for w in writers]


def _handlers(console):
    """The handlers of detectron2's ``setup_logger``: those writing to the console (stdout, stderr) if
    ``console``, else its log files (log.txt): StreamHandlers of a file."""
    for name in ("detectron2", "ge_detectron", "fvcore"):
        for handler in logging.getLogger(name).handlers:
            stream = getattr(handler, "stream", None)
            if not isinstance(handler, logging.StreamHandler):
                continue
            if console and stream in (sys.stdout, sys.stderr):
                yield handler
            elif not console and stream not in (sys.stdout, sys.stderr) and isinstance(getattr(stream, "name", None), str):
                yield handler


def _log_files():
    return _handlers(console=False)


def _raise_if_disk_full(handler, record):
    error = sys.exc_info()[1]
    if isinstance(error, OSError) and error.errno in DISK_FULL:
        raise OSError(error.errno, error.strerror, handler.stream.name) from None
    logging.Handler.handleError(handler, record)


def stop_on_full_disk_in_log_files():
    """Make a full disk while the log file is written stop the run (``train_or_exit`` says it in one line)
    instead of printing a traceback per log record and going on."""
    for handler in _log_files():
        handler.handleError = functools.partial(_raise_if_disk_full, handler)


def _is_reported_fault(error):
    """Whether ``train_or_exit`` turns ``error`` into its one-line message."""
    return (isinstance(error, FloatingPointError) or (isinstance(error, OSError) and _first_disk_full(error) is not None)
            or (isinstance(error, RuntimeError) and lost_peer(error) is not None))


class _FaultTracebackAtDebugLevel(logging.Filter):
    """On detectron2's train loop logger: its "Exception during training:" record of a reported fault becomes
    a DEBUG record marked ``reported_fault``, which the console handlers drop."""

    def filter(self, record):
        if record.exc_info and _is_reported_fault(record.exc_info[1]):
            record.levelno, record.levelname, record.reported_fault = logging.DEBUG, "DEBUG", True
        return True


def _not_a_reported_fault(record):
    return not getattr(record, "reported_fault", False)


def keep_fault_tracebacks_off_the_console():
    """Leave the traceback that detectron2's ``TrainerBase.train`` logs for a fault ``train_or_exit`` reports
    (a non-finite loss or state, a full disk, a lost peer) to the log file, at DEBUG level; the console shows only the
    message. Other exceptions keep their traceback everywhere. Call after detectron2's ``setup_logger``."""
    train_loop = logging.getLogger(TrainerBase.__module__)
    if not any(isinstance(f, _FaultTracebackAtDebugLevel) for f in train_loop.filters):
        train_loop.addFilter(_FaultTracebackAtDebugLevel())
    for handler in _handlers(console=True):
        if _not_a_reported_fault not in handler.filters:
            handler.addFilter(_not_a_reported_fault)


def _discard_unwritable_log_tail():
    """Send what the log files still buffer to /dev/null: the disk cannot take it, and closing them at exit
    would otherwise print a traceback."""
    for handler in _log_files():
        try:
            handler.stream.flush()
        except OSError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, handler.stream.fileno())
            os.close(devnull)


def _first_disk_full(error):
    """The first full-disk OSError of ``error``'s chain (the hooks that run after a failed step may fail on
    the same disk again), preferring one that names its file; None if there is none."""
    chain = []
    while error is not None:
        chain.append(error)
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    full = [e for e in reversed(chain) if isinstance(e, OSError) and e.errno in DISK_FULL]
    return next((e for e in full if e.filename), full[0] if full else None)


def lost_peer(error):
    """What a collective's error says when a peer process died or did not answer within the process group's
    timeout (the first sentence of gloo's message, without its source location; NCCL's and the store's
    errors are torch.distributed.DistErrors), or None for any other error."""
    text = " ".join(str(error).split())
    if not (isinstance(error, dist.DistError) or (isinstance(error, RuntimeError) and "gloo/transport/" in text)):
        return None
    return re.sub(r"^\[[^\]]*\]\s*", "", text).split(". ")[0].rstrip(".")


def train_or_exit(trainer):
    """``trainer.train()``; a non-finite loss (detectron2 checks the losses before each optimizer step and
    raises FloatingPointError naming the iteration) or a non-finite model state at a checkpoint
    (CheckFiniteState) end the run with SystemExit and a message that names the iteration, the last
    good checkpoint, which is kept, and the options to change (the task adapter's ``LR`` and ``WARMUP``). So does
    a full disk, naming the file that could not be written, and a lost peer (``lost_peer``): under
    torchrun with --max-restarts that exit makes the agent restart the workers, which resume."""
    try:
        return trainer.train()
    except RuntimeError as e:
        reason = lost_peer(e)
        if reason is None:
            raise
        last = trainer.checkpointer.get_checkpoint_file() or "none was written yet"
        raise SystemExit(f"error: training stopped at iteration={trainer.iter}, another process of the distributed "
                         f"run died or stopped answering ({reason}). The last complete checkpoint is kept: {last}. "
                         "Run again with --resume; under torchrun --max-restarts N the workers restart and resume "
                         "by themselves.") from None
    except OSError as e:
        full = _first_disk_full(e)
        if full is None:
            raise
        _discard_unwritable_log_tail()
        last = trainer.checkpointer.get_checkpoint_file() or "none was written yet"
        raise SystemExit(f"error: training stopped at iteration={trainer.iter}, the disk is full: cannot write "
                         f"{full.filename or 'a file'} ({full.strerror}). The last complete checkpoint is kept: "
                         f"{last}. Free space, then run again with --resume.") from None
    except FloatingPointError as e:
        last = trainer.checkpointer.get_checkpoint_file() or "none was written yet"
        what = "the model's weights are" if isinstance(e, NonFiniteState) else "the loss is"
        reason = " ".join(str(e).split())  # detectron2's message spans two lines
        if "iteration=" not in reason:  # e.g. detectron2's RPN: "Predicted boxes or scores contain Inf/NaN. ..."
            reason = f"{reason} (iteration={trainer.iter})"
        config = trainer.config
        raise SystemExit(f"error: training stopped, {what} not finite: {reason} The last good checkpoint is "
                         f"kept: {last}. Lower {config.LR} or raise {config.WARMUP}, then --resume.") from None
