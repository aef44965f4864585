"""``cfg.PRETRAIN``: the keys of classification pretraining that detectron2's config lacks.

Everything else comes from detectron2's own keys, with the meaning they have for detection:
SOLVER.* (IMS_PER_BATCH is the total batch over all processes, BASE_LR, MOMENTUM, WEIGHT_DECAY,
WEIGHT_DECAY_NORM / WEIGHT_DECAY_BIAS (0.0 = no decay on norm / bias parameters),
LR_SCHEDULER_NAME "WarmupMultiStepLR" (STEPS, GAMMA) or "WarmupCosineLR", WARMUP_*, MAX_ITER,
CHECKPOINT_PERIOD, AMP.ENABLED, REFERENCE_WORLD_SIZE), TEST.EVAL_PERIOD, DATALOADER.NUM_WORKERS,
INPUT.FORMAT, MODEL.PIXEL_MEAN / PIXEL_STD, MODEL.DEVICE, MODEL.WEIGHTS, SEED and OUTPUT_DIR.
"""
import functools

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

from ..config import add_ge_config, fail_invalid, merge_cfg, validate_ge_config


class PretrainConfigError(ValueError):
    """An invalid ``PRETRAIN`` (or pretraining-specific detectron2) value."""


def add_pretrain_config(cfg):
    """Add the ``PRETRAIN`` keys to a detectron2 config, in place."""
    cfg.PRETRAIN = CN()
    # ImageFolder roots (one sub-folder per class). Relative paths are under $DETECTRON2_DATASETS
    # (default ./datasets), like detectron2's builtin datasets; absolute paths are used as they are.
    cfg.PRETRAIN.TRAIN_DIR = "imagenet/train"
    cfg.PRETRAIN.VAL_DIR = "imagenet/val"
    # Write the generated "GE shape classes" set (ge_detectron/data/shape_classes.py) into TRAIN_DIR
    # and VAL_DIR when they do not exist: the CPU demo and the tests.
    cfg.PRETRAIN.GENERATE_DEMO_DATA = False
    # Training: RandomResizedCrop to CROP_SIZE with area fraction in CROP_SCALE, then horizontal flip.
    # Evaluation: shorter side resized to RESIZE_SIZE, centre crop of CROP_SIZE.
    cfg.PRETRAIN.CROP_SIZE = 224
    cfg.PRETRAIN.CROP_SCALE = (0.08, 1.0)
    cfg.PRETRAIN.RESIZE_SIZE = 256
    # Start every bottleneck as the identity: zero scale in the last norm of its residual branch
    # (Goyal et al. 2017). Applied before MODEL.WEIGHTS is loaded.
    cfg.PRETRAIN.ZERO_INIT_RESIDUAL = True
    # Label smoothing of the cross-entropy loss (0 = off; 0.1 is the common choice).
    cfg.PRETRAIN.LABEL_SMOOTHING = 0.0
    # Evaluation batch, total over all processes.
    cfg.PRETRAIN.EVAL_IMS_PER_BATCH = 256
    return cfg


_fail = functools.partial(fail_invalid, error=PretrainConfigError)


def validate_pretrain_config(cfg):
    """Check the ``PRETRAIN`` keys and the solver keys pretraining relies on; return ``cfg``."""
    p = cfg.PRETRAIN
    for key in ("CROP_SIZE", "RESIZE_SIZE", "EVAL_IMS_PER_BATCH"):
        if not isinstance(p[key], int) or p[key] < 1:
            _fail(f"PRETRAIN.{key}", p[key], "use a positive integer")
    if p.RESIZE_SIZE < p.CROP_SIZE:
        _fail("PRETRAIN.RESIZE_SIZE", p.RESIZE_SIZE, f"it must be at least PRETRAIN.CROP_SIZE ({p.CROP_SIZE})")
    scale = tuple(p.CROP_SCALE)
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        _fail("PRETRAIN.CROP_SCALE", scale, "use (min, max) with 0 < min <= max <= 1, e.g. (0.08, 1.0)")
    if not 0 <= p.LABEL_SMOOTHING < 1:
        _fail("PRETRAIN.LABEL_SMOOTHING", p.LABEL_SMOOTHING, "use a value in [0, 1), e.g. 0.1")
    if not p.TRAIN_DIR or not p.VAL_DIR:
        _fail("PRETRAIN.TRAIN_DIR / VAL_DIR", (p.TRAIN_DIR, p.VAL_DIR), "give both ImageFolder roots")
    if cfg.INPUT.FORMAT not in ("BGR", "RGB"):
        _fail("INPUT.FORMAT", cfg.INPUT.FORMAT, 'pretraining reads "BGR" or "RGB" images')
    if cfg.SOLVER.LR_SCHEDULER_NAME not in ("WarmupMultiStepLR", "WarmupCosineLR"):
        _fail("SOLVER.LR_SCHEDULER_NAME", cfg.SOLVER.LR_SCHEDULER_NAME, 'use "WarmupMultiStepLR" or "WarmupCosineLR"')
    return cfg


def get_pretrain_cfg(config_file=None, opts=()):
    """detectron2's defaults + ``MODEL.GE`` + ``PRETRAIN``, merged with a YAML file and ``KEY VALUE``
    overrides, validated and frozen. Raises GEConfigError or PretrainConfigError (both ValueErrors)."""
    cfg = merge_cfg(add_pretrain_config(add_ge_config(get_cfg())), config_file, opts)
    validate_ge_config(cfg)
    validate_pretrain_config(cfg)
    cfg.freeze()
    return cfg
