"""``cfg.MODEL.GE``: the Gather-Excite keys, their defaults and their validation."""
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

VARIANTS = ("none", "theta_minus", "theta", "theta_plus", "se")
STAGE_NAMES = ("res2", "res3", "res4", "res5")
FUSED_MODES = ("auto", "on", "off")


class GEConfigError(ValueError):
    """An invalid ``MODEL.GE`` value; the message names the key, the value and what is allowed."""


def add_ge_config(cfg):
    """Add the ``MODEL.GE`` keys (documented in README.md) to a detectron2 config, in place."""
    cfg.MODEL.GE = CN()
    # "none" (plain ResNet), "theta_minus" (GE-θ⁻), "theta" (GE-θ), "theta_plus" (GE-θ⁺) or "se".
    cfg.MODEL.GE.VARIANT = "none"
    # Extent ratio of the gather: 0 = global, else a power of two (2, 4, 8, ...). Ignored by "se".
    cfg.MODEL.GE.EXTENT = 0
    # Stages whose bottlenecks get a GE module. The C4 detector's res5 lives in its ROI head.
    cfg.MODEL.GE.STAGES = ["res2", "res3", "res4", "res5"]
    # Norm of the depthwise gather convs; "" means the same as MODEL.RESNETS.NORM.
    cfg.MODEL.GE.NORM = ""
    # Channel reduction of the excite MLP of "theta_plus" and "se".
    cfg.MODEL.GE.REDUCTION = 16
    # Input side at which a global theta/theta_plus depthwise kernel covers the whole map
    # (the paper's 224: kernels 56/28/14/7 for res2..res5). Other inputs are resized to that grid.
    cfg.MODEL.GE.GLOBAL_INPUT_SIZE = 224
    # Fused excite operator: "auto" (on the devices with its kernels: Triton on CUDA, C++ on the CPU),
    # "on" (everywhere; required on this machine's device), "off" (the pure-PyTorch reference).
    cfg.MODEL.GE.FUSED = "auto"
    # Classes of the ImageNet classification head used for pretraining.
    cfg.MODEL.GE.NUM_CLASSES = 1000
    return cfg


def _fail(key, value, allowed):
    raise GEConfigError(f"MODEL.GE.{key} = {value!r} is invalid: {allowed}.")


def check_extent(extent, key="EXTENT"):
    """Raise ``GEConfigError`` unless ``extent`` is 0 (global) or a power of two >= 2."""
    if isinstance(extent, bool) or not isinstance(extent, int) or extent < 0 or (extent & (extent - 1)):
        _fail(key, extent, "use 0 for a global gather or a power of two (2, 4, 8, 16, ...)")
    if extent == 1:
        _fail(key, extent, "an extent of 1 gathers nothing; use 0 for global or a power of two >= 2")
    return extent


def validate_ge_config(cfg):
    """Check every ``MODEL.GE`` value; raise ``GEConfigError`` (a ValueError) naming the first bad one."""
    ge = cfg.MODEL.GE
    if ge.VARIANT not in VARIANTS:
        _fail("VARIANT", ge.VARIANT, "allowed are " + ", ".join(repr(v) for v in VARIANTS))
    check_extent(ge.EXTENT)
    stages = list(ge.STAGES)
    bad = [s for s in stages if s not in STAGE_NAMES]
    if bad or len(set(stages)) != len(stages):
        _fail("STAGES", stages, "give distinct names from " + ", ".join(STAGE_NAMES))
    if not isinstance(ge.REDUCTION, int) or ge.REDUCTION < 1:
        _fail("REDUCTION", ge.REDUCTION, "use a positive integer such as 16")
    if not isinstance(ge.GLOBAL_INPUT_SIZE, int) or ge.GLOBAL_INPUT_SIZE < 32 or ge.GLOBAL_INPUT_SIZE % 32:
        _fail("GLOBAL_INPUT_SIZE", ge.GLOBAL_INPUT_SIZE, "use a positive multiple of 32 such as 224")
    if ge.FUSED not in FUSED_MODES:
        _fail("FUSED", ge.FUSED, "allowed are " + ", ".join(repr(v) for v in FUSED_MODES))
    if not isinstance(ge.NUM_CLASSES, int) or ge.NUM_CLASSES < 1:
        _fail("NUM_CLASSES", ge.NUM_CLASSES, "use a positive integer such as 1000")
    if ge.NORM:
        from detectron2.layers import get_norm

        try:
            get_norm(ge.NORM, 32)
        except (KeyError, AttributeError, TypeError):
            _fail("NORM", ge.NORM, 'use "" (same as MODEL.RESNETS.NORM) or a detectron2 norm such as '
                  '"BN", "SyncBN", "FrozenBN", "GN"')
    return cfg


def ge_norm(cfg):
    """The norm of the GE gather layers: ``MODEL.GE.NORM``, or ``MODEL.RESNETS.NORM`` when empty."""
    return cfg.MODEL.GE.NORM or cfg.MODEL.RESNETS.NORM


def ge_block_kwargs(cfg, stage_name):
    """Keyword arguments of ``GEBottleneckBlock`` for one stage: ``ge_variant="none"`` outside STAGES."""
    ge = cfg.MODEL.GE
    stage_index = STAGE_NAMES.index(stage_name) + 2
    return {
        "ge_variant": ge.VARIANT if stage_name in ge.STAGES else "none",
        "ge_extent": ge.EXTENT,
        "ge_norm": ge_norm(cfg),
        "ge_reduction": ge.REDUCTION,
        "ge_global_kernel": ge.GLOBAL_INPUT_SIZE // 2 ** stage_index,
        "ge_fused": ge.FUSED,
    }


def merge_cfg(cfg, config_file=None, opts=()):
    """Merge a YAML file and ``KEY VALUE`` overrides into ``cfg``; a bad file, key or value raises
    GEConfigError naming it."""
    try:
        if config_file:
            cfg.merge_from_file(config_file)
        cfg.merge_from_list(list(opts))
    except FileNotFoundError as e:
        raise GEConfigError(f"config file not found: {e.filename or config_file!r}.") from None
    except (KeyError, ValueError, AssertionError) as e:
        raise GEConfigError(f"cannot merge config {config_file!r} with overrides {list(opts)}: {e}") from None
    return cfg


def get_ge_cfg(config_file=None, opts=()):
    """detectron2's default config + ``MODEL.GE``, merged with a YAML file and ``KEY VALUE`` overrides,
    validated and frozen. Raises GEConfigError for any bad file, key or value."""
    cfg = merge_cfg(add_ge_config(get_cfg()), config_file, opts)
    validate_ge_config(cfg)
    cfg.freeze()
    return cfg
