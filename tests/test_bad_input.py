"""Bad input to the GE module: a clear error, the same on the reference and the fused path, instead of a
silent broadcast or type promotion (the fused operators' own checks are in test_excite_op.py)."""
import re

import pytest
import torch

from ge_detectron import ops
from ge_detectron.layers import GatherExcite, build_gather_excite

PATHS = ["off", pytest.param("on", marks=pytest.mark.skipif(not ops.native_kernels("cpu"), reason="no extension"))]


def make(fused, variant="theta", extent=4, channels=8):
    return GatherExcite(channels, variant=variant, extent=extent, norm="BN", global_kernel=7, fused=fused).eval()


@pytest.mark.parametrize("fused", PATHS)
@pytest.mark.parametrize("shape", [(8, 12, 12), (2, 8, 12, 12, 1), (8,)])
def test_wrong_rank(fused, shape):
    message = r"GatherExcite expects an \(N, C, H, W\) tensor, got shape " + re.escape(str(shape))
    with pytest.raises(ValueError, match=message):
        make(fused)(torch.randn(shape))


@pytest.mark.parametrize("fused", PATHS)
@pytest.mark.parametrize("variant", ["theta_minus", "se"])  # theta_minus has no weights to notice it
def test_wrong_channel_count(fused, variant):
    with pytest.raises(ValueError, match=r"built for 8 channels, got x of shape \(2, 16, 12, 12\)"):
        make(fused, variant)(torch.randn(2, 16, 12, 12))


@pytest.mark.parametrize("fused", PATHS)
def test_integer_input(fused):
    with pytest.raises(ValueError, match="expects a floating-point x, got torch.int64"):
        make(fused, "theta_minus")(torch.ones(2, 8, 12, 12, dtype=torch.int64))


@pytest.mark.parametrize("fused", PATHS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_shortcut_dtype_differs_from_x(fused, dtype):
    x = torch.randn(2, 8, 12, 12)
    with pytest.raises(ValueError, match=rf"shortcut must have x's dtype torch.float32, got {dtype}"):
        make(fused)(x, torch.randn(2, 8, 12, 12, dtype=dtype))  # the reference would promote silently


@pytest.mark.parametrize("fused", PATHS)
def test_shortcut_device_differs_from_x(fused):
    x = torch.randn(2, 8, 12, 12)
    other = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("meta")
    with pytest.raises(ValueError, match=rf"shortcut must have x's device cpu, got {other}"):
        make(fused)(x, torch.randn(2, 8, 12, 12, device=other))


@pytest.mark.parametrize("fused", PATHS)
@pytest.mark.parametrize("shape", [(2, 8, 1, 1), (1, 8, 12, 12), (2, 8, 12, 1), (2, 8, 12, 13), (2, 4, 12, 12)])
def test_shortcut_shape_differs_from_x(fused, shape):
    x = torch.randn(2, 8, 12, 12)  # the first three would broadcast silently in the reference
    message = r"shortcut must have x's shape \(2, 8, 12, 12\), got " + re.escape(str(shape))
    with pytest.raises(ValueError, match=message):
        make(fused)(x, torch.randn(shape))


@pytest.mark.parametrize("extent", [3, 5, 12, 24, 48, 7.5, "8", None, True])
@pytest.mark.parametrize("variant", ["theta_minus", "theta", "theta_plus"])
def test_extent_not_a_power_of_two(variant, extent):
    with pytest.raises(ValueError, match=rf"GatherExcite extent={extent!r} is invalid: use 0 for a global "
                                         r"gather or a power of two \(2, 4, 8, 16, ...\)"):
        build_gather_excite(variant, 8, extent=extent, norm="BN")
