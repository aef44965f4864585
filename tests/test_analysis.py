"""ge_detectron.analysis and tools/analyze_features.py: the class selectivity index against hand-computed
values, the recorded activities and gates against direct computations, pruning by gate order against
hand-built references (ratio 0: the model itself; ratio 1: the block's output replaced by relu(shortcut)
computed in the test; "asc" / "des" on a four-channel case worked by hand), and the tool end to end."""
import json
import os
import runpy
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ge_detectron.analysis import (ClassMeans, class_selectivity, prune_by_gate, record_block_outputs,
                                   record_gates, remove_residual_branch)
from ge_detectron.layers import GatherExcite
from ge_detectron.modeling.classifier import build_ge_classifier
from ge_detectron.pretrain import ClassificationTask, get_pretrain_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(REPO, "tools", "analyze_features.py")
DEMO_CONFIG = os.path.join(REPO, "configs", "pretrain", "demo_shapes.yaml")
# A narrow ResNet-50 on 32x32 images of 3 classes: res4 has 6 blocks of 64 channels.
TINY = ["MODEL.RESNETS.STEM_OUT_CHANNELS", 8, "MODEL.RESNETS.RES2_OUT_CHANNELS", 16, "MODEL.RESNETS.WIDTH_PER_GROUP", 4,
        "MODEL.GE.NUM_CLASSES", 3, "MODEL.GE.GLOBAL_INPUT_SIZE", 32, "PRETRAIN.CROP_SIZE", 32,
        "PRETRAIN.RESIZE_SIZE", 32, "PRETRAIN.GENERATE_DEMO_DATA", False, "DATALOADER.NUM_WORKERS", 0]


def test_class_selectivity_hand_computed():
    # units: active for class 1 only; the same for every class; never active; worked example; worked example
    means = torch.tensor([[0.0, 2.0, 0.0, 1.0, 4.0],
                          [5.0, 2.0, 0.0, 2.0, 0.0],
                          [0.0, 2.0, 0.0, 3.0, 2.0]])
    # unit 3: mu_max 3, mu_rest (1 + 2) / 2 = 1.5 -> 1.5 / 4.5 = 1/3
    # unit 4: mu_max 4, mu_rest (0 + 2) / 2 = 1   -> 3 / 5 = 0.6
    expected = torch.tensor([1.0, 0.0, 0.0, 1 / 3, 0.6], dtype=torch.float64)
    torch.testing.assert_close(class_selectivity(means.double()), expected, rtol=0, atol=1e-15)
    torch.testing.assert_close(class_selectivity(means), expected.float(), rtol=0, atol=1e-7)


def test_class_selectivity_rejects_bad_input():
    with pytest.raises(ValueError, match="non-negative"):
        class_selectivity(torch.tensor([[1.0], [-1.0]]))
    with pytest.raises(ValueError, match="classes >= 2"):
        class_selectivity(torch.ones(1, 4))


def test_class_means_hand_computed():
    means = ClassMeans(4)
    means.add(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([2, 0]))
    means.add(torch.tensor([[5.0, 6.0]]), torch.tensor([2]))
    assert means.classes().tolist() == [0, 2]  # class 1 and 3 never seen: left out
    torch.testing.assert_close(means.means(), torch.tensor([[3.0, 4.0], [3.0, 4.0]], dtype=torch.float64))


def tiny_classifier(variant="theta", extent=0, fused="off"):
    cfg = get_pretrain_cfg(DEMO_CONFIG, TINY + ["MODEL.GE.VARIANT", variant, "MODEL.GE.EXTENT", extent,
                                                "MODEL.GE.FUSED", fused])
    model = build_ge_classifier(cfg).eval()
    with torch.no_grad():  # non-trivial norm statistics, so that every block's branch matters
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return cfg, model


def images(n=4, size=32):
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(1)).float()


@torch.no_grad()
def stage_outputs_by_hand(model, x, stage, index):
    """The output of block ``index`` of ``stage``, running the network block by block."""
    resnet = model.resnet
    x = resnet.stem((x - model.pixel_mean) / model.pixel_std)
    for name in resnet.stage_names:
        for i, block in enumerate(getattr(resnet, name)):
            x = block(x)
            if name == stage and i == index:
                return x


def test_record_block_outputs_and_gates_match_direct_computation():
    _, model = tiny_classifier("theta_minus")
    x = images()
    blocks = {"res4.0": model.resnet.res4[0], "res4.3": model.resnet.res4[3]}
    ge = {"res3.1": model.resnet.res3[1].ge}
    captured = {}
    hook = model.resnet.res3[1].ge.register_forward_pre_hook(lambda m, inputs: captured.update(x=inputs[0]))
    with torch.no_grad(), record_block_outputs(blocks) as outputs, record_gates(ge) as gates:
        model(x)
    hook.remove()
    for name, index in (("res4.0", 0), ("res4.3", 3)):
        torch.testing.assert_close(outputs[name], stage_outputs_by_hand(model, x, "res4", index).mean(dim=(2, 3)))
    assert (outputs["res4.0"] >= 0).all()  # after the block's ReLU
    # theta_minus, global: the gate of a channel is the sigmoid of its spatial mean
    torch.testing.assert_close(gates["res3.1"], torch.sigmoid(captured["x"].mean(dim=(2, 3))))


@pytest.mark.parametrize("variant,extent,fused", [("theta", 0, "off"), ("theta", 0, "auto"), ("theta_plus", 0, "off"),
                                                  ("theta_minus", 2, "off"), ("se", 0, "auto")])
@pytest.mark.parametrize("block_index", [0, 5])  # res4.0 has a projection shortcut, res4.5 the identity
def test_pruning_ratio_0_is_the_model_and_ratio_1_removes_the_residual_branch(variant, extent, fused, block_index):
    _, model = tiny_classifier(variant, extent, fused)
    block = model.resnet.res4[block_index]
    x = images()
    with torch.no_grad():
        unpruned = model(x)
        for order in ("asc", "des"):
            with prune_by_gate(block.ge, 0.0, order):
                assert torch.equal(model(x), unpruned)
        # the reference: the block's output replaced by relu(shortcut(input)), by hand
        hook = block.register_forward_hook(
            lambda m, inputs, out: F.relu(m.shortcut(inputs[0]) if m.shortcut is not None else inputs[0]))
        without_branch = model(x)
        hook.remove()
        assert not torch.allclose(without_branch, unpruned, atol=1e-3)  # the reference differs from the model
        for order in ("asc", "des"):
            with prune_by_gate(block.ge, 1.0, order):
                torch.testing.assert_close(model(x), without_branch, rtol=1e-5, atol=1e-5)
        with remove_residual_branch(block):
            torch.testing.assert_close(model(x), without_branch, rtol=0, atol=0)
        assert torch.equal(model(x), unpruned)  # the hooks are gone


@pytest.mark.parametrize("fused", ["off", "auto"])
def test_prune_order_asc_and_des_hand_worked(fused):
    ge = GatherExcite(4, variant="theta_minus", extent=0, fused=fused)  # gate = sigmoid(spatial mean)
    channel_means = torch.tensor([[0.5, -1.0, 2.0, 0.0],    # gates ranked: channel 1 < 3 < 0 < 2
                                  [-0.5, 1.0, -2.0, 3.0]])  # gates ranked: channel 2 < 0 < 1 < 3
    x = channel_means[:, :, None, None] + torch.tensor([[0.1, -0.1], [-0.1, 0.1]])  # spatial mean unchanged
    shortcut = torch.linspace(-1, 1, 2 * 4 * 2 * 2).reshape(2, 4, 2, 2)
    full = F.relu(x * torch.sigmoid(channel_means)[:, :, None, None] + shortcut)
    branch_removed = F.relu(shortcut)
    # ratio 0.5 zeroes two channels per image: the two smallest gates ("asc") or the two largest ("des")
    for order, pruned in (("asc", [[1, 3], [2, 0]]), ("des", [[2, 0], [3, 1]])):
        expected = full.clone()
        for n, channels in enumerate(pruned):
            expected[n, channels] = branch_removed[n, channels]
        with torch.no_grad(), prune_by_gate(ge, 0.5, order):
            torch.testing.assert_close(ge(x, shortcut), expected)
    # ratio 0.25 rounds to one channel: channel 1 / 2 ("asc"), channel 2 / 3 ("des")
    for order, pruned in (("asc", [1, 2]), ("des", [2, 3])):
        expected = full.clone()
        for n, channel in enumerate(pruned):
            expected[n, channel] = branch_removed[n, channel]
        with torch.no_grad(), prune_by_gate(ge, 0.25, order):
            torch.testing.assert_close(ge(x, shortcut), expected)


def test_load_classifier_takes_a_torchvision_state_dict(tmp_path):
    """A torchvision ResNet-50 state_dict (random weights, non-trivial norm statistics) loaded into the
    "none" classifier of configs/pretrain/r50_none.yaml gives torchvision's logits; into a GE config it
    does not fit (the GE parameters are missing)."""
    import torchvision

    from ge_detectron.analysis import AnalysisError, load_classifier

    reference = torchvision.models.resnet50().eval()
    with torch.no_grad():
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    path = str(tmp_path / "resnet50.pth")
    torch.save(reference.state_dict(), path)
    overrides = ["MODEL.WEIGHTS", path, "MODEL.DEVICE", "cpu", "MODEL.GE.FUSED", "off"]
    model = load_classifier(get_pretrain_cfg(os.path.join(REPO, "configs", "pretrain", "r50_none.yaml"), overrides))
    x = images(2, 64)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    with torch.no_grad():
        expected = reference((x / 255 - mean[:, None, None]) / std[:, None, None])
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(AnalysisError, match="missing"):
        load_classifier(get_pretrain_cfg(os.path.join(REPO, "configs", "pretrain", "r50_theta.yaml"), overrides))


# --- the tool -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    """A 3-class ImageFolder of 32x32 images (2 per class), checkpoints of a tiny GE-theta and a tiny plain
    ResNet in tools/pretrain_net.py's format, and a config file for each."""
    root = tmp_path_factory.mktemp("analysis")
    rng = np.random.default_rng(0)
    for c, name in enumerate(("apple", "boat", "cat")):
        os.makedirs(root / "data" / name)
        for i in range(2):
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) // (c + 1)
            Image.fromarray(pixels).save(root / "data" / name / f"{i}.png")
    os.makedirs(root / "no_classes")
    (root / "garbage.pth").write_bytes(b"not a checkpoint")
    torch.manual_seed(0)
    paths = {}
    for variant in ("theta", "none"):
        cfg, model = tiny_classifier(variant)
        paths[variant] = str(root / f"{variant}.pth")
        torch.save({"model": ClassificationTask(model).state_dict()}, paths[variant])
        with open(root / f"{variant}.yaml", "w") as f:
            f.write(cfg.dump())
    return root, paths


def run_tool(monkeypatch, *args):
    """tools/analyze_features.py in this process; returns the SystemExit message (None for success)."""
    monkeypatch.setattr(sys, "argv", [TOOL, *map(str, args)])
    try:
        runpy.run_path(TOOL, run_name="__main__")
    except SystemExit as e:
        return e.code
    return None


@pytest.mark.parametrize("config,weights,data,parts,message", [
    ("none", "none", "data", [], "no Gather-Excite blocks"),  # pruning and gates need GE
    ("theta", "theta", "no_classes", [], "no ImageFolder"),
    ("none", "theta", "data", ["--parts", "selectivity"], "do not fit the config's model"),
    ("theta", "nothing", "data", [], "no weights at"),
    ("theta", "garbage", "data", [], "cannot be read as a checkpoint"),
])
def test_tool_errors_are_one_line(tiny_setup, monkeypatch, tmp_path, config, weights, data, parts, message):
    root, paths = tiny_setup
    error = run_tool(monkeypatch, "--config-file", root / f"{config}.yaml", *parts, "--data", root / data, "--output",
                     tmp_path, "MODEL.WEIGHTS", paths.get(weights, root / f"{weights}.pth"))
    assert isinstance(error, str) and error.startswith("analyze_features.py: error: ") and "\n" not in error, error
    assert message in error, error


def test_image_folder_loader(tiny_setup, tmp_path):
    from ge_detectron.analysis import AnalysisError, image_folder_loader

    root, _ = tiny_setup
    loader, classes = image_folder_loader(str(root / "data"), torch.nn.Identity(), 4, 3, images_per_class=1)
    assert classes == ["apple", "boat", "cat"]
    assert [label for _, label in loader.dataset] == [0, 1, 2]  # the first image of each class
    with pytest.raises(AnalysisError, match="has 3 class folders but the model has 4 classes"):
        image_folder_loader(str(root / "data"), None, 4, 4)
    os.makedirs(tmp_path / "a")
    os.makedirs(tmp_path / "b")
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "0.png")
    with pytest.raises(AnalysisError, match="1 of the 2 class folders .* hold no image"):
        image_folder_loader(str(tmp_path), None, 4, 2)


@pytest.mark.slow
def test_tool_end_to_end(tiny_setup, tmp_path):
    root, paths = tiny_setup
    out = tmp_path / "out"
    cmd = [sys.executable, TOOL, "--config-file", str(root / "theta.yaml"), "--compare", str(root / "none.yaml"),
           "--compare-opts", "MODEL.WEIGHTS", paths["none"], "--data", str(root / "data"), "--output", str(out),
           "--stage", "res4", "--blocks", "0", "5", "--prune-ratios", "0", "0.5", "1", "--batch-size", "4",
           "MODEL.WEIGHTS", paths["theta"]]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ETA" in result.stdout
    for name in ("selectivity.png", "pruning.png", "gates.png"):
        with open(out / name, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    results = json.load(open(out / "analysis.json"))
    assert results["classes"] == ["apple", "boat", "cat"]
    for who in ("model", "compare"):
        assert list(results["selectivity"][who]) == ["res4.0", "res4.5"]
        for values in results["selectivity"][who].values():
            assert len(values) == 64 and all(0 <= v <= 1 for v in values)
    curve = results["pruning"]["res4.5"]
    assert curve["ratios"] == [0, 0.5, 1]
    assert curve["asc"][0] == curve["des"][0] == results["top1"]["model"]
    assert curve["asc"][2] == curve["des"][2]
    assert curve["compare"]["top1"][0] == results["top1"]["compare"]
    assert all(abs(v * 6 / 100 - round(v * 6 / 100)) < 1e-4 for v in curve["asc"] + curve["des"])  # of 6 images
    gates = results["gates"]
    assert list(gates["histograms"]) == ["res2", "res3", "res4", "res5"]
    # res4: 6 blocks of 64 channels, 6 images: one count per (block, image, channel)
    assert round(sum(gates["histograms"]["res4"]["counts"])) == 6 * 64 * 6
    assert gates["class_means"]["res4"]["block"] == "res4.5"
    assert list(gates["class_means"]["res4"]["per_class"]) == ["apple", "boat", "cat"]
