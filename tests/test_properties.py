"""Property-based tests (hypothesis): the GE module over random shapes, extents, variants, dtypes and
layouts against an independent reference of the excite, and the fused operators against
``excite_reference`` / ``excite_residual_reference``, forward and backward.

The reference gate follows GE_SPEC.md literally: output row i reads gate row min(floor(i * (h / H)), h - 1),
the scale and the product in float32 as F.interpolate computes them (columns alike). Tensors come from a
drawn seed (normal values, so a ReLU boundary is hit with probability ~0); hypothesis draws the rest.
"""
import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ge_detectron import ops
from ge_detectron.layers import GatherExcite, excite_reference, excite_residual_reference

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUSED = ["off", "on"] if ops.native_kernels("cpu") else ["off"]
LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
EXTENTS = st.sampled_from([0, 2, 4, 8, 16, 32])


def source_index(out_size, in_size):
    """GE_SPEC.md's nearest rule, in float32: min(floor(i * (in / out)), in - 1) for i < out."""
    scale = np.float32(in_size) / np.float32(out_size)
    index = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
    return torch.from_numpy(np.minimum(index, in_size - 1))


def spec_gate(g, H, W):
    """sigmoid(up(g)) in float32 (float64 for float64 g), up by explicit indexing."""
    rows, cols = source_index(H, g.shape[2]), source_index(W, g.shape[3])
    gate = torch.sigmoid(g.to(torch.float64 if g.dtype == torch.float64 else torch.float32))
    return gate[:, :, rows][:, :, :, cols]


def spec_output(x, g, shortcut):
    """x * sigmoid(up(g)) (then relu(. + shortcut)) computed in float32 / float64, rounded to x's dtype once."""
    gate = spec_gate(g, *x.shape[2:])
    out = x.to(gate.dtype) * gate
    if shortcut is not None:
        out = torch.relu(out + shortcut.to(gate.dtype))
    return out.to(x.dtype)


def window_means(x, e):
    """avg_pool2d(kernel 2e-1, stride e, padding e-1, count_include_pad=False), window by window, in float64."""
    x = x.double()
    H, W = x.shape[2:]
    out = torch.empty(*x.shape[:2], -(-H // e), -(-W // e), dtype=torch.float64)
    for i in range(out.shape[2]):
        for j in range(out.shape[3]):
            out[:, :, i, j] = x[:, :, max(i * e - e + 1, 0):i * e + e, max(j * e - e + 1, 0):j * e + e].mean(dim=(2, 3))
    return out


def tolerance(dtype, *tensors):
    """Forward tolerance: a few ulps of the largest magnitude involved (sums may cancel)."""
    eps = torch.finfo(dtype).eps
    scale = max(float(t.detach().abs().max()) for t in tensors) if tensors else 1.0
    return dict(rtol=4 * eps, atol=4 * eps * max(scale, 1.0))


def tensor(gen, shape, dtype, layout, scale=2.0):
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype).contiguous(
        memory_format=LAYOUTS[layout])


@st.composite
def module_cases(draw):
    variant = draw(st.sampled_from(["theta_minus", "theta", "theta_plus", "se"]))
    return dict(variant=variant, extent=draw(EXTENTS), N=draw(st.integers(1, 2)), C=draw(st.integers(1, 8)),
                H=draw(st.integers(1, 40)), W=draw(st.integers(1, 40)), reduction=draw(st.integers(1, 4)),
                dtype=draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16])),
                layout=draw(st.sampled_from(list(LAYOUTS))), shortcut_layout=draw(st.sampled_from(list(LAYOUTS))),
                residual=draw(st.booleans()), fused=draw(st.sampled_from(FUSED)), seed=draw(st.integers(0, 2**31)))


@SETTINGS
@given(module_cases())
def test_module_matches_the_spec(case):
    torch.manual_seed(case["seed"])
    ge = GatherExcite(case["C"], variant=case["variant"], extent=case["extent"], norm="BN",
                      reduction=case["reduction"], global_kernel=3, fused=case["fused"]).to(case["dtype"]).eval()
    gen = torch.Generator().manual_seed(case["seed"])
    N, C, H, W, dtype = case["N"], case["C"], case["H"], case["W"], case["dtype"]
    x = tensor(gen, (N, C, H, W), dtype, case["layout"])
    shortcut = tensor(gen, (N, C, H, W), dtype, case["shortcut_layout"]) if case["residual"] else None
    with torch.no_grad():
        g = ge.gather_logits(x)
        out = ge(x, shortcut)
    extent = 0 if case["variant"] == "se" else case["extent"]
    cells = (1, 1) if extent == 0 else (-(-H // extent), -(-W // extent))
    assert g.shape == (N, C, *cells) and out.shape == x.shape and out.dtype == dtype
    if case["variant"] == "theta_minus":  # the parameter-free gather, independently
        expected_g = x.double().mean(dim=(2, 3), keepdim=True) if extent == 0 else window_means(x, extent)
        torch.testing.assert_close(g.double(), expected_g, **tolerance(dtype, x))
    others = () if shortcut is None else (shortcut,)
    torch.testing.assert_close(out, spec_output(x, g, shortcut), **tolerance(dtype, x, *others))
    if shortcut is None:  # the gate lies in (0, 1) (rounding may reach 1 in reduced precision)
        assert torch.all(out.double().abs() <= x.double().abs())


OP_DTYPES = [(torch.float32, torch.float32), (torch.float64, torch.float64), (torch.bfloat16, torch.bfloat16),
             (torch.float16, torch.float16), (torch.bfloat16, torch.float32), (torch.float16, torch.float32)]


@st.composite
def op_cases(draw):
    return dict(N=draw(st.integers(1, 2)), C=draw(st.integers(1, 8)), H=draw(st.integers(1, 40)),
                W=draw(st.integers(1, 40)), extent=draw(EXTENTS), dtypes=draw(st.sampled_from(OP_DTYPES)),
                layouts=[draw(st.sampled_from(list(LAYOUTS))) for _ in range(4)], residual=draw(st.booleans()),
                seed=draw(st.integers(0, 2**31)))


def op_inputs(case):
    N, C, H, W, e = case["N"], case["C"], case["H"], case["W"], case["extent"]
    h, w = (1, 1) if e == 0 else (-(-H // e), -(-W // e))
    (dtype, gdtype), layouts = case["dtypes"], case["layouts"]
    gen = torch.Generator().manual_seed(case["seed"])
    x, shortcut, grad = (tensor(gen, (N, C, H, W), dtype, layout) for layout in (layouts[0], layouts[2], layouts[3]))
    return x, tensor(gen, (N, C, h, w), gdtype, layouts[1], scale=3.0), shortcut, grad


def cell_sums(t, h, w):
    """Sum of t (N, C, H, W) over the pixels that read each gate cell (N, C, h, w), by the spec's rule."""
    N, C, H, W = t.shape
    rows = torch.zeros(N, C, h, W, dtype=t.dtype).index_add_(2, source_index(H, h), t)
    return torch.zeros(N, C, h, w, dtype=t.dtype).index_add_(3, source_index(W, w), rows)


@SETTINGS
@given(op_cases())
def test_fused_ops_match_the_reference_forward_and_backward(case):
    x, g, shortcut, grad = op_inputs(case)
    residual = case["residual"]
    leaves = [t.detach().requires_grad_() for t in (x, g, shortcut)]
    out = ops.excite_residual(*leaves) if residual else ops.excite(*leaves[:2])
    reference = excite_residual_reference(x, g, shortcut) if residual else excite_reference(x, g)
    assert out.dtype == x.dtype and out.shape == x.shape
    torch.testing.assert_close(out, reference, **tolerance(x.dtype, reference, *([shortcut] if residual else [])))
    # Twice the unit roundoff of the reference run in x's dtype (it rounds the gate, the product and the sum).
    assert (out.double() - spec_output(x, g, shortcut if residual else None).double()).abs().max() <= (
        2 * torch.finfo(x.dtype).eps * (x.double().abs() + (shortcut.double().abs() if residual else 0)).max() + 1e-300)

    out.backward(grad)
    exact = [t.detach().double().requires_grad_() for t in (x, g, shortcut)]
    (excite_residual_reference(*exact) if residual else excite_reference(*exact[:2])).backward(grad.double())
    # Bounds from the float64 reference: x and shortcut gradients are one product each; g's are sums over
    # up to 40 x 40 pixels of grad * x * gate * (1 - gate), and 1 - gate has an absolute (not relative) error
    # of a unit roundoff in any working precision (PyTorch's float32 sigmoid backward too), so their error
    # scales with the sum of |grad * x * gate| over the cell.
    gate = spec_gate(g.double(), *x.shape[2:])
    mask = (exact[0].detach() * gate + exact[2].detach() > 0).double() if residual else 1.0
    g_bound = cell_sums((grad.double() * mask * x.double() * gate).abs(), *g.shape[2:])
    for name, leaf, ref, bound in (("x", leaves[0], exact[0], None), ("g", leaves[1], exact[1], g_bound),
                                   ("shortcut", leaves[2], exact[2], None)):
        if name == "shortcut" and not residual:
            assert leaf.grad is None
            continue
        assert leaf.grad is not None and leaf.grad.dtype == leaf.dtype and leaf.grad.shape == leaf.shape
        eps, tiny = torch.finfo(leaf.dtype).eps, torch.finfo(leaf.dtype).tiny  # tiny * eps: subnormal spacing
        allowed = 4 * eps * ((ref.grad.abs() if bound is None else bound + ref.grad.abs()) + tiny)
        error = (leaf.grad.double() - ref.grad).abs()
        assert torch.all(error <= allowed), f"grad_{name}: max error {error.max():.3g}, {case}"
