"""ge_detectron: Gather-Excite networks (Hu et al., NeurIPS 2018) as a detectron2 plugin.

Importing the package applies the compatibility fixes the installed detectron2 needs
(``ge_detectron.compat``; none for detectron2 main built from source) and registers the GE backbones
(``build_ge_resnet_backbone``, ``build_ge_resnet_fpn_backbone``, ``build_ge_retinanet_resnet_fpn_backbone``)
and the C4 ROI head (``GERes5ROIHeads``) in detectron2's registries. ``make_ge_resnet_stages`` and
``make_ge_stage`` build the same from plain arguments (LazyConfigs).
"""
from .version import check_torch_version

check_torch_version()  # before anything that needs a newer torch: one line naming the minimum

from . import compat  # noqa: E402

compat.apply()

from .config import GEConfigError, add_ge_config, validate_ge_config  # noqa: E402
from .layers import GatherExcite, build_gather_excite  # noqa: E402
from .modeling import (  # noqa: E402
    GEBottleneckBlock,
    GERes5ROIHeads,
    build_ge_resnet,
    build_ge_resnet_backbone,
    build_ge_resnet_fpn_backbone,
    build_ge_retinanet_resnet_fpn_backbone,
    make_ge_resnet_stages,
    make_ge_stage,
)
from .modeling import GEClassifier, build_ge_classifier  # noqa: E402
from .version import MIN_TORCH, __version__  # noqa: E402
