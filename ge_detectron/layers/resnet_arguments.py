"""The checks of the GE-ResNet builders' plain arguments (``modeling.make_ge_stem``,
``modeling.make_ge_resnet_stages``). They sit below ``ge_detectron.config`` with the layers' own argument
checks, so that ``config`` runs them on a config's values and the builders, which ``config`` feeds, call them
too: one check for both, and ``config`` imports nothing of ``modeling``."""
from .arguments import invalid_argument
from .same_padding import check_padding

__all__ = ["STAGE_NAMES", "BLOCKS_PER_STAGE", "GE_INITS", "check_stem_args", "check_ge_resnet_args", "check_ge_init"]

STAGE_NAMES = ("res2", "res3", "res4", "res5")
BLOCKS_PER_STAGE = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}  # GE sits in bottleneck blocks
# How a GE module begins when the weights loaded lack it: "paper" keeps its random initialisation, "identity"
# makes its block compute the plain block (``GEBottleneckBlock.insert_as_identity``, docs/GE_SPEC.md).
GE_INITS = ("paper", "identity")


def check_stem_args(padding="symmetric", norm_eps=1e-5):
    """Raise an ``invalid_argument`` error naming the first invalid ``make_ge_stem`` argument among these."""
    check_padding(padding)
    if isinstance(norm_eps, bool) or not isinstance(norm_eps, float) or not norm_eps > 0:
        raise invalid_argument("norm_eps", norm_eps, "use a positive float such as 1e-5")


def check_ge_resnet_args(depth=50, ge_stages=STAGE_NAMES, res5_dilation=1, ge_global_input_size=224,
                         padding="symmetric"):
    """Raise an ``invalid_argument`` error naming the first invalid ``make_ge_resnet_stages`` argument among these."""
    if depth not in BLOCKS_PER_STAGE:
        raise invalid_argument("depth", depth, "GE sits in bottleneck blocks, so use one of "
                              f"{list(BLOCKS_PER_STAGE)}")
    stages = list(ge_stages)
    if not set(stages) <= set(STAGE_NAMES) or len(set(stages)) != len(stages):
        raise invalid_argument("ge_stages", stages, "give distinct names from " + ", ".join(STAGE_NAMES))
    if res5_dilation not in (1, 2):
        raise invalid_argument("res5_dilation", res5_dilation, "use 1 or 2")
    size = ge_global_input_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 32 or size % 32:
        raise invalid_argument("ge_global_input_size", size, "use a positive multiple of 32 such as 224")
    check_padding(padding)


def check_ge_init(variant, init):
    """Raise an ``invalid_argument`` error for a ``ge_init`` that is not one of GE_INITS, or "identity" with
    theta_minus, which has no parameters to make its block the identity."""
    if init not in GE_INITS:
        raise invalid_argument("ge_init", init, "allowed are " + ", ".join(map(repr, GE_INITS)))
    if init == "identity" and variant == "theta_minus":
        raise invalid_argument("ge_init", init, "theta_minus has no parameters to insert it as the identity; use "
                              "'paper', or theta / theta_plus / se")
