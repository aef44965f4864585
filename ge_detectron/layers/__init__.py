from .gather_excite import (
    GatherExcite,
    build_gather_excite,
    excite_reference,
    excite_residual_reference,
)
from .gathers import AverageGather, DepthwiseGather
