"""The GE-θ depthwise gather against the unfused chain of the spec, in float64: forward, input and
parameter gradients, norm state, for both layouts, odd sizes, every extent, BN / FrozenBN / GN,
training and eval mode; its backward against numerical derivatives; its checkpoint keys."""
import copy

import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from torch import nn
from torch.func import functional_call

from ge_detectron.layers import DepthwiseGather, GatherExcite
from ge_detectron.layers.gathers import frozen_affine

C = 32  # detectron2's "GN" is GroupNorm(32, C)


def randomise_norms(module, gen):
    """Non-trivial norm state, so that a folded norm is not an identity."""
    for m in module.modules():
        if isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d, nn.GroupNorm)):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen, dtype=m.weight.dtype) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen, dtype=m.bias.dtype))
                if not isinstance(m, nn.GroupNorm):
                    m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen, dtype=m.running_mean.dtype))
                    m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen, dtype=m.running_var.dtype) + 0.5)


def make_gather(extent, norm, seed=0, channels=C):
    torch.manual_seed(seed)
    gather = DepthwiseGather(channels, extent, norm, global_kernel=7).double()
    randomise_norms(gather, torch.Generator().manual_seed(seed + 1))
    return gather


def unfused_chain(gather, x):
    """The spec's chain as the layers state it, each norm applied after its conv (no folding)."""
    for layer in gather:
        if isinstance(layer, nn.Conv2d):
            y = F.conv2d(x, layer.weight, None, layer.stride, layer.padding, layer.dilation, layer.groups)
            x = layer.norm(y) if layer.norm is not None else y
        else:
            x = layer(x)
    return x


def layout(x, name):
    return x.contiguous(memory_format=torch.channels_last) if name == "channels_last" else x.contiguous()


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("norm", ["FrozenBN", "BN", "GN"])
@pytest.mark.parametrize("extent", [2, 4, 8, 16, 0])
@pytest.mark.parametrize("memory_format", ["nchw", "channels_last"])
@pytest.mark.parametrize("size", [(37, 29), (9, 4)])
def test_gather_equals_the_unfused_chain_forward_and_backward(size, memory_format, extent, norm, mode):
    gather = make_gather(extent, norm).train(mode == "train")
    reference = copy.deepcopy(gather)
    gen = torch.Generator().manual_seed(2)
    x = layout(torch.randn(2, C, *size, generator=gen, dtype=torch.float64), memory_format)
    x_ref = x.clone().requires_grad_()
    x.requires_grad_()

    out, expected = gather(x), unfused_chain(reference, x_ref)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    for fmt in (torch.contiguous_format, torch.channels_last):
        assert out.is_contiguous(memory_format=fmt) == expected.is_contiguous(memory_format=fmt)
    grad = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    out.backward(grad)
    expected.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-12, atol=1e-12)
    params, ref_params = dict(gather.named_parameters()), dict(reference.named_parameters())
    assert params.keys() == ref_params.keys() and any(p.grad is not None for p in params.values())
    for name, p in params.items():
        torch.testing.assert_close(p.grad, ref_params[name].grad, rtol=1e-12, atol=1e-12, msg=name)
    for (name, b), (_, b_ref) in zip(gather.named_buffers(), reference.named_buffers()):
        torch.testing.assert_close(b, b_ref, rtol=1e-12, atol=1e-12, msg=name)  # BN training updates its statistics


@pytest.mark.parametrize("norm", ["FrozenBN", "BN"])
@pytest.mark.parametrize("extent", [4, 0])
def test_folded_norm_backward_matches_numerical_gradients(norm, extent):
    """gradcheck of the folded conv + norm w.r.t. the input, the conv weights and a BN's weight and bias."""
    gather = make_gather(extent, norm, channels=2).eval()
    names = [n for n, _ in gather.named_parameters()]
    x = torch.randn(1, 2, 9, 7, dtype=torch.float64, requires_grad=True)
    params = [p.detach().clone().requires_grad_() for p in gather.parameters()]

    def f(x, *params):
        return functional_call(gather, dict(zip(names, params)), (x,))

    assert torch.autograd.gradcheck(f, (x, *params))


def test_frozen_stage_folds_without_gradients():
    gather = make_gather(8, "FrozenBN")
    for p in gather.parameters():
        p.requires_grad_(False)
    x = torch.randn(1, C, 20, 20, dtype=torch.float64)
    out = gather(x)
    assert not out.requires_grad
    torch.testing.assert_close(out, unfused_chain(gather, x), rtol=1e-12, atol=1e-12)


def test_hooks_on_a_folded_norm_see_its_input():
    """A forward hook on a frozen norm (e.g. to record or calibrate its statistics) is called with the
    conv's output, as in the unfolded chain, and the gather's output is unchanged."""
    gather = make_gather(4, "FrozenBN").eval()
    x = torch.randn(2, C, 13, 11, dtype=torch.float64)
    seen = []
    handle = gather[0].norm.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0]))
    out = gather(x)
    handle.remove()
    torch.testing.assert_close(seen[0], F.conv2d(x, gather[0].weight, None, 2, 1, 1, C), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out, unfused_chain(gather, x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("extent", [8, 0])
def test_gather_without_norm_is_the_bare_chain(extent):
    """norm "" (no norm layer, detectron2's get_norm): the convs and ReLUs alone, forward and backward."""
    gather = make_gather(extent, "")
    assert all(layer.norm is None for layer in gather if isinstance(layer, Conv2d))
    x = torch.randn(2, C, 17, 23, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    out, expected = gather(x), unfused_chain(gather, x_ref)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    out.sum().backward()
    expected.sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-12, atol=1e-12)


def old_sequential(channels, extent, norm):
    """The gather's checkpoint layout: an nn.Sequential of detectron2 Conv2d (norm inside) and ReLU."""
    from detectron2.layers import get_norm

    def conv(k, s, p):
        return Conv2d(channels, channels, k, stride=s, padding=p, groups=channels, bias=False,
                      norm=get_norm(norm, channels))

    if extent == 0:
        return nn.Sequential(nn.AdaptiveAvgPool2d(7), conv(7, 1, 0))
    layers = [conv(3, 2, 1)]
    for _ in range(extent.bit_length() - 2):
        layers += [nn.ReLU(inplace=True), conv(3, 2, 1)]
    return nn.Sequential(*layers)


@pytest.mark.parametrize("norm", ["FrozenBN", "BN", "GN"])
@pytest.mark.parametrize("extent", [8, 0])
def test_state_dict_keys_are_the_sequential_ones_and_old_checkpoints_load(extent, norm):
    suffixes = {"FrozenBN": ["weight", "bias", "running_mean", "running_var"],
                "BN": ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"],
                "GN": ["weight", "bias"]}[norm]
    convs = [1] if extent == 0 else [0, 2, 4]
    expected = [k for i in convs for k in [f"{i}.weight"] + [f"{i}.norm.{s}" for s in suffixes]]
    gather = DepthwiseGather(C, extent, norm, global_kernel=7)
    assert list(gather.state_dict()) == expected
    old = old_sequential(C, extent, norm).double()
    randomise_norms(old, torch.Generator().manual_seed(3))
    gather.double().load_state_dict(old.state_dict(), strict=True)
    x = torch.randn(2, C, 15, 22, dtype=torch.float64)
    torch.testing.assert_close(gather.eval()(x), old.eval()(x), rtol=1e-12, atol=1e-12)
    ge = GatherExcite(C, variant="theta", extent=extent, norm=norm, fused="off")
    assert list(ge.state_dict()) == [f"gather.{k}" for k in expected]


def test_frozen_affine_is_the_norm_when_it_is_fixed_and_none_otherwise():
    gen = torch.Generator().manual_seed(4)
    y = torch.randn(2, 4, 5, 3, generator=gen, dtype=torch.float64)
    fixed = [FrozenBatchNorm2d(4), nn.BatchNorm2d(4).eval(), nn.BatchNorm2d(4, affine=False).eval()]
    for norm in fixed:
        norm.double()
        norm.running_mean.copy_(torch.randn(4, generator=gen, dtype=torch.float64))
        norm.running_var.copy_(torch.rand(4, generator=gen, dtype=torch.float64) + 0.5)
        if norm.weight is not None:
            norm.weight.data.copy_(torch.rand(4, generator=gen, dtype=torch.float64) + 0.5)
            norm.bias.data.copy_(torch.randn(4, generator=gen, dtype=torch.float64))
        scale, shift = frozen_affine(norm)
        torch.testing.assert_close(y * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1), norm(y),
                                   rtol=1e-12, atol=1e-12)
    varying = [nn.BatchNorm2d(4).train(), nn.BatchNorm2d(4, track_running_stats=False).eval(), nn.GroupNorm(2, 4)]
    assert all(frozen_affine(norm) is None for norm in varying)
