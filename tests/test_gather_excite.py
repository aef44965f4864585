"""The GE module against GE_SPEC.md, with references computed independently of the module."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ge_detectron.layers import GatherExcite, build_gather_excite, excite_reference

VARIANTS = ["theta_minus", "theta", "theta_plus", "se"]


def make(variant, channels=32, extent=0, **kw):
    kw.setdefault("norm", "BN")
    kw.setdefault("global_kernel", 7)
    kw.setdefault("fused", "off")
    return GatherExcite(channels, variant=variant, extent=extent, **kw)


def nearest_source_index(dst, out_size, in_size):
    """The spec's rule, in float32 as PyTorch computes it: min(floor(dst * (in / out)), in - 1)."""
    scale = np.float32(in_size) / np.float32(out_size)
    return min(int(math.floor(np.float32(dst) * scale)), in_size - 1)


def manual_avg_gather(x, e):
    """avg_pool(kernel 2e-1, stride e, pad e-1, count_include_pad=False) written as explicit windows."""
    n, c, h, w = x.shape
    oh, ow = math.ceil(h / e), math.ceil(w / e)
    out = torch.empty(n, c, oh, ow, dtype=x.dtype)
    for i in range(oh):
        r0, r1 = max(i * e - (e - 1), 0), min(i * e + e - 1, h - 1)
        for j in range(ow):
            c0, c1 = max(j * e - (e - 1), 0), min(j * e + e - 1, w - 1)
            out[:, :, i, j] = x[:, :, r0:r1 + 1, c0:c1 + 1].mean(dim=(2, 3))
    return out


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("extent", [0, 2, 4, 8, 16])
@pytest.mark.parametrize("size", [(7, 9), (20, 20), (33, 17)])
def test_shapes_and_gate_range(variant, extent, size):
    torch.manual_seed(0)
    ge = make(variant, extent=extent).eval()
    x = torch.randn(2, 32, *size)
    g = ge.gather_logits(x)
    expected_cells = (1, 1) if extent == 0 or variant == "se" else tuple(math.ceil(s / extent) for s in size)
    assert tuple(g.shape) == (2, 32, *expected_cells)
    y = ge(x)
    assert y.shape == x.shape
    gate = y / x
    assert torch.all(gate > 0) and torch.all(gate < 1)
    shortcut = torch.randn_like(x)
    torch.testing.assert_close(ge(x, shortcut), F.relu(y + shortcut))


@pytest.mark.parametrize("extent", [0, 2, 4, 8])
def test_theta_minus_is_parameter_free_average_gather(extent):
    ge = make("theta_minus", extent=extent)
    assert sum(p.numel() for p in ge.parameters()) == 0
    x = torch.randn(1, 3, 13, 10)
    expected = x.mean(dim=(2, 3), keepdim=True) if extent == 0 else manual_avg_gather(x, extent)
    torch.testing.assert_close(ge.gather_logits(x), expected)


def bn_params(c):
    return 2 * c


@pytest.mark.parametrize("channels", [16, 64])
def test_parameter_counts_follow_the_spec(channels):
    c, r = channels, 16
    mlp = c * (c // r) + c // r + (c // r) * c + c
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    for extent in (2, 4, 8, 16):
        convs = int(math.log2(extent))
        assert count(make("theta", c, extent)) == convs * (c * 9 + bn_params(c))
        assert count(make("theta_plus", c, extent)) == convs * (c * 9 + bn_params(c)) + mlp
    for k in (7, 14):
        assert count(make("theta", c, 0, global_kernel=k)) == c * k * k + bn_params(c)
        assert count(make("theta_plus", c, 0, global_kernel=k)) == c * k * k + bn_params(c) + mlp
    assert count(make("se", c)) == mlp


def test_theta_e8_is_three_stride2_depthwise_convs_relu_between():
    ge = make("theta", 8, extent=8)
    convs = [m for m in ge.gather if isinstance(m, torch.nn.Conv2d)]
    relus = [i for i, m in enumerate(ge.gather) if isinstance(m, torch.nn.ReLU)]
    assert len(convs) == 3 and all(cv.stride == (2, 2) and cv.groups == 8 and cv.bias is None for cv in convs)
    assert relus == [1, 3] and not isinstance(ge.gather[-1], torch.nn.ReLU)


def test_global_theta_at_pretraining_size_is_a_whole_map_depthwise_conv():
    torch.manual_seed(0)
    ge = make("theta", 16, extent=0, global_kernel=56).eval()
    x = torch.randn(2, 16, 56, 56)
    conv = ge.gather[1]
    bn = conv.norm
    whole_map = (x * conv.weight[:, 0][None]).sum(dim=(2, 3), keepdim=True)
    expected = (whole_map - bn.running_mean[None, :, None, None]) / torch.sqrt(bn.running_var + bn.eps)[None, :, None, None]
    torch.testing.assert_close(ge.gather_logits(x), expected, rtol=1e-4, atol=1e-4)
    # other sizes are first resized to the 56x56 grid, so any input size works
    assert ge.gather_logits(torch.randn(1, 16, 40, 71)).shape == (1, 16, 1, 1)


@pytest.mark.parametrize("H,W,extent", [(100, 100, 8), (37, 29, 4), (50, 64, 16)])
def test_odd_sizes_use_interpolates_nearest_rule(H, W, extent):
    torch.manual_seed(0)
    ge = make("theta_minus", 4, extent=extent)
    x = torch.randn(1, 4, H, W)
    g = ge.gather_logits(x)
    h, w = g.shape[-2:]
    gate = torch.sigmoid(g)
    rows = [nearest_source_index(i, H, h) for i in range(H)]
    cols = [nearest_source_index(j, W, w) for j in range(W)]
    expected = x * gate[:, :, rows][:, :, :, cols]
    torch.testing.assert_close(ge(x), expected)
    if (H, extent) == (100, 8):  # the spec's example: `dst // e` is a different, wrong rule here
        assert sum(r != i // extent for i, r in enumerate(rows)) == 18


def test_theta_plus_and_se_compose_gather_relu_mlp():
    torch.manual_seed(0)
    x = torch.randn(2, 32, 12, 12)
    tp = make("theta_plus", extent=4).eval()
    expected_g = tp.mlp(F.relu(tp.gather(x)))
    torch.testing.assert_close(tp(x), excite_reference(x, expected_g))
    se = make("se").eval()
    expected = x * torch.sigmoid(se.mlp(x.mean(dim=(2, 3), keepdim=True)))
    torch.testing.assert_close(se(x), expected)


def test_initialisation_follows_the_spec():
    torch.manual_seed(0)
    ge = make("theta_plus", channels=256, extent=0, global_kernel=14)
    conv = ge.gather[1]
    assert abs(conv.weight.std().item() - math.sqrt(2 / 14 ** 2)) < 0.01  # msra, fan_in = k^2
    for m in (ge.mlp[0], ge.mlp[2]):
        assert abs(m.weight.std().item() - 0.01) < 0.002 and torch.all(m.bias == 0)
    assert torch.all(conv.norm.weight == 1) and torch.all(conv.norm.bias == 0)


def test_gradients_flow_to_gather_and_input():
    ge = make("theta", extent=4)
    x = torch.randn(2, 32, 16, 16, requires_grad=True)
    ge(x).sum().backward()
    assert x.grad.abs().sum() > 0 and all(p.grad is not None for p in ge.parameters())


@pytest.mark.parametrize("bad", [3, 6, 1, -2, 2.0])
def test_bad_extent_is_a_clear_error(bad):
    with pytest.raises(ValueError, match=rf"extent={bad!r} is invalid: .*power of two"):
        make("theta", extent=bad)


def test_bad_variant_and_factory():
    with pytest.raises(ValueError, match="variant='gamma' is invalid"):
        make("gamma")
    assert build_gather_excite("none", 8) is None
    assert isinstance(build_gather_excite("se", 32), GatherExcite)


def test_rank_is_checked():
    with pytest.raises(ValueError, match=r"expects an \(N, C, H, W\) tensor"):
        make("se")(torch.randn(32, 8, 8))
