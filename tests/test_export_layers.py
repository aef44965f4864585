"""The GE layers whose work depends on the input size export with dynamic height and width: the global
gather's adaptive average pooling to a fixed grid (``GridAvgPool2d``: two window-averaging matrix products
under the ONNX exporter) and MindSpore's "same" padding, in ONNX Runtime and TorchScript at sizes other than
the traced one; the pooling's matrix form equals ``F.adaptive_avg_pool2d`` at every kind of size."""
import io

import onnx
import onnxruntime
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ge_detectron.layers import Conv2dSame, GatherExcite, max_pool2d_same
from ge_detectron.layers.gathers import GridAvgPool2d, adaptive_avg_pool2d_matmul

# (H, W, grid): odd sizes, sizes smaller than the grid, sizes the grid divides, the grid itself, 1 x 1, and
# res2-res5 map sizes of an 800 x 1216 image for MindSpore's 56 / 28 / 14 / 7 grids
POOL_SIZES = [(13, 9, 7), (3, 5, 7), (14, 21, 7), (7, 7, 7), (1, 1, 7), (23, 31, 56), (112, 56, 56),
              (57, 101, 28), (50, 76, 14), (25, 38, 7), (200, 304, 56)]


def random_map(height, width, channels=3, seed=0):
    return torch.randn(2, channels, height, width, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("height,width,grid", POOL_SIZES)
def test_matrix_pooling_equals_adaptive_avg_pool2d(height, width, grid):
    x = random_map(height, width)
    got = adaptive_avg_pool2d_matmul(x, grid)
    assert got.shape == (2, 3, grid, grid) and got.dtype == torch.float32
    torch.testing.assert_close(got, F.adaptive_avg_pool2d(x, grid), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got.double(), F.adaptive_avg_pool2d(x.double(), grid), rtol=0, atol=1e-6)


def test_grid_pool_is_pytorchs_kernel_outside_the_onnx_exporter():
    x = random_map(13, 9)
    assert torch.equal(GridAvgPool2d(7)(x), F.adaptive_avg_pool2d(x, 7))


def onnx_session(module, example, names=("x",)):
    """``module`` exported by the TorchScript-based ONNX exporter (export_model.py's) at ``example``'s size,
    height and width dynamic, in ONNX Runtime; the file holds standard operators only."""
    buffer = io.BytesIO()
    torch.onnx.export(module, example, buffer, dynamo=False, opset_version=17, input_names=list(names),
                      dynamic_axes={n: {2: "height", 3: "width"} for n in names})
    model = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(model, full_check=True)
    assert {n.domain for n in model.graph.node} <= {""}
    return onnxruntime.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])


def test_grid_pool_exports_to_onnx_and_holds_at_other_sizes():
    session = onnx_session(GridAvgPool2d(7), (random_map(20, 30),))
    for height, width, _ in POOL_SIZES[:6]:
        x = random_map(height, width, seed=1)
        got = torch.from_numpy(session.run(None, {"x": x.numpy()})[0])
        torch.testing.assert_close(got, F.adaptive_avg_pool2d(x, 7), rtol=1e-6, atol=1e-6)


class SameStem(nn.Module):
    """MindSpore's stem: a 7 x 7 stride-2 conv and a 3 x 3 stride-2 max-pool, both with "same" padding."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = Conv2dSame(3, 4, 7, stride=2)

    def forward(self, x):
        return max_pool2d_same(self.conv(x), 3, 2)


# odd and even sides: "same" pads (k - 1) // 2 ... k // 2 and differently at each parity
SAME_SIZES = [(9, 9), (10, 13), (33, 24), (5, 6), (64, 97)]


def test_same_padding_exports_to_onnx_and_torchscript_and_holds_at_other_sizes():
    stem = SameStem().eval()
    session = onnx_session(stem, (random_map(16, 16),))
    with torch.no_grad():
        traced = torch.jit.trace(stem, (random_map(16, 16),))
        for height, width in SAME_SIZES:
            x = random_map(height, width, seed=2)
            want = stem(x)  # test_mindspore_weights checks these paddings against amounts worked by hand
            assert want.shape[-2:] == (-(-height // 4), -(-width // 4))
            torch.testing.assert_close(traced(x), want, rtol=0, atol=0)
            got = torch.from_numpy(session.run(None, {"x": x.numpy()})[0])
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["theta", "theta_plus", "theta_minus"])
def test_mindspore_global_ge_exports_to_onnx_and_holds_at_other_sizes(variant):
    """MindSpore's global GE modules (56 x 56 grid, a dense "same" stride-2 reduction to the 28 x 28 kernel, θ⁺
    without ReLU and MLP biases), exported at one size, against eager PyTorch at others: larger and smaller
    than the grid, odd, and with the shortcut (the bottleneck tail)."""
    torch.manual_seed(0)
    module = GatherExcite(16, variant=variant, extent=0, norm="FrozenBN", reduction=4, global_kernel=56,
                          fused="off", max_kernel=28, mlp_bias=False, theta_plus_relu=False).eval()
    for p in module.parameters():
        nn.init.normal_(p, std=0.3)
    session = onnx_session(module, (random_map(40, 48, 16), random_map(40, 48, 16, seed=9)), ("x", "shortcut"))
    with torch.no_grad():
        for height, width in [(56, 56), (23, 31), (75, 101), (9, 4)]:
            x, shortcut = random_map(height, width, 16, seed=3), random_map(height, width, 16, seed=4)
            got = session.run(None, {"x": x.numpy(), "shortcut": shortcut.numpy()})[0]
            torch.testing.assert_close(torch.from_numpy(got), module(x, shortcut), rtol=1e-5, atol=1e-5)
