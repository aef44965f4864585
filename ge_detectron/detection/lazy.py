"""LazyConfigs (detectron2's Python configs) for GE detectors: loading with clear errors, the checks made
before any training process starts, and the task adapter of tools/lazyconfig_train_net.py.

A LazyConfig has detectron2's top-level keys (configs/common in detectron2's model zoo): ``model``,
``dataloader`` (``train``, ``test``, ``evaluator``), ``optimizer``, ``lr_multiplier`` and ``train``
(``output_dir``, ``init_checkpoint``, ``max_iter``, ``amp``, ``ddp``, ``checkpointer``, ``eval_period``,
``log_period``, ``device``, optionally ``seed`` and ``dist_timeout``). ``LazyDetection`` reads them for ge_detectron.engine's
trainer: the hooks of upstream's tools/lazyconfig_train_net.py with the fault handling of the YAML tool
(GECheckpointer's atomic checkpoints, exact resume, the non-finite stop) and, through the configs'
``dataloader.train``, the bad-data handling and resumable data stream of ge_detectron.data.sanitize.
"""
import inspect
import logging
import os

import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.registry import locate
from omegaconf import OmegaConf

from ..config import DIST_TIMEOUT, GEConfigError, config_file_not_found
from ..config_files import resolve_config_file
from ..engine import GETrainer, TaskAdapter
from .task_mixin import DetectionTaskMixin

__all__ = ["load_lazy_config", "check_lazy_model", "LazyDetection", "LazyTrainer"]

logger = logging.getLogger(__name__)

REQUIRED_KEYS = ("model", "dataloader", "optimizer", "lr_multiplier", "train")
_MISSING = object()


def load_lazy_config(path, overrides=()):
    """``LazyConfig.load(path)`` with ``key=value`` overrides applied. A missing or broken file, a malformed
    override, or an override of a key the config does not have (a typo would otherwise add a key nobody
    reads; write ``+key=value`` to add one on purpose) raises GEConfigError naming it."""
    path = resolve_config_file(path)
    if not os.path.isfile(path):
        raise config_file_not_found(path)
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


def check_lazy_model(cfg):
    """Instantiate ``cfg.model`` on the meta device (no memory, no weights) so that a bad argument (a GE
    module's ``extent=6``, a misspelt keyword) is a GEConfigError before any training process starts."""
    try:
        with torch.device("meta"):
            instantiate(cfg.model)
    except (ValueError, TypeError, AssertionError, KeyError) as e:
        raise GEConfigError(f"cannot build the model: {type(e).__name__}: {e}") from None


class LazyDetection(DetectionTaskMixin, TaskAdapter):
    """A LazyConfig's keys as the trainer and the flow read them (detectron2's tools/lazyconfig_train_net.py
    reads the same ones); checkpoints hold SimpleTrainer's state (iteration, hooks, optimizer, AMP grad
    scaler), as that tool's do."""

    DEVICE, BATCH, WEIGHTS = "train.device", "dataloader.train.total_batch_size", "train.init_checkpoint"
    LR, WARMUP = "optimizer.lr", "lr_multiplier.warmup_length"
    DIST_TIMEOUT = "train.dist_timeout"
    TRAINER_STATE = "SimpleTrainer"
    load = staticmethod(load_lazy_config)

    @staticmethod
    def override(key, value):
        return f"{key}={value}"

    device = property(lambda self: self.cfg.train.device)
    output_dir = property(lambda self: self.cfg.train.output_dir)
    weights = property(lambda self: self.cfg.train.init_checkpoint)
    max_iter = property(lambda self: self.cfg.train.max_iter)
    total_batch_size = property(lambda self: self.cfg.dataloader.train.total_batch_size)
    amp = property(lambda self: OmegaConf.select(self.cfg.train, "amp.enabled", default=False))
    eval_period = property(lambda self: self.cfg.train.eval_period)
    log_period = property(lambda self: self.cfg.train.log_period)
    checkpointer_options = property(lambda self: dict(self.cfg.train.checkpointer))
    ddp_options = property(lambda self: dict(self.cfg.train.get("ddp", {})))
    # not in detectron2's common/train.py: set it with +train.dist_timeout=SECONDS; the default is GE_DIST.TIMEOUT's
    dist_timeout = property(lambda self: OmegaConf.select(self.cfg, "train.dist_timeout", default=DIST_TIMEOUT))

    @property
    def num_classes(self):
        """``(key, value)`` of the detector's number of classes (``model.roi_heads.num_classes`` of an R-CNN,
        ``model.num_classes`` of RetinaNet), or None for a model without one."""
        for key in ("model.roi_heads.num_classes", "model.num_classes"):
            value = OmegaConf.select(self.cfg, key, default=None)
            if isinstance(value, int):
                return key, value
        return None

    def dataset_names(self):
        """The dataset names of ``dataloader.train`` and ``dataloader.test`` (``dataset.names``)."""
        return _names(self.cfg.dataloader.get("train")), _names(self.cfg.dataloader.get("test"))

    def check(self, eval_only):
        super().check(eval_only)
        check_lazy_model(self.cfg)

    def cuda_only_options(self):
        return ["train.amp.enabled"] * bool(self.amp) + ["train.ddp.fp16_compression"] * bool(
            self.ddp_options.get("fp16_compression"))

    def build_model(self):
        model = instantiate(self.cfg.model).to(self.device)
        logger.info(f"Model:\n{model}")
        return model

    def build_optimizer(self, model):
        self.cfg.optimizer.params.model = model
        return instantiate(self.cfg.optimizer)

    def build_train_loader(self):
        return instantiate(self.cfg.dataloader.train)

    def build_test_mapper(self):
        return instantiate(self.cfg.dataloader.test.mapper)

    def build_test_loader(self, dataset_name=None):
        return instantiate(self.cfg.dataloader.test)

    def build_lr_scheduler(self, optimizer):
        """``lr_multiplier``, a ParamScheduler: detectron2's LRScheduler hook applies it to the optimizer."""
        return instantiate(self.cfg.lr_multiplier)

    def test(self, model, evaluators=None):
        """Evaluate ``model`` on ``dataloader.test`` with ``dataloader.evaluator``; {} if there is none."""
        if "evaluator" not in self.cfg.dataloader:
            return {}
        results = inference_on_dataset(model, self.build_test_loader(),
                                       evaluators or instantiate(self.cfg.dataloader.evaluator))
        if comm.is_main_process():
            print_csv_format(results)
        return results


class LazyTrainer(GETrainer):
    task_adapter = LazyDetection
