"""The config layer: the ``cfg.MODEL.GE`` keys, their defaults and validation, and the translation of a
detectron2 config into the plain arguments of the GE modules (``ge_detectron.modeling``), in one place:
the YAML builders and the LazyConfigs construct the same functions with the same arguments."""
import contextlib

import yaml
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

from .config_files import resolve_config_file
from .layers import check_gather_excite_args, check_ge_init, check_ge_resnet_args, check_stem_args


class GEConfigError(ValueError):
    """An invalid ``MODEL.GE`` value; the message names the key, the value and what is allowed."""


# The seconds a process waits for the others of a distributed run (a collective, the process group's forming)
# before the run stops with a message (ge_detectron.engine.faults): torch's and detectron2's 30 minutes.
DIST_TIMEOUT = 1800


def add_ge_config(cfg):
    """Add the ``MODEL.GE`` keys and ``GE_DIST.TIMEOUT`` (documented in README.md) to a detectron2 config, in place."""
    cfg.GE_DIST = CN()
    # Seconds a process waits for the others (a collective, the process group's forming) before the run stops.
    cfg.GE_DIST.TIMEOUT = DIST_TIMEOUT
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
    # How a GE module begins when MODEL.WEIGHTS lacks its weights (plain pretrained weights): "paper" (its
    # random initialisation, as the paper's code) or "identity" (its block computes the plain block exactly:
    # the gate's last layer zeroed, so every gate is 0.5, and the residual branch's last norm doubled;
    # docs/GE_SPEC.md). Weights that hold the GE modules (GE-pretrained, a resume) load unchanged either
    # way; "identity" needs learnable GE (theta, theta_plus, se).
    cfg.MODEL.GE.INIT = "paper"
    # Classes of the ImageNet classification head used for pretraining.
    cfg.MODEL.GE.NUM_CLASSES = 1000
    # The options below reproduce other implementations' networks; the defaults are the paper's and
    # detectron2's. MindSpore's GENet_Res50 (configs/pretrain/mindspore/, docs/pretraining.md) sets them all.
    # Padding of the stem (conv and max-pool) and of the bottleneck convs: "symmetric" (detectron2's fixed
    # padding) or "same" (TensorFlow / MindSpore: computed from the input size, the smaller half before).
    cfg.MODEL.GE.PADDING = "symmetric"
    # Epsilon of the stem's norm.
    cfg.MODEL.GE.STEM_NORM_EPS = 1e-5
    # Largest kernel of a global theta/theta_plus depthwise gather (0: no limit). A larger map (res2's 56 at
    # 224) is first halved by a dense 3x3 stride-2 "same" conv + norm per step.
    cfg.MODEL.GE.GATHER_MAX_KERNEL = 0
    # Whether the 1x1 convs of the theta_plus / se excite MLP have biases.
    cfg.MODEL.GE.MLP_BIAS = True
    # Whether theta_plus applies a ReLU between its gather and its MLP.
    cfg.MODEL.GE.THETA_PLUS_RELU = True
    return cfg


def fail_invalid(key, value, allowed, error=GEConfigError):
    """Raise ``error`` saying that config key ``key`` (its full name) has the invalid ``value``, and what
    is ``allowed``: the one form of every config layer's invalid-value message."""
    raise error(f"{key} = {value!r} is invalid: {allowed}.")


# The config key of each plain argument that the layers and builders validate (``layers.invalid_argument``).
ARGUMENT_KEYS = {
    "variant": "MODEL.GE.VARIANT", "extent": "MODEL.GE.EXTENT", "reduction": "MODEL.GE.REDUCTION",
    "fused": "MODEL.GE.FUSED", "norm": "MODEL.GE.NORM", "depth": "MODEL.RESNETS.DEPTH",
    "ge_stages": "MODEL.GE.STAGES", "res5_dilation": "MODEL.RESNETS.RES5_DILATION",
    "ge_global_input_size": "MODEL.GE.GLOBAL_INPUT_SIZE", "padding": "MODEL.GE.PADDING",
    "norm_eps": "MODEL.GE.STEM_NORM_EPS", "max_kernel": "MODEL.GE.GATHER_MAX_KERNEL", "mlp_bias": "MODEL.GE.MLP_BIAS",
    "theta_plus_relu": "MODEL.GE.THETA_PLUS_RELU", "ge_init": "MODEL.GE.INIT",
}


@contextlib.contextmanager
def naming_config_keys():
    """Re-raise an ``invalid_argument`` error of the layers or builders as a GEConfigError naming the config key."""
    try:
        yield
    except ValueError as e:
        if getattr(e, "argument", None) not in ARGUMENT_KEYS:
            raise
        fail_invalid(ARGUMENT_KEYS[e.argument], e.value, e.allowed)


def validate_ge_config(cfg):
    """Check every ``MODEL.GE`` value, and the ``MODEL.RESNETS`` values a GE-ResNet restricts, with the checks of
    the functions that take them as arguments; raise ``GEConfigError`` (a ValueError) naming the first bad one."""
    ge, res = cfg.MODEL.GE, cfg.MODEL.RESNETS
    with naming_config_keys():
        check_gather_excite_args(ge.VARIANT, ge.EXTENT, ge.REDUCTION, ge.FUSED, ge.NORM or None, ge.GATHER_MAX_KERNEL,
                                 ge.MLP_BIAS, ge.THETA_PLUS_RELU, allow_none=True)
        check_ge_resnet_args(res.DEPTH, ge.STAGES, res.RES5_DILATION, ge.GLOBAL_INPUT_SIZE, ge.PADDING)
        check_stem_args(ge.PADDING, ge.STEM_NORM_EPS)
        check_ge_init(ge.VARIANT, ge.INIT)
    if isinstance(ge.NUM_CLASSES, bool) or not isinstance(ge.NUM_CLASSES, int) or ge.NUM_CLASSES < 1:
        fail_invalid("MODEL.GE.NUM_CLASSES", ge.NUM_CLASSES, "use a positive integer such as 1000")
    return cfg


def _check_resnet_keys(cfg):
    res = cfg.MODEL.RESNETS
    if any(res.DEFORM_ON_PER_STAGE):
        raise GEConfigError("MODEL.RESNETS.DEFORM_ON_PER_STAGE enables deformable convs, which GE-ResNet "
                            "does not support: set it to [False, False, False, False].")


def _ge_args(ge):
    return {"ge_extent": ge.EXTENT, "ge_norm": ge.NORM or None, "ge_reduction": ge.REDUCTION, "ge_fused": ge.FUSED,
            "ge_max_kernel": ge.GATHER_MAX_KERNEL, "ge_mlp_bias": ge.MLP_BIAS, "ge_theta_plus_relu": ge.THETA_PLUS_RELU,
            "ge_init": ge.INIT, "padding": ge.PADDING}


def ge_stem_args(cfg):
    """The keyword arguments of ``modeling.make_ge_stem`` (after its ``in_channels``)."""
    res, ge = cfg.MODEL.RESNETS, cfg.MODEL.GE
    return {"out_channels": res.STEM_OUT_CHANNELS, "norm": res.NORM, "padding": ge.PADDING,
            "norm_eps": ge.STEM_NORM_EPS}


def _stage_args(res):
    return {"num_groups": res.NUM_GROUPS, "norm": res.NORM, "stride_in_1x1": res.STRIDE_IN_1X1}


def ge_resnet_stages_args(cfg):
    """``MODEL.RESNETS`` and ``MODEL.GE`` (validated) as the keyword arguments of
    ``modeling.make_ge_resnet_stages``, unpacked as detectron2's ``build_resnet_backbone`` does."""
    validate_ge_config(cfg)
    _check_resnet_keys(cfg)
    res, ge = cfg.MODEL.RESNETS, cfg.MODEL.GE
    return {"depth": res.DEPTH, "stem_out_channels": res.STEM_OUT_CHANNELS, "res2_out_channels": res.RES2_OUT_CHANNELS,
            "width_per_group": res.WIDTH_PER_GROUP, "res5_dilation": res.RES5_DILATION, **_stage_args(res),
            "ge_variant": ge.VARIANT, "ge_stages": list(ge.STAGES), "ge_global_input_size": ge.GLOBAL_INPUT_SIZE,
            **_ge_args(ge)}


def ge_res5_head_args(cfg):
    """The keyword arguments of ``modeling.make_ge_stage`` for the res5 stage of a C4 detector's ROI head,
    unpacked as detectron2's ``Res5ROIHeads._build_res5_block`` does; GE only if "res5" is in MODEL.GE.STAGES."""
    validate_ge_config(cfg)
    _check_resnet_keys(cfg)
    res, ge = cfg.MODEL.RESNETS, cfg.MODEL.GE
    factor = 2 ** 3  # res5 is 8x res2
    out_channels = res.RES2_OUT_CHANNELS * factor
    return {"num_blocks": 3, "stride_per_block": [2, 1, 1], "in_channels": out_channels // 2,
            "bottleneck_channels": res.NUM_GROUPS * res.WIDTH_PER_GROUP * factor, "out_channels": out_channels,
            **_stage_args(res), "ge_variant": ge.VARIANT if "res5" in ge.STAGES else "none",
            "ge_global_kernel": ge.GLOBAL_INPUT_SIZE // 32, **_ge_args(ge)}


def ge_classifier_args(cfg):
    """The pretraining classifier's classes (``MODEL.GE.NUM_CLASSES``) and pixel normalisation."""
    return {"num_classes": cfg.MODEL.GE.NUM_CLASSES, "pixel_mean": cfg.MODEL.PIXEL_MEAN, "pixel_std": cfg.MODEL.PIXEL_STD}


def config_file_not_found(path):
    """The GEConfigError of a config file (YAML, its ``_BASE_``, or a LazyConfig) that does not exist."""
    return GEConfigError(f"config file not found: {path!r} (neither a file nor a model-zoo name; "
                         "`python -c 'from ge_detectron import model_zoo; print(model_zoo.list_configs())'` lists "
                         "the names).")


def merge_cfg(cfg, config_file=None, opts=()):
    """Merge a YAML file and ``KEY VALUE`` overrides into ``cfg``; a bad file, key or value raises
    GEConfigError naming it. The file (and its ``_BASE_`` files) is read with ``yaml.safe_load``: detectron2
    would fall back to ``yaml.unsafe_load``, which runs the Python a ``!!python/...`` tag names."""
    try:
        if config_file:
            cfg.merge_from_file(resolve_config_file(config_file), allow_unsafe=False)
        cfg.merge_from_list(list(opts))
    except FileNotFoundError as e:
        raise config_file_not_found(e.filename or config_file) from None
    except yaml.YAMLError as e:
        raise GEConfigError(f"config file {config_file!r} is not plain YAML data, it was not loaded: "
                            f"{' '.join(str(e).split())}") from None
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
