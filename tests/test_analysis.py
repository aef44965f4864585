"""ge_detectron.analysis and tools/analyze_features.py against values computed in this file: the class
selectivity index and the pruning mask worked by hand, the recorded activities and gates against direct
computations, pruning by gate order against hand-built references (ratio 0: the model itself; ratio 1: the
block's output replaced by relu(shortcut) computed in the test; "asc" / "des" on a four-channel case worked
by hand), and the analysis.json of ``analyze_features`` + ``save_results`` and of the tool against every
number recomputed here with plain torch (block outputs run block by block, gates from the model's gather,
top-1 with the pruned channels' gates set to 0 by a hook written here)."""
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

from ge_detectron.analysis import (ClassMeans, analyze_features, class_selectivity, prune_by_gate, pruned_channels,
                                   record_block_outputs, record_gates, remove_residual_branch, save_results)
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


def test_pruned_channels_hand_worked():
    gates = torch.tensor([[0.3, 0.1, 0.9, 0.5, 0.7],
                          [0.6, 0.6, 0.2, 0.6, 0.8]])  # a three-way tie in the second image
    # ratio 0.4 of 5 channels: 2 per image, ties taken lower index first
    asc = [[True, True, False, False, False],   # 0.1 (channel 1), 0.3 (channel 0)
           [True, False, True, False, False]]   # 0.2 (channel 2), then the first 0.6 (channel 0)
    des = [[False, False, True, False, True],   # 0.9 (channel 2), 0.7 (channel 4)
           [True, False, False, False, True]]   # 0.8 (channel 4), then the first 0.6 (channel 0)
    assert pruned_channels(gates, 0.4, "asc").tolist() == asc
    assert pruned_channels(gates, 0.4, "des").tolist() == des
    # round(ratio * C): 0.5 of 5 rounds half to even, to 2; 0.8 of 5 is 4
    assert pruned_channels(gates, 0.5, "asc").tolist() == asc
    assert pruned_channels(gates, 0.8, "des").tolist() == [[True, False, True, True, True], [True, True, False, True, True]]
    assert not pruned_channels(gates, 0.0, "asc").any() and pruned_channels(gates, 1.0, "des").all()
    with pytest.raises(ValueError, match="order='up' is invalid"):
        pruned_channels(gates, 0.5, "up")
    with pytest.raises(ValueError, match="ratio=1.5 is invalid"):
        pruned_channels(gates, 1.5, "asc")


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
def block_outputs_by_hand(model, x):
    """``{"res2.0": (N, C, H, W) output, ...}``: every block's output, running the network block by block."""
    resnet, outputs = model.resnet, {}
    x = resnet.stem((x - model.pixel_mean) / model.pixel_std)
    for name in resnet.stage_names:
        for i, block in enumerate(getattr(resnet, name)):
            x = outputs[f"{name}.{i}"] = block(x)
    return outputs


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
    by_hand = block_outputs_by_hand(model, x)
    for name in ("res4.0", "res4.3"):
        torch.testing.assert_close(outputs[name], by_hand[name].mean(dim=(2, 3)))
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


# --- analysis.json against values computed here -------------------------------------------------------------

LABELS = torch.tensor([0, 1, 2] * 4)


@torch.no_grad()
def gates_by_hand(model, x):
    """``{"res2.0": (N, C) gates, ...}`` of every GatherExcite (GE-θ, global): the sigmoid of the model's gather
    applied to the module's input, captured by a pre-hook written here."""
    inputs = {}
    handles = [module.register_forward_pre_hook(lambda m, args, n=name: inputs.update({n: args[0]}))
               for name, module in model.named_modules() if isinstance(module, GatherExcite)]
    model(x)
    for handle in handles:
        handle.remove()
    gates = {}
    for name, x_in in inputs.items():
        ge = model.get_submodule(name)
        logits = ge.gather(x_in)
        assert ge.mlp is None and logits.shape[2:] == (1, 1)  # GE-θ, global: the gather gives the logits
        gates[name.removeprefix("resnet.").removesuffix(".ge")] = torch.sigmoid(logits).flatten(1).double()
    return gates


@torch.no_grad()
def top1_by_hand(model, x, labels, hooks=()):
    """Top-1 (%) of ``model`` on ``x`` with the forward ``hooks`` ((module, hook), written here) in place."""
    handles = [module.register_forward_hook(hook) for module, hook in hooks]
    try:
        predicted = model(x).argmax(dim=1)
    finally:
        for handle in handles:
            handle.remove()
    return 100.0 * (predicted == labels).sum().item() / len(labels)


def branch_removed(block, inputs, output):
    x = inputs[0]
    return F.relu(block.shortcut(x) if block.shortcut is not None else x)


def pruned_by_hand(ratio, order):
    """A forward hook for a GE-θ (global) module in a bottleneck: relu(x * gate + shortcut) with the gates of
    the round(ratio * C) channels of smallest ("asc") or largest ("des") gate of each image set to 0, ties
    taken lower index first (ranked in plain Python)."""
    def hook(ge, inputs, output):
        x, shortcut = inputs
        gates = torch.sigmoid(ge.gather(x))
        keep = torch.ones_like(gates)
        for n, row in enumerate(gates.flatten(1).tolist()):
            ranked = sorted(range(len(row)), key=lambda c: (row[c] if order == "asc" else -row[c], c))
            keep[n, ranked[:round(ratio * len(row))]] = 0
        return F.relu(x * gates * keep + shortcut)
    return hook


def selectivity_by_hand(outputs, labels, classes):
    """The selectivity index of every unit of (N, C, H, W) activities: spatial, then class means in float64,
    then (mu_max - mu_rest) / (mu_max + mu_rest), 0 where all means are 0."""
    activity = outputs.double().mean(dim=(2, 3))
    means = torch.stack([activity[labels == c].mean(dim=0) for c in classes])
    index = []
    for unit in means.T.tolist():
        top = max(unit)
        rest = (sum(unit) - top) / (len(unit) - 1)
        index.append(0.0 if top + rest == 0 else (top - rest) / (top + rest))
    return index


def binned(values, bins):
    """Counts of ``values`` in ``bins`` equal bins on [0, 1] (1 in the last), as a list of floats."""
    return torch.bincount((values * bins).long().clamp(0, bins - 1), minlength=bins).double().tolist()


def assert_histogram_close(counts, values, bins, eps=1e-5):
    """``counts`` are those of ``values`` but for values within ``eps`` of a bin edge (float32 rounding in another
    process or batch size): their cumulative sums lie between those of ``values + eps`` and ``values - eps``."""
    cumulative = torch.tensor(counts).cumsum(0)
    assert (torch.tensor(binned(values + eps, bins)).cumsum(0) <= cumulative).all(), counts
    assert (cumulative <= torch.tensor(binned(values - eps, bins)).cumsum(0)).all(), counts


def expected_results(model, compare, x, labels, class_names, blocks, pruned, ratios, bins, gate_classes):
    """The analyses of res4 as analysis.json lays them out, every number computed with the helpers above."""
    classes = sorted(set(labels.tolist()))
    block, compare_block = model.get_submodule(f"resnet.{pruned}"), compare.get_submodule(f"resnet.{pruned}")
    top1, compare_top1 = top1_by_hand(model, x, labels), top1_by_hand(compare, x, labels)
    curve = {order: [top1_by_hand(model, x, labels, [(block.ge, pruned_by_hand(r, order))]) for r in ratios]
             for order in ("asc", "des")}
    selectivity = {}
    for who, classifier in (("model", model), ("compare", compare)):
        outputs = block_outputs_by_hand(classifier, x)
        selectivity[who] = {name: selectivity_by_hand(outputs[name], labels, classes) for name in blocks}
    gates, by_stage = gates_by_hand(model, x), {}
    for name in gates:
        by_stage.setdefault(name.split(".")[0], []).append(name)
    histograms, class_means = {}, {}
    for stage, names in by_stage.items():
        histograms[stage] = {"blocks": names, "counts": binned(torch.cat([gates[n].flatten() for n in names]), bins)}
        last = gates[names[-1]]
        per_class = torch.stack([last[labels == c].mean(dim=0) for c in classes])
        class_means[stage] = {"block": names[-1], "all_classes": per_class.mean(dim=0).tolist(),
                              "per_class": {class_names[c]: per_class[i].tolist()
                                            for i, c in enumerate(classes[:gate_classes])}}
    removed = top1_by_hand(compare, x, labels, [(compare_block, branch_removed)])
    return {"classes": class_names, "stage": "res4", "top1": {"model": top1, "compare": compare_top1},
            "selectivity": selectivity,
            "pruning": {pruned: {"ratios": list(ratios), **curve, "compare": {"ratios": [0.0, 1.0],
                                                                            "top1": [compare_top1, removed]}}},
            "gates": {"bin_edges": [i / bins for i in range(bins + 1)], "histograms": histograms,
                      "class_means": class_means}}


def assert_matches(actual, expected, where="analysis.json"):
    """``actual`` has ``expected``'s keys (in order), lengths and values; numbers to the 6 significant digits
    analysis.json keeps (and float32 rounding: 1e-5 absolute on values in [0, 1])."""
    if isinstance(expected, dict):
        assert list(actual) == list(expected), where
        for key, value in expected.items():
            assert_matches(actual[key], value, f"{where}[{key!r}]")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), where
        for i, (got, want) in enumerate(zip(actual, expected)):
            assert_matches(got, want, f"{where}[{i}]")
    elif isinstance(expected, float):
        assert got_close(actual, expected), f"{where}: {actual} != {expected}"
    else:
        assert actual == expected, where


def got_close(actual, expected):
    return actual == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_analyze_features_json_against_values_computed_here(tmp_path):
    torch.manual_seed(0)
    _, model = tiny_classifier("theta")
    _, compare = tiny_classifier("none")
    x, names, log = images(12), ["apple", "boat", "cat"], []
    loader = [(x[:8], LABELS[:8]), (x[8:], LABELS[8:])]
    results = analyze_features(model, loader, names, compare=compare, stage="res4", blocks=[0, 5],
                               prune_ratios=(0.0, 0.5, 1.0), bins=20, gate_classes=2, log=log.append)
    paths = save_results(results, str(tmp_path))
    assert [os.path.relpath(p, tmp_path) for p in paths] == ["analysis.json", "selectivity.png", "pruning.png",
                                                              "gates.png"]
    expected = expected_results(model, compare, x, LABELS, names, ["res4.0", "res4.5"], "res4.5", [0.0, 0.5, 1.0],
                                bins=20, gate_classes=2)
    curve = expected["pruning"]["res4.5"]
    # on these images top-1 tells the orders at ratio 0.5 apart, and ratio 0 from ratio 1
    assert curve["asc"][1] != curve["des"][1] and curve["asc"][0] != curve["asc"][2]
    assert_matches(json.load(open(paths[0])), expected)
    # the progress log: the end of each of the six passes (the "des" ratio 1 is the "asc" one), ETA 0 at 100%
    assert [line.split(": batch 2/2, ")[0] for line in log if ": batch 2/2, " in line] == [
        "statistics", "statistics of the comparison", "pruning res4.5 asc 0.5", "pruning res4.5 asc 1",
        "pruning res4.5 des 0.5", "comparison without res4.5's residual branch"]
    assert "100% of all" in log[-1] and log[-1].endswith("ETA 0:00:00")


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
    ResNet in tools/pretrain_net.py's format, and a config file for each; the models themselves."""
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
    paths, models = {}, {}
    for variant in ("theta", "none"):
        cfg, models[variant] = tiny_classifier(variant)
        paths[variant] = str(root / f"{variant}.pth")
        torch.save({"model": ClassificationTask(models[variant]).state_dict()}, paths[variant])
        with open(root / f"{variant}.yaml", "w") as f:
            f.write(cfg.dump())
    return root, paths, models


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
    root, paths, _ = tiny_setup
    error = run_tool(monkeypatch, "--config-file", root / f"{config}.yaml", *parts, "--data", root / data, "--output",
                     tmp_path, "MODEL.WEIGHTS", paths.get(weights, root / f"{weights}.pth"))
    assert isinstance(error, str) and error.startswith("analyze_features.py: error: ") and "\n" not in error, error
    assert message in error, error


def test_image_folder_loader(tiny_setup, tmp_path):
    from ge_detectron.analysis import AnalysisError, image_folder_loader

    root, _, _ = tiny_setup
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
    root, paths, models = tiny_setup
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
    # the images as the models see them: 32x32 RGB PNGs (resize and crop to 32 keep them), class folders in order
    files = sorted((root / "data").glob("*/*.png"))
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(f).convert("RGB"))).permute(2, 0, 1) for f in files])
    labels = torch.tensor([["apple", "boat", "cat"].index(f.parent.name) for f in files])
    expected = expected_results(models["theta"], models["none"], x.float(), labels, ["apple", "boat", "cat"],
                                ["res4.0", "res4.5"], "res4.5", [0.0, 0.5, 1.0], bins=50, gate_classes=8)
    # the tool runs batches of 4 in one thread: a gate on a bin edge may fall into the next bin
    gates = gates_by_hand(models["theta"], x.float())
    for stage, histogram in results["gates"]["histograms"].items():
        assert_histogram_close(histogram["counts"], torch.cat([gates[n].flatten() for n in histogram["blocks"]]), 50)
        expected["gates"]["histograms"][stage]["counts"] = histogram["counts"]  # checked just above
    assert_matches(results, {**expected, "labels": {"model": "GE-theta global ResNet-50", "compare": "ResNet-50"}})
    assert results["classes"] == ["apple", "boat", "cat"]
    for who in ("model", "compare"):
        assert list(results["selectivity"][who]) == ["res4.0", "res4.5"]
        for values in results["selectivity"][who].values():
            assert len(values) == 64 and all(0 <= v <= 1 for v in values)
    curve = results["pruning"]["res4.5"]
    assert curve["ratios"] == [0, 0.5, 1]
    # ratio 0 is the model, ratio 1 its block without the residual branch whatever the order: as computed here
    assert curve["asc"][0] == curve["des"][0] == results["top1"]["model"]
    assert got_close(results["top1"]["model"], expected["top1"]["model"])
    assert curve["asc"][2] == curve["des"][2]
    assert got_close(curve["asc"][2], expected["pruning"]["res4.5"]["asc"][2])
    assert curve["compare"]["top1"][0] == results["top1"]["compare"]
    assert got_close(results["top1"]["compare"], expected["top1"]["compare"])
    assert all(abs(v * 6 / 100 - round(v * 6 / 100)) < 1e-4 for v in curve["asc"] + curve["des"])  # of 6 images
    gates = results["gates"]
    assert list(gates["histograms"]) == ["res2", "res3", "res4", "res5"]
    # res4: 6 blocks of 64 channels, 6 images: one count per (block, image, channel)
    assert round(sum(gates["histograms"]["res4"]["counts"])) == 6 * 64 * 6
    assert gates["class_means"]["res4"]["block"] == "res4.5"
    assert list(gates["class_means"]["res4"]["per_class"]) == ["apple", "boat", "cat"]
