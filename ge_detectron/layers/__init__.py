from .gather_excite import (
    GE_VARIANTS,
    GatherExcite,
    build_gather_excite,
    excite_reference,
    excite_residual_reference,
    uses_fused_op,
)
from .gathers import AverageGather, DepthwiseGather
