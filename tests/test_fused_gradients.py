"""ge_detectron.fused_gradients on a small GE network: the fused operator passes the rule, a wrong backward
kernel (monkeypatched) fails it on the parameters it reaches, a model without GE is refused."""
import pytest
import torch
from torch import nn

from ge_detectron.fused_gradients import compare_fused_to_reference, relative_error
from ge_detectron.layers import GatherExcite
from ge_detectron.ops import excite_cpp


class TwoGEBlocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.ge1 = GatherExcite(16, "theta", extent=4, norm="", fused="auto")
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.ge2 = GatherExcite(16, "theta_plus", extent=2, norm="", reduction=4, fused="off")

    def forward(self, x):
        x = self.conv1(x)
        x = self.ge1(x, x.relu())
        return {"out": self.ge2(self.conv2(x)), "mid": x}


def model_and_images():
    torch.manual_seed(0)
    return TwoGEBlocks(), torch.randn(2, 3, 16, 20)


def test_relative_error_against_hand_computed_values():
    assert relative_error(torch.tensor([3.0, 4.0]), torch.tensor([3.0, 4.0])) == 0
    assert relative_error(torch.tensor([3.0, 5.0]), torch.tensor([3.0, 4.0])) == pytest.approx(1 / 5)
    assert relative_error(torch.tensor([1.0, 0.0]), torch.zeros(2)) == 1  # the difference's norm at a zero reference
    assert relative_error(torch.tensor([float("nan"), 0.0]), torch.ones(2)) == float("inf")


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_the_fused_operator_passes_and_the_model_is_left_as_it_was(dtype):
    model, images = model_and_images()
    result = compare_fused_to_reference(model, images, dtype)
    assert result["ok"] and result["modules"] == 2 and result["missing"] == []
    assert result["parameters"] == len([p for p in model.parameters()])  # every parameter compared
    assert (model.ge1.fused, model.ge2.fused) == ("auto", "off") and all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_a_wrong_backward_kernel_fails_on_the_parameters_below_it(monkeypatch, dtype):
    backward = excite_cpp.backward

    def doubled_grad_g(*args):
        grad_x, grad_g, grad_shortcut = backward(*args)
        return grad_x, 2 * grad_g, grad_shortcut

    monkeypatch.setattr(excite_cpp, "backward", doubled_grad_g)
    model, images = model_and_images()
    result = compare_fused_to_reference(model, images, dtype)
    assert not result["ok"]
    name, fused, reference = result["worst"][0]
    assert name.startswith(("ge1.", "ge2.", "conv1.")) and fused > result["ratio"] * reference + result["floor"]
    if dtype is None:  # float32: the reference is right, the fused backward is not
        assert result["max_error_reference"] < 1e-5 and fused > 0.1


def test_a_model_without_gather_excite_is_refused():
    with pytest.raises(ValueError, match="no GatherExcite"):
        compare_fused_to_reference(nn.Conv2d(3, 3, 1), torch.randn(1, 3, 4, 4))
