from .arguments import invalid_argument
from .gather_excite import (
    GE_VARIANTS,
    GatherExcite,
    build_gather_excite,
    check_gather_excite_args,
    excite_reference,
    excite_residual_reference,
    uses_fused_op,
)
from .gathers import AverageGather, DepthwiseGather
from .same_padding import PADDINGS, Conv2dSame, check_padding, max_pool2d_same
from .resnet_arguments import (BLOCKS_PER_STAGE, GE_INITS, STAGE_NAMES, check_ge_init, check_ge_resnet_args,
                               check_stem_args)
