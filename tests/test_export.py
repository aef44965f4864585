"""Export (ge_detectron.export, tools/export_model.py): the fused excite operator leaves standard operators on
every export path; TorchScript and ONNX files of GE detectors (YAML and LazyConfig; C4, FPN, Mask R-CNN,
RetinaNet; a plain baseline) predict what the PyTorch predictor predicts on images of other sizes than the
traced one, through tools/predict.py --onnx too; so does every shipped detection config, in both formats; the
TorchScript file runs in a process without ge_detectron or detectron2; the GE backbone through torch.export and the dynamo ONNX exporter; one-line errors."""
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from detectron2.config import instantiate
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from PIL import Image
from helpers import TINY, TINY_C4, TINY_LSJ, narrow_fpn_heads
from torch.nn.modules.batchnorm import _BatchNorm

from ge_detectron import GatherExcite
from ge_detectron.config import get_ge_cfg
from ge_detectron.cli.predict import run_predict
from ge_detectron.detection.lazy import load_lazy_config
from ge_detectron.detection.images import model_input
from ge_detectron.detection.predictor import Predictor, build_predictor, task_adapter_of
from ge_detectron.export import FORMATS, ExportedPredictor, export_backbone, export_backbone_onnx, export_predictor
from ge_detectron.cli.export import run_export

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")
FASTER_FPN = os.path.join(CONFIGS, "demo", "faster_rcnn_ge_theta_e8_r50_fpn_shapes.yaml")
MASK_FPN = os.path.join(CONFIGS, "demo", "mask_rcnn_ge_theta_e8_r50_fpn_shapes.yaml")
FASTER_C4 = os.path.join(CONFIGS, "faster_rcnn_ge_r50.yaml")
RETINANET = os.path.join(CONFIGS, "retinanet_ge_r50_fpn.yaml")
PLAIN_FPN = os.path.join(CONFIGS, "faster_rcnn_r50_fpn.yaml")
LAZY_C4 = os.path.join(CONFIGS, "faster_rcnn_ge_r50.py")
# (height, width) of the test images; the export traces a 64 x 64 one, resized to 96 x 96
SIZES = [(64, 64), (100, 80), (50, 130), (170, 200)]


def yaml_opts(tiny_shapes):
    """The narrow R50 of tests/helpers.TINY on the tiny shapes, tested at 96-160 px, detections from score 0.05."""
    return [*TINY, "MODEL.DEVICE", "cpu", "MODEL.ROI_MASK_HEAD.CONV_DIM", "32", "MODEL.ROI_HEADS.NUM_CLASSES", "4",
            "MODEL.RETINANET.NUM_CLASSES", "4",
            "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "160", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.05",
            "MODEL.RETINANET.SCORE_THRESH_TEST", "0.05", "DATASETS.TRAIN", f"('{tiny_shapes['train']}',)",
            "DATASETS.TEST", f"('{tiny_shapes['val']}',)"]


def lazy_opts(tiny_shapes):
    """test_lazy_configs.TINY_C4 with BN, tested at 96-160 px, detections from score 0.05."""
    return [*TINY_C4, "train.device=cpu", "model.roi_heads.num_classes=4",
            "model.roi_heads.box_predictor.test_score_thresh=0.05",
            f"dataloader.train.dataset.names={tiny_shapes['train']}",
            f"dataloader.test.dataset.names={tiny_shapes['val']}",
            "dataloader.test.mapper.augmentations.0.short_edge_length=96",
            "dataloader.test.mapper.augmentations.0.max_size=160"]


def build(config_file, opts):
    if config_file.endswith(".py"):
        return instantiate(load_lazy_config(config_file, opts).model)
    return build_model(get_ge_cfg(config_file, opts))


def conditioned_weights(config_file, opts, path):
    """Random weights whose detections are well separated, saved to ``path``: each BN's statistics are
    those of its inputs on noise images (so features have unit scale instead of growing through the
    residual stages), and the classification layers are wider than detectron2's initialisation (std 0.01) so
    that the scores and the proposal ranking do not hinge on float rounding, with biases towards foreground. A model that detects nothing would compare nothing."""
    torch.manual_seed(0)
    model = calibrated(build(config_file, opts))
    torch.save({"model": model.state_dict()}, path)
    return path


def calibrated(model):
    """``model`` in eval mode with the weights ``conditioned_weights`` describes (in place)."""
    model.eval()
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # the cumulative average over the calls below
        m.train()
    with torch.no_grad():
        for seed in range(2):
            image = torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (3, 96, 128), dtype=np.uint8))
            model([{"image": image}])
    for name, p in model.named_parameters():
        if name.endswith("weight") and any(k in name for k in ("cls_score", "cls_logits", "objectness_logits")):
            torch.nn.init.normal_(p, std=1 / p[0].numel() ** 0.5)  # logits of about the features' scale
    for name, p in model.named_parameters():  # more foreground: the R-CNN background, RetinaNet's prior
        if name.endswith("cls_score.bias"):
            p.data[-1] = -2.0
        elif name.endswith("cls_logits.bias"):
            p.data.fill_(-2.0)
    return model.eval()


def with_weights(config_file, opts, path):
    key = "train.init_checkpoint=" if config_file.endswith(".py") else "MODEL.WEIGHTS"
    weights = conditioned_weights(config_file, opts, path)
    return [*opts, f"{key}{weights}"] if key.endswith("=") else [*opts, key, str(weights)]


@pytest.fixture(scope="module")
def images(tiny_shapes):
    """The shapes val images resized to the SIZES: real-looking content (BGR, HWC) at four sizes."""
    val_dir = MetadataCatalog.get(tiny_shapes["val"]).image_root
    sources = sorted(os.listdir(val_dir))
    out = []
    for i, (h, w) in enumerate(SIZES):
        rgb = np.asarray(Image.open(os.path.join(val_dir, sources[i % len(sources)])).convert("RGB").resize((w, h)))
        out.append(np.ascontiguousarray(rgb[:, :, ::-1]))
    return out


def matching(got_boxes, got_scores, got_classes, want_boxes, want_scores, want_classes, score_atol=1e-4):
    """For each wanted detection, the index of a distinct got one with its class, its box within 0.01 px and
    its score within ``score_atol`` (None where there is none): detections of equal scores come in either order."""
    close = ((got_classes[None, :] == want_classes[:, None])
             & ((got_boxes[None, :, :] - want_boxes[:, None, :]).abs().amax(dim=-1) <= 0.01)
             & ((got_scores[None, :] - want_scores[:, None]).abs() <= score_atol))
    free, order = set(range(len(got_scores))), []
    for row in close.tolist():
        j = next((j for j, ok in enumerate(row) if ok and j in free), None)
        free.discard(j)
        order.append(j)
    return order


def check_same_detections(got, want, score_atol=1e-4):
    """Exported vs PyTorch: the same detections (classes; boxes within 0.01 px, scores within ``score_atol``);
    masks equal but for pixels at the 0.5 threshold (at most 0.2% of the mask pixels)."""
    assert tuple(map(int, got.image_size)) == tuple(map(int, want.image_size)) and len(got) == len(want)
    order = matching(got.pred_boxes.tensor, got.scores, got.pred_classes, want.pred_boxes.tensor, want.scores,
                     want.pred_classes, score_atol)
    assert None not in order, f"{order.count(None)} of {len(want)} detections have no match"
    assert got.has("pred_masks") == want.has("pred_masks")
    if want.has("pred_masks"):
        masks = got.pred_masks[order]
        assert masks.shape == want.pred_masks.shape and want.pred_masks.any()
        assert (masks != want.pred_masks).float().mean() <= 2e-3


CASES = {  # name: (config, format)
    "faster_fpn_yaml_onnx": (FASTER_FPN, "onnx"),
    "faster_fpn_yaml_torchscript": (FASTER_FPN, "torchscript"),
    "faster_c4_yaml_onnx": (FASTER_C4, "onnx"),
    "mask_fpn_yaml_onnx": (MASK_FPN, "onnx"),
    "retinanet_yaml_onnx": (RETINANET, "onnx"),
    "retinanet_yaml_torchscript": (RETINANET, "torchscript"),
    "plain_fpn_yaml_onnx": (PLAIN_FPN, "onnx"),
    "faster_c4_lazy_onnx": (LAZY_C4, "onnx"),
    "faster_c4_lazy_torchscript": (LAZY_C4, "torchscript"),
}


@pytest.fixture(scope="module")
def exported(tiny_shapes, images, tmp_path_factory):
    """Per case (built on first use): the exported file, its eager Predictor, and the overrides used."""
    made = {}

    def get(case):
        if case not in made:
            config_file, fmt = CASES[case]
            folder = tmp_path_factory.mktemp(case)
            opts = lazy_opts(tiny_shapes) if config_file.endswith(".py") else yaml_opts(tiny_shapes)
            opts = with_weights(config_file, opts, folder / "weights.pth")
            sample = folder / "sample.png"
            Image.fromarray(images[0][:, :, ::-1]).save(sample)
            path = run_export(["--config-file", config_file, "--format", fmt, "--output", str(folder / "export"),
                               "--sample-image", str(sample), *opts])
            made[case] = path, build_predictor(config_file, opts), opts
        return made[case]

    return get


@pytest.mark.parametrize("case", CASES)
def test_exported_detector_predicts_as_pytorch_at_other_sizes(case, exported, images):
    path, eager, _ = exported(case)
    config_file, fmt = CASES[case]
    spec = json.load(open(path + ".json"))
    assert spec["format"] == fmt and spec["input"]["traced_size"] == [96, 96]
    assert spec["class_names"] == list(eager.metadata.thing_classes) and spec["score_threshold"] == 0.05
    assert spec["test_resize"][0]["args"]["max_size"] == 160
    ge = [m for m in eager.model.modules() if isinstance(m, GatherExcite)]
    assert (len(ge) > 0) == ("ge" in os.path.basename(config_file))
    deployed = ExportedPredictor(path)
    found = 0
    for image in images:  # 64 x 64 is the traced size; the others resize to other sizes
        want = eager(image)
        check_same_detections(deployed(image), want)
        found += len(want)
    assert found >= 10  # there is something to compare


def shipped_detection_configs():
    """configs/ relative paths of every shipped detection config: YAML and LazyConfig files, but for the YAML
    bases the others start from (Base-*.yaml: each is exported through the configs built on it), the ImageNet
    classifiers of configs/pretrain and the data parts of configs/common."""
    found = []
    for folder, _, files in os.walk(CONFIGS):
        for name in files:
            path = os.path.relpath(os.path.join(folder, name), CONFIGS)
            if (name.endswith((".yaml", ".py")) and not name.startswith("Base-")
                    and path.split(os.sep)[0] not in ("pretrain", "common")):
                found.append(path)
    return sorted(found)


def narrow_predictor(config_file, tiny_shapes):
    """The Predictor of ``config_file`` with the narrow R50 (R101) of yaml_opts / lazy_opts (the LSJ Mask
    R-CNN: tests/helpers.TINY_LSJ and narrow_fpn_heads) and ``calibrated`` random weights."""
    adapter = task_adapter_of(config_file)
    if not config_file.endswith(".py"):
        opts = yaml_opts(tiny_shapes)
    elif "LSJ" in config_file:
        opts = [*TINY_LSJ, *lazy_opts(tiny_shapes)[len(TINY_C4):]]
    else:
        opts = lazy_opts(tiny_shapes)
    cfg = adapter.load(config_file, opts)
    config = adapter(narrow_fpn_heads(cfg) if "LSJ" in config_file else cfg)
    torch.manual_seed(0)
    return Predictor(calibrated(config.build_model()), config.build_test_mapper(),
                     MetadataCatalog.get(tiny_shapes["val"]))


# seeded noise images (HWC uint8) at sizes the test resize keeps (short side 96): the trace's 96 x 96, then
# 96 x 128 and 128 x 96. Resized noise is smoother than the calibration's, and the global GE-θ⁻ detectors then
# detect nothing
NOISE = [np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8) for seed, size in
         enumerate([(96, 96), (96, 128), (128, 96)])]


@pytest.mark.slow
@pytest.mark.parametrize("config", shipped_detection_configs())
def test_every_shipped_detector_exports_and_predicts_as_pytorch(config, tiny_shapes, exported, tmp_path):
    """Each shipped detection config, narrow with calibrated random weights, to TorchScript and ONNX (traced at
    96 x 96): the same detections as its PyTorch predictor on two noise images (the norms' calibration data,
    on which every config detects; the shapes images leave the global GE-θ⁻ detectors without detections)
    of 96 x 128 and 128 x 96. The configs that the other tests export in a format share those files. Scores within 1e-3: random weights
    amplify float rounding through the R101's 100 layers to 1.4e-4 in the score of the TorchScript file
    (which runs the excite reference where eager PyTorch runs the fused operator)."""
    config_file = os.path.join(CONFIGS, config)
    predictor = None
    for fmt in FORMATS:
        case = next((c for c, (f, cfmt) in CASES.items() if (f, cfmt) == (config_file, fmt)), None)
        if case is not None:
            path, eager, _ = exported(case)
        else:
            predictor = eager = predictor or narrow_predictor(config_file, tiny_shapes)
            path = export_predictor(eager, fmt, str(tmp_path / fmt), {"config_file": config_file}, NOISE[0])
        deployed, found = ExportedPredictor(path), 0
        for image in NOISE[1:]:
            want = eager(image)
            check_same_detections(deployed(image), want, score_atol=1e-3)
            found += len(want)
        assert found >= 5, f"{fmt}: {found} detections to compare"


def test_onnx_files_hold_standard_operators_only_with_dynamic_height_and_width(exported):
    for case in ("faster_fpn_yaml_onnx", "mask_fpn_yaml_onnx", "faster_c4_lazy_onnx"):
        model = onnx.load(exported(case)[0])
        onnx.checker.check_model(model, full_check=True)
        assert {o.domain for o in model.opset_import} == {""} and model.opset_import[0].version >= 16
        assert {n.domain for n in model.graph.node} <= {""}
        assert "RoiAlign" in {n.op_type for n in model.graph.node}
        dims = model.graph.input[0].type.tensor_type.shape.dim
        assert [d.dim_param for d in dims[1:]] == ["height", "width"]


# Loads and runs a TorchScript file with torch and torchvision only; prints its outputs' shapes and what
# of ge_detectron / detectron2 got imported.
FRESH_PROCESS = """
import sys, numpy as np, torch, torchvision
module = torch.jit.load(sys.argv[1])
image = torch.from_numpy(np.load(sys.argv[2]))
outputs = module(image)
torch.save(list(outputs), sys.argv[3])
print(sorted(m for m in sys.modules if m.split(".")[0] in ("ge_detectron", "detectron2")))
"""


@pytest.mark.slow
def test_torchscript_file_runs_in_a_process_without_ge_detectron_or_detectron2(exported, images, tmp_path):
    path, eager, _ = exported("faster_fpn_yaml_torchscript")
    deployed = ExportedPredictor(path)
    image = model_input(deployed.augmentations, images[3])
    np.save(tmp_path / "image.npy", image.numpy())
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", FRESH_PROCESS, path, str(tmp_path / "image.npy"),
                             str(tmp_path / "out.pt")], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
    fresh = deployed.outputs_schema(torch.load(tmp_path / "out.pt"))  # other threads: other rounding
    here = deployed.outputs_schema(deployed.run(image))
    assert len(here) > 0
    check_same_detections(fresh, here)


def test_predict_with_onnx_draws_and_writes_the_pytorch_predictors_results(exported, images, tmp_path):
    path, eager, opts = exported("mask_fpn_yaml_onnx")
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image[:, :, ::-1]).save(inputs / f"{i}.png")
    for name, extra in (("onnx", ["--onnx", path]), ("torch", ["--config-file", MASK_FPN])):
        run_predict([*extra, "--input", str(inputs), "--output", str(tmp_path / name), "--json",
                     "--score-threshold", "0.05", *([] if name == "onnx" else opts)])
    assert sorted(os.listdir(tmp_path / "onnx")) == sorted(os.listdir(tmp_path / "torch"))
    got, want = (json.load(open(tmp_path / name / "predictions.json")) for name in ("onnx", "torch"))
    assert len(got) == len(want) > 0 and [r["file_name"] for r in got] == [r["file_name"] for r in want]
    as_tensors = lambda results: (torch.tensor([r["bbox"] for r in results]),  # noqa: E731
                                  torch.tensor([r["score"] for r in results]),
                                  torch.tensor([r["image_id"] * 1000 + r["category_id"] for r in results]))
    assert None not in matching(*as_tensors(got), *as_tensors(want))
    for i, image in enumerate(images):  # the detections drawn at the input's size (in random colours)
        drawn = np.asarray(Image.open(tmp_path / "onnx" / f"{i}.png"), float)
        assert drawn.shape == image.shape and np.abs(drawn - image[:, :, ::-1]).mean() > 1


@pytest.mark.parametrize("case", ["no weights", "bad format", "unwritable output"])
def test_export_errors_are_one_line(case, tiny_shapes, tmp_path):
    opts, fmt, output = [*yaml_opts(tiny_shapes), "OUTPUT_DIR", str(tmp_path)], "onnx", tmp_path / "export"
    if case == "no weights":
        message = f"no trained weights for '{FASTER_FPN}': '{tmp_path / 'last_checkpoint'}' does not exist"
    elif case == "bad format":
        fmt, message = "tflite", "--format 'tflite' is not one of torchscript, onnx."
    else:  # a folder below a file: unwritable for root too
        opts = with_weights(FASTER_FPN, opts, tmp_path / "weights.pth")
        output = tmp_path / "weights.pth" / "export"
        message = f"cannot create output folder '{output}': Not a directory."
    with pytest.raises(SystemExit) as error:
        run_export(["--config-file", FASTER_FPN, "--format", fmt, "--output", str(output), *opts])
    assert str(error.value).startswith("export_model.py: error: " + message) and "\n" not in str(error.value)


def nearest_rows(n_out, n_in):
    """The source index of each output row under PyTorch's nearest rule (docs/excite_op.md): the float32
    scale n_in / n_out times the row, floored, at most n_in - 1."""
    scale = np.float32(n_in) / np.float32(n_out)
    return np.minimum(np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(int), n_in - 1)


def excite_float64(x, g, shortcut=None):
    """``x * sigmoid(up(g))`` (``relu(... + shortcut)``) in float64, the resize by explicit indices."""
    x, g = x.double(), g.double()
    up = torch.sigmoid(g)[:, :, nearest_rows(x.shape[2], g.shape[2])][:, :, :, nearest_rows(x.shape[3], g.shape[3])]
    out = x * up
    return out if shortcut is None else torch.relu(out + shortcut.double())


class CallsTheOperators(torch.nn.Module):
    def forward(self, x, g, shortcut):
        return torch.ops.ge_detectron.excite_residual(x, g, shortcut), torch.ops.ge_detectron.excite(x, g)


def operator_inputs(height, width, gate_height, gate_width, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x, shortcut = (torch.randn(2, 3, height, width, generator=gen) for _ in range(2))
    return x, torch.randn(2, 3, gate_height, gate_width, generator=gen), shortcut


# (H, W, h, w): an extent-8 gate of 100 x 37 (where the nearest rule is not y // 8), 1 x 1 gates
OPERATOR_SIZES = [(100, 37, 13, 5), (9, 9, 1, 1), (40, 24, 5, 3), (33, 90, 5, 12)]


def check_against_float64(outputs, inputs):
    residual, excite = outputs
    torch.testing.assert_close(torch.as_tensor(residual).double(), excite_float64(*inputs), rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.as_tensor(excite).double(), excite_float64(*inputs[:2]), rtol=0, atol=1e-6)


def test_eager_calls_keep_the_operators_own_kernels_and_autograd():
    x, g, shortcut = (t.requires_grad_() for t in operator_inputs(16, 16, 2, 2))
    out = torch.ops.ge_detectron.excite_residual(x, g, shortcut)
    assert "ge_detectron_excite_residual" in type(out.grad_fn).__name__  # not the ATen decomposition's ReLU


def test_ge_module_traces_to_standard_operators_that_hold_at_other_sizes():
    """torch.jit.trace of a GatherExcite with the fused operator, at a size where its E8 gate is 1 x 1: the graph
    records the reference (no ge_detectron node) and resizes the gate, so it holds where the gate is larger."""
    module = GatherExcite(3, variant="theta", extent=8, norm="FrozenBN", fused="on").eval()
    x, _, shortcut = operator_inputs(8, 8, 1, 1)
    with torch.no_grad():
        traced = torch.jit.trace(module, (x, shortcut))
    assert not [n.kind() for n in traced.inlined_graph.nodes() if n.kind().startswith("ge_detectron")]
    for height, width, _, _ in OPERATOR_SIZES:
        x, _, shortcut = operator_inputs(height, width, 1, 1, seed=1)
        with torch.no_grad():
            want = excite_float64(x, module.gather_logits(x), shortcut)
            torch.testing.assert_close(traced(x, shortcut).double(), want, rtol=0, atol=1e-6)


def test_operators_export_to_standard_onnx_operators_with_the_torchscript_exporter(tmp_path):
    """The symbolic: a graph that calls the operators themselves exports to Sigmoid, Resize, Mul, Add, Relu."""
    path = str(tmp_path / "excite.onnx")
    names = ["x", "g", "shortcut"]
    torch.onnx.export(CallsTheOperators(), operator_inputs(*OPERATOR_SIZES[0]), path, dynamo=False, opset_version=17,
                      input_names=names, dynamic_axes={n: {2: f"{n}_h", 3: f"{n}_w"} for n in names})
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    assert {n.op_type for n in model.graph.node} <= {"Constant", "Sigmoid", "Shape", "Resize", "Mul", "Add", "Relu"}
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    for sizes in OPERATOR_SIZES:
        inputs = operator_inputs(*sizes, seed=2)
        check_against_float64(session.run(None, {n: t.numpy() for n, t in zip(names, inputs)}), inputs)


def test_operators_decompose_under_torch_export_and_the_dynamo_onnx_exporter(tmp_path):
    """torch.export keeps each operator as one node; run_decompositions and torch.onnx.export(dynamo=True) turn it
    into its ATen definition, which holds at other sizes (H, W, h, w all dynamic)."""
    dims = [{2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC}] * 3
    program = torch.export.export(CallsTheOperators(), operator_inputs(*OPERATOR_SIZES[0]), dynamic_shapes=dims)
    targets = lambda p: {str(n.target) for n in p.graph.nodes if n.op == "call_function"}  # noqa: E731
    assert {"ge_detectron.excite_residual.default", "ge_detectron.excite.default"} <= targets(program)
    decomposed = program.run_decompositions()
    assert not [t for t in targets(decomposed) if "ge_detectron" in t]
    assert {"aten.sigmoid.default", "aten.upsample_nearest2d.vec", "aten.relu.default"} <= targets(decomposed)
    onnx_program = torch.onnx.export(CallsTheOperators(), operator_inputs(*OPERATOR_SIZES[0]), dynamo=True,
                                     dynamic_shapes=dims, verbose=False)
    onnx_program.save(str(tmp_path / "excite.onnx"))
    model = onnx.load(str(tmp_path / "excite.onnx"))
    assert {n.domain for n in model.graph.node} <= {""}
    session = onnxruntime.InferenceSession(str(tmp_path / "excite.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    for sizes in OPERATOR_SIZES:
        inputs = operator_inputs(*sizes, seed=3)
        check_against_float64(decomposed.module()(*inputs), inputs)
        check_against_float64(session.run(None, dict(zip(names, (t.numpy() for t in inputs)))), inputs)


def test_ge_backbone_exports_with_dynamic_sizes_through_torch_export_and_dynamo_onnx(tiny_shapes, tmp_path):
    torch.manual_seed(0)
    backbone = build_model(get_ge_cfg(FASTER_FPN, yaml_opts(tiny_shapes))).backbone.eval()
    assert {m.fused for m in backbone.modules() if isinstance(m, GatherExcite)} == {"auto"}
    image = torch.randn(1, 3, 160, 192)
    program = export_backbone(backbone, image)
    nodes = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert nodes.count("ge_detectron.excite_residual.default") == sum(
        isinstance(m, GatherExcite) for m in backbone.modules())  # the fused operator, one per GE block
    decomposed = program.run_decompositions()
    assert not [n for n in decomposed.graph.nodes if "ge_detectron" in str(n.target)]
    onnx_program = export_backbone_onnx(backbone, image)
    onnx_program.save(str(tmp_path / "backbone.onnx"))
    model = onnx.load(str(tmp_path / "backbone.onnx"))
    onnx.checker.check_model(model)
    assert {n.domain for n in model.graph.node} <= {""}
    session = onnxruntime.InferenceSession(str(tmp_path / "backbone.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    for height, width in ((160, 224), (256, 160)):
        x = torch.randn(1, 3, height, width)
        with torch.no_grad():
            want = backbone(x)
            exported = decomposed.module()(x)
        ran = dict(zip(names, session.run(None, {session.get_inputs()[0].name: x.numpy()})))
        assert sorted(want) == sorted(exported) and len(ran) == len(want)
        for i, key in enumerate(sorted(want)):  # p2 ... p6, in the ONNX file's output order
            torch.testing.assert_close(exported[key], want[key], rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(torch.from_numpy(list(ran.values())[i]), want[key], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=r"height and width must be multiples of the backbone's size divisibility 32"):
        export_backbone(backbone, torch.randn(1, 3, 170, 192))
