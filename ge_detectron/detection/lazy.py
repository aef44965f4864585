"""LazyConfigs (detectron2's Python configs) for GE detectors: loading with clear errors, the checks made
before any training process starts, and the training loop of tools/lazyconfig_train_net.py.

A LazyConfig has detectron2's top-level keys (configs/common in detectron2's model zoo): ``model``,
``dataloader`` (``train``, ``test``, ``evaluator``), ``optimizer``, ``lr_multiplier`` and ``train``
(``output_dir``, ``init_checkpoint``, ``max_iter``, ``amp``, ``ddp``, ``checkpointer``, ``eval_period``,
``log_period``, ``device``, optionally ``seed``). The loop is detectron2's (``SimpleTrainer`` or
``AMPTrainer`` and its hooks, as upstream's tools/lazyconfig_train_net.py builds it) with the fault
handling of the YAML tool: GECheckpointer's atomic checkpoints, exact resume (ExactResumeState), the
non-finite stop (ge_detectron.engine) and, through the configs' ``dataloader.train``, the bad-data
handling and resumable data stream of ge_detectron.data.sanitize.
"""
import inspect
import logging
import os
import weakref

import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import AMPTrainer, SimpleTrainer, create_ddp_model, default_writers, hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.registry import locate
from omegaconf import OmegaConf

from ..checkpoint import GECheckpointer
from ..config import GEConfigError
from ..engine import ExactResumeState, warn_if_resume_is_inexact, with_fault_hooks

__all__ = ["load_lazy_config", "lazy_dataset_names", "lazy_num_classes", "check_lazy_model", "LazyTrainer",
           "lazy_test"]

logger = logging.getLogger(__name__)

REQUIRED_KEYS = ("model", "dataloader", "optimizer", "lr_multiplier", "train")
_MISSING = object()


def load_lazy_config(path, overrides=()):
    """``LazyConfig.load(path)`` with ``key=value`` overrides applied. A missing or broken file, a malformed
    override, or an override of a key the config does not have (a typo would otherwise add a key nobody
    reads; write ``+key=value`` to add one on purpose) raises GEConfigError naming it."""
    if not os.path.isfile(path):
        raise GEConfigError(f"config file not found: {path!r}.")
    try:
        cfg = LazyConfig.load(path)
    except Exception as e:  # anything the config's own code raises, e.g. a syntax error or a bad import
        raise GEConfigError(f"cannot load LazyConfig {path!r}: {type(e).__name__}: {e}") from None
    missing = [k for k in REQUIRED_KEYS if k not in cfg]
    if missing:
        raise GEConfigError(f"LazyConfig {path!r} lacks the top-level key(s) {missing}: tools/lazyconfig_train_net.py "
                            f"needs {', '.join(REQUIRED_KEYS)} (see configs/faster_rcnn_ge_r50.py).")
    for override in overrides:
        key, sep, _ = override.partition("=")
        if not sep or not key:
            raise GEConfigError(f"override {override!r} is not key=value: LazyConfigs take overrides such as "
                                "train.max_iter=1000 (YAML configs take KEY VALUE pairs).")
        if not key.startswith("+") and not _is_known_key(cfg, key):
            raise GEConfigError(f"override {override!r}: {path} has no key {key!r} (write +{override} to add it).")
    try:
        return LazyConfig.apply_overrides(cfg, [o.lstrip("+") for o in overrides])
    except Exception as e:  # hydra's parser errors, or a key path through a non-config value
        raise GEConfigError(f"cannot apply overrides {list(overrides)} to {path!r}: {type(e).__name__}: {e}") from None


def _is_known_key(cfg, key):
    """Whether ``key`` is in ``cfg``, or names an argument of the callable of a ``L(...)(...)`` node (one
    left at its default is not in the config)."""
    if OmegaConf.select(cfg, key, default=_MISSING) is not _MISSING:
        return True
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key, default=None) if parent_key else cfg
    if not OmegaConf.is_dict(parent) or "_target_" not in parent:
        return False
    target = locate(parent._target_) if isinstance(parent._target_, str) else parent._target_
    try:
        parameters = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):  # no signature to tell: let instantiation decide
        return True
    return any(p.name == leaf or p.kind == p.VAR_KEYWORD for p in parameters)


def _names(node):
    names = OmegaConf.select(node, "dataset.names", default=None) if node is not None else None
    if names is None:
        return []
    return [names] if isinstance(names, str) else list(names)


def lazy_dataset_names(cfg):
    """The dataset names of ``dataloader.train`` and ``dataloader.test`` (``dataset.names``)."""
    return _names(cfg.dataloader.get("train")), _names(cfg.dataloader.get("test"))


def lazy_num_classes(cfg):
    """``(key, value)`` of the detector's number of classes (``model.roi_heads.num_classes`` of an R-CNN,
    ``model.num_classes`` of RetinaNet), or None for a model without one."""
    for key in ("model.roi_heads.num_classes", "model.num_classes"):
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(value, int):
            return key, value
    return None


def check_lazy_model(cfg):
    """Instantiate ``cfg.model`` on the meta device (no memory, no weights) so that a bad argument (a GE
    module's ``extent=6``, a misspelt keyword) is a GEConfigError before any training process starts."""
    try:
        with torch.device("meta"):
            instantiate(cfg.model)
    except (ValueError, TypeError, AssertionError, KeyError) as e:
        raise GEConfigError(f"cannot build the model: {type(e).__name__}: {e}") from None


class LazyTrainer:
    """detectron2's training loop for a LazyConfig, with DDP on the CPU too, AMP (and fp16 gradient
    compression) on CUDA only, GECheckpointer, ExactResumeState (checkpoints hold SimpleTrainer's state:
    iteration, hooks, optimizer, AMP grad scaler, on detectron2 0.6 and main), and CheckFiniteState before
    each checkpoint. The same interface as DefaultTrainer where the tool needs it: ``resume_or_load``,
    ``train``, ``iter``, ``model``, ``checkpointer``, ``storage``."""

    def __init__(self, cfg):
        self.cfg, train = cfg, cfg.train
        on_cuda = str(train.device).startswith("cuda")
        model = instantiate(cfg.model).to(train.device)
        logger.info(f"Model:\n{model}")
        cfg.optimizer.params.model = model
        optimizer = instantiate(cfg.optimizer)
        data_loader = instantiate(cfg.dataloader.train)
        ddp, amp = dict(train.get("ddp", {})), OmegaConf.select(train, "amp.enabled", default=False)
        if not on_cuda:
            if amp or ddp.get("fp16_compression"):
                logger.warning("train.amp.enabled and train.ddp.fp16_compression are ignored: they need train.device cuda.")
            amp = False
            ddp.update(fp16_compression=False, device_ids=None)
        model = create_ddp_model(model, **ddp)
        self._trainer = (AMPTrainer if amp else SimpleTrainer)(model, data_loader, optimizer)
        self.checkpointer = GECheckpointer(model, train.output_dir, trainer=weakref.proxy(self._trainer))
        main = comm.is_main_process()
        self.exact_resume = ExactResumeState(data_loader, cfg.dataloader.train.total_batch_size, train.checkpointer.period)
        self._trainer.register_hooks(with_fault_hooks([
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            self.exact_resume,  # on every process, before the checkpointer and the evaluation
            *([hooks.PeriodicCheckpointer(self.checkpointer, **train.checkpointer)] if main else []),
            hooks.EvalHook(train.eval_period, lambda: lazy_test(cfg, model)),
            *([hooks.PeriodicWriter(default_writers(train.output_dir, train.max_iter), period=train.log_period)]
              if main else []),
        ]))
        self.start_iter, self.max_iter = 0, train.max_iter

    @property
    def iter(self):
        return self._trainer.iter

    @property
    def model(self):
        return self._trainer.model

    @property
    def storage(self):
        return self._trainer.storage

    def resume_or_load(self, resume=True):
        """Resume from ``train.output_dir``'s last checkpoint if ``resume`` and there is one, else load
        ``train.init_checkpoint`` (if set) and start at iteration 0. Temporary files that a process killed
        while saving left in ``train.output_dir`` are removed first."""
        if comm.is_main_process():
            self.checkpointer.remove_stale_temporary_files()
        resuming = resume and self.checkpointer.has_checkpoint()
        self.checkpointer.resume_or_load(self.cfg.train.init_checkpoint, resume=resume)
        self.start_iter = self._trainer.iter + 1 if resuming else 0
        if resuming:  # SimpleTrainer's state holds the optimizer on detectron2 0.6 and main alike
            warn_if_resume_is_inexact(self.start_iter, optimizer_restored=True,
                                      stream_restored=self.exact_resume.restored,
                                      weights_option="train.init_checkpoint")

    def train(self):
        self._trainer.train(self.start_iter, self.max_iter)


def lazy_test(cfg, model):
    """Evaluate ``model`` on ``dataloader.test`` with ``dataloader.evaluator``; {} if there is none."""
    if "evaluator" not in cfg.dataloader:
        return {}
    results = inference_on_dataset(model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator))
    if comm.is_main_process():
        print_csv_format(results)
    return results
