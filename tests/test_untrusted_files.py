"""Files from outside are data (issue 29): crafted weights (.pkl, .pth), exported-model specs and YAML configs
whose payload would create a marker file are refused with one line and the marker never appears; the weights files that
MODEL.WEIGHTS takes (MSRA's Caffe2 R-50.pkl, detectron2 model-zoo .pkl files, converted files) still load;
an image whose header claims more pixels than PIL decodes (a decompression bomb) is skipped with one line
naming it, and the other images are predicted, evaluated, trained on and analysed."""
import io
import json
import logging
import os
import pickle
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from detectron2.data import DatasetMapper
from detectron2.data import transforms as T
from detectron2.data.common import MapDataset
from detectron2.export.flatten import flatten_to_tuple
from detectron2.structures import Boxes, Instances
from helpers import DEMO, PRETRAIN_DEMO, REPO, TINY, TINY_PRETRAIN, shapes_root
from PIL import Image

from ge_detectron.analysis import AnalysisError, image_folder_loader, load_classifier
from ge_detectron.checkpoint import GECheckpointer
from ge_detectron.config import GEConfigError, get_ge_cfg
from ge_detectron.data.sanitize import SkipUnreadableImages, build_sanitized_test_loader
from ge_detectron.cli.predict import run_predict
from ge_detectron.detection.trainer import YAMLDetection
from ge_detectron.export.schema import schema_from_json, schema_to_json
from ge_detectron.export.tracing import augmentations_from_json, augmentations_to_json
from ge_detectron.pretrain import get_pretrain_cfg
from ge_detectron.pretrain.convert import load_state_dict
from ge_detectron.safe_load import UnsafeFileError

# The pixels PIL refuses to open from the header alone (twice Image.MAX_IMAGE_PIXELS, Pillow's default).
BOMB_SIDE = 30000


class RunsCode:
    """Pickles as a call of os.system: unpickling it runs ``touch <marker>``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "code_ran"
    yield path
    assert not path.exists(), "a payload in a crafted file ran"


def crafted_pkl(path, marker):
    path.write_bytes(pickle.dumps({"model": {"w": RunsCode(marker)}, "__author__": "x", "matching_heuristics": True}))
    return path


def crafted_pth(path, marker):
    torch.save({"model": {"w": torch.zeros(1), "x": RunsCode(marker)}}, path)
    return path


def decompression_bomb(path, side=BOMB_SIDE):
    """A 1x1 PNG whose IHDR (CRC fixed) claims ``side`` x ``side`` pixels: 900 M at 30000, which PIL refuses to open."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1), (200, 30, 30)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", side, side)  # IHDR: 8-byte signature, length, "IHDR", width, height, ...
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def good_image(path, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path)
    return path


def test_the_crafted_bomb_is_small_and_refused_from_its_header(tmp_path):
    path = decompression_bomb(tmp_path / "bomb.png")
    assert path.stat().st_size < 1000
    with pytest.raises(Image.DecompressionBombError, match=f"{BOMB_SIDE * BOMB_SIDE} pixels"):
        Image.open(path)


# ---- weights -------------------------------------------------------------------------------------------------------
class TwoConvs(torch.nn.Module):
    """The parameter names a ResNet's stem and first block have in detectron2 (what Caffe2 names are matched to)."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Module()
        self.stem.conv1 = torch.nn.Conv2d(3, 4, 1, bias=False)
        self.res2 = torch.nn.Sequential(torch.nn.Module())
        self.res2[0].conv1 = torch.nn.Conv2d(4, 2, 1, bias=False)


STEM = np.arange(12, dtype=np.float32).reshape(4, 3, 1, 1)
BLOCK = -np.arange(8, dtype=np.float32).reshape(2, 4, 1, 1)


def python2_style_pickle(data):
    """A protocol-2 pickle naming numpy.core.multiarray, as the Python 2 / numpy 1 pickles of Caffe2 are."""
    return pickle.dumps(data, protocol=2).replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


@pytest.mark.parametrize("layout", ["msra_caffe2_blobs", "caffe2_blobs_with_author", "detectron2_model_zoo",
                                    "converted"])
def test_weights_pkl_files_of_the_model_zoos_load(layout, tmp_path):
    caffe2 = {"conv1_w": STEM, "conv1_w_momentum": np.ones_like(STEM), "res2_0_branch2a_w": BLOCK}
    detectron2 = {"stem.conv1.weight": STEM, "res2.0.conv1.weight": BLOCK}
    data = {
        "msra_caffe2_blobs": caffe2,  # ImageNet R-50.pkl: the blobs themselves
        "caffe2_blobs_with_author": {"blobs": caffe2, "__author__": "MSRA"},
        "detectron2_model_zoo": {"model": detectron2, "__author__": "Detectron2 Model Zoo", "matching_heuristics": True},
        "converted": {"model": detectron2, "__author__": "ge_detectron convert_weights (pretrain)",
                      "matching_heuristics": True},
    }[layout]
    path = tmp_path / "weights.pkl"
    path.write_bytes(python2_style_pickle(data) if "caffe2" in layout else pickle.dumps(data))
    model = TwoConvs()
    GECheckpointer(model).load(str(path), checkpointables=[])
    np.testing.assert_array_equal(model.stem.conv1.weight.detach().numpy(), STEM)
    np.testing.assert_array_equal(model.res2[0].conv1.weight.detach().numpy(), BLOCK)


@pytest.mark.parametrize("kind", ["pkl", "pth"])
def test_weights_that_would_run_code_are_refused_by_the_checkpointer(kind, tmp_path, marker):
    path = (crafted_pkl if kind == "pkl" else crafted_pth)(tmp_path / f"weights.{kind}", marker)
    model = TwoConvs()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UnsafeFileError) as error:
        GECheckpointer(model).load(str(path), checkpointables=[])
    assert str(error.value) == (
        f"{path} was not loaded: it refers to posix.system, which is code, not weights (only numpy arrays, tensors, "
        "numbers, strings and plain containers are read from weights files). Use weights from a source you trust, "
        "saved as tensors or arrays.")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_resume_from_a_last_checkpoint_that_would_run_code_is_refused(tmp_path, marker):
    crafted_pth(tmp_path / "model_0000009.pth", marker)
    (tmp_path / "last_checkpoint").write_text("model_0000009.pth")
    with pytest.raises(UnsafeFileError, match="model_0000009.pth was not loaded: it refers to posix.system"):
        GECheckpointer(TwoConvs(), save_dir=str(tmp_path)).resume_or_load("", resume=True)


def test_feature_analysis_of_weights_that_would_run_code_is_a_one_line_error(tmp_path, marker):
    weights = crafted_pth(tmp_path / "classifier.pth", marker)
    cfg = get_pretrain_cfg(PRETRAIN_DEMO, [*TINY_PRETRAIN, "MODEL.WEIGHTS", str(weights)])
    with pytest.raises(AnalysisError) as error:
        load_classifier(cfg)
    assert str(error.value).startswith(f"{weights} was not loaded: it refers to posix.system, which is code")
    assert "\n" not in str(error.value)


def test_a_pth_that_would_run_code_is_refused_by_the_weights_converter(tmp_path, marker):
    path = crafted_pth(tmp_path / "resnet.pth", marker)
    with pytest.raises(UnsafeFileError, match=f"^{path} was not loaded: it refers to posix.system"):
        load_state_dict(str(path))


def test_a_pkl_of_torch_tensors_is_refused_naming_what_it_holds(tmp_path):
    path = tmp_path / "tensors.pkl"
    path.write_bytes(pickle.dumps({"model": {"w": torch.zeros(2)}}))
    with pytest.raises(UnsafeFileError, match=r"it refers to torch\._utils\._rebuild_tensor_v2, which is code"):
        GECheckpointer(TwoConvs()).load(str(path), checkpointables=[])


# ---- exported-model specs --------------------------------------------------------------------------------------------
def exported_files(tmp_path, edit):
    """A model.onnx (its content is never reached) and the spec beside it as tools/export_model.py writes it
    for a Faster R-CNN, changed by ``edit(spec)``."""
    instances = Instances((64, 64), pred_boxes=Boxes(torch.zeros(1, 4)), scores=torch.zeros(1),
                          pred_classes=torch.zeros(1, dtype=torch.int64))
    spec = {"format": "onnx", "input": {"image_format": "BGR"}, "class_names": ["a"], "category_ids": [1],
            "test_resize": augmentations_to_json([T.ResizeShortestEdge(64, 64)]),
            "outputs_schema": schema_to_json(flatten_to_tuple(instances)[1])}
    edit(spec)
    (tmp_path / "model.onnx").write_bytes(b"not read")
    (tmp_path / "model.onnx.json").write_text(json.dumps(spec))
    return str(tmp_path / "model.onnx")


def test_the_spec_of_an_exported_faster_rcnn_reads_back(tmp_path):
    instances = Instances((64, 64), pred_boxes=Boxes(torch.arange(8.0).reshape(2, 4)), scores=torch.tensor([0.5, 0.25]),
                          pred_classes=torch.tensor([1, 0]))
    flat, schema = flatten_to_tuple(instances)
    rebuilt = schema_from_json(json.loads(json.dumps(schema_to_json(schema))))
    assert rebuilt == schema
    again = rebuilt(flat)
    assert torch.equal(again.pred_boxes.tensor, instances.pred_boxes.tensor) and again.scores.tolist() == [0.5, 0.25]
    (resize,) = augmentations_from_json(json.loads(json.dumps(augmentations_to_json([T.ResizeShortestEdge((64,), 96, "choice")]))))
    assert type(resize) is T.ResizeShortestEdge and resize.short_edge_length == [64] and resize.max_size == 96


def _resize_runs_code(marker):
    def edit(spec):
        spec["test_resize"] = [{"class": "os.system", "args": {"command": f"touch {marker}"}}]
    return edit, "os.system"


def _schema_runs_code(marker):
    def edit(spec):
        spec["outputs_schema"]["fields"]["schemas"][0] = {"class": "subprocess.call",
                                                          "fields": {"args": ["touch", str(marker)]}}
    return edit, "subprocess.call"


def _wrapper_runs_code(marker):
    def edit(spec):  # TensorWrapSchema instantiates its class_name on every prediction
        boxes = spec["outputs_schema"]["fields"]["schemas"][0]
        assert boxes["class"].endswith("TensorWrapSchema")
        boxes["fields"]["class_name"] = "os.system"
    return edit, "detectron2.export.flatten.TensorWrapSchema"


def _unknown_argument(marker):
    def edit(spec):
        spec["test_resize"][0]["args"]["command"] = f"touch {marker}"
    return edit, "detectron2.data.transforms.ResizeShortestEdge"


def _not_an_entry(marker):
    def edit(spec):
        spec["outputs_schema"] = [f"touch {marker}"]
    return edit, None


@pytest.mark.parametrize("craft", [_resize_runs_code, _schema_runs_code, _wrapper_runs_code, _unknown_argument,
                                   _not_an_entry])
def test_a_spec_naming_other_classes_is_a_one_line_error_before_anything_is_built(craft, tmp_path, marker, capsys):
    edit, named = craft(marker)
    path = exported_files(tmp_path, edit)
    with pytest.raises(SystemExit) as error:
        run_predict(["--onnx", path, "--input", str(good_image(tmp_path / "a.png", 0)), "--output", str(tmp_path / "out")])
    message = str(error.value)
    assert message.startswith(f"error: {path}.json was not used: ") and message.endswith(". Nothing was built from it.")
    assert "\n" not in message and (named is None or repr(named) in message), message
    assert not (tmp_path / "out").exists()


# ---- the tools, as a user runs them ----------------------------------------------------------------------------------
def run_tool(tool, *args, tmp_path):
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", tool), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "DETECTRON2_DATASETS": str(tmp_path)})


def assert_one_line_error(result, expected_start):
    console = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in console, console[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(expected_start), console[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pkl", "pth"])
def test_predict_with_weights_that_would_run_code(kind, tmp_path, marker):
    shapes_root(tmp_path)
    weights = (crafted_pkl if kind == "pkl" else crafted_pth)(tmp_path / f"weights.{kind}", marker)
    result = run_tool("predict.py", "--config-file", DEMO, "--input", good_image(tmp_path / "a.png", 0), "--output",
                      tmp_path / "out", *TINY, "MODEL.WEIGHTS", weights, tmp_path=tmp_path)
    assert_one_line_error(result, f"error: {weights} was not loaded: it refers to posix.system, which is code")


@pytest.mark.slow
@pytest.mark.parametrize("craft", [_resize_runs_code, _schema_runs_code])
def test_predict_with_a_spec_that_would_run_code(craft, tmp_path, marker):
    edit, named = craft(marker)
    path = exported_files(tmp_path, edit)
    result = run_tool("predict.py", "--onnx", path, "--input", good_image(tmp_path / "a.png", 0), "--output",
                      tmp_path / "out", tmp_path=tmp_path)
    assert_one_line_error(result, f"error: {path}.json was not used: it names the class {named!r}")


@pytest.mark.slow
def test_train_net_with_weights_that_would_run_code(tmp_path, marker):
    shapes_root(tmp_path)
    weights = crafted_pkl(tmp_path / "weights.pkl", marker)
    result = run_tool("train_net.py", "--config-file", DEMO, *TINY, "MODEL.WEIGHTS", weights, "OUTPUT_DIR",
                      tmp_path / "out", "SOLVER.MAX_ITER", 1, tmp_path=tmp_path)
    assert_one_line_error(result, f"error: {weights} was not loaded: it refers to posix.system, which is code")


# ---- decompression bombs -------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_predict_skips_a_decompression_bomb_and_draws_the_other_images(tmp_path, capsys):
    shapes_root(tmp_path)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    good_image(inputs / "a.png", 0), decompression_bomb(inputs / "b.png"), good_image(inputs / "c.png", 1)
    weights = tmp_path / "random.pth"
    model = build_predictor_model(tmp_path)
    torch.save({"model": model.state_dict()}, weights)
    run_predict(["--config-file", DEMO, "--input", str(inputs), "--output", str(tmp_path / "out"), *TINY,
                 "MODEL.WEIGHTS", str(weights)])
    assert sorted(os.listdir(tmp_path / "out")) == ["a.png", "c.png"]
    lines = [line for line in capsys.readouterr().out.splitlines() if "b.png" in line]
    assert lines == [f"Skipped unreadable image '{inputs / 'b.png'}' (DecompressionBombError: Image size "
                     f"({BOMB_SIDE * BOMB_SIDE} pixels) exceeds limit of {2 * Image.MAX_IMAGE_PIXELS} pixels, could be "
                     "decompression bomb DOS attack.); 1 skipped so far."]


def build_predictor_model(tmp_path):
    """The demo config's tiny detector (random weights): a predictor of it needs weights, these."""
    return YAMLDetection(YAMLDetection.load(DEMO, [*TINY, "MODEL.DEVICE", "cpu"])).build_model()


def detection_records(tmp_path):
    paths = [good_image(tmp_path / "a.png", 0), decompression_bomb(tmp_path / "b.png"), good_image(tmp_path / "c.png", 1)]
    return [{"file_name": str(p), "image_id": i, "height": 48, "width": 64, "annotations": []} for i, p in enumerate(paths)]


def test_evaluation_skips_a_decompression_bomb_and_evaluates_the_other_images(tmp_path, caplog):
    mapper = DatasetMapper(is_train=False, augmentations=[], image_format="BGR")
    loader = build_sanitized_test_loader(detection_records(tmp_path), mapper=mapper, num_workers=0)
    with caplog.at_level(logging.WARNING, logger="ge_detectron"):
        batches = list(loader)
    assert len(loader) == 3 and [[d["image_id"] for d in batch] for batch in batches] == [[0], [2]]
    assert all(batch[0]["image"].shape == (3, 48, 64) for batch in batches)
    warnings = [r.getMessage() for r in caplog.records if "b.png" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith(f"Skipped unreadable image '{tmp_path / 'b.png'}' "
                                                         "(DecompressionBombError: Image size (900000000 pixels)")
    assert warnings[0].endswith("; 1 skipped so far in this data loader worker.")


def test_training_skips_a_decompression_bomb_for_another_image(tmp_path, caplog):
    records = detection_records(tmp_path)
    mapper = SkipUnreadableImages(DatasetMapper(is_train=True, augmentations=[], image_format="BGR"))
    dataset = MapDataset(records, mapper)
    with caplog.at_level(logging.WARNING, logger="ge_detectron"):
        item = dataset[1]  # the bomb: MapDataset draws another record
    assert item["file_name"] in (records[0]["file_name"], records[2]["file_name"])
    assert any(f"Skipped unreadable image '{tmp_path / 'b.png'}' (DecompressionBombError" in r.getMessage()
               for r in caplog.records)


def test_feature_analysis_leaves_a_decompression_bomb_out(tmp_path, caplog):
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        good_image(tmp_path / label / "1.png", ord(label))
    decompression_bomb(tmp_path / "a" / "0.png")
    with caplog.at_level(logging.WARNING, logger="ge_detectron"):
        loader, classes = image_folder_loader(str(tmp_path), lambda image: torch.zeros(1), 2, 2)
    assert classes == ["a", "b"] and [path for path, _ in loader.dataset.samples] == [
        str(tmp_path / "a" / "1.png"), str(tmp_path / "b" / "1.png")]
    assert [labels.tolist() for _, labels in loader] == [[0, 1]]
    assert any(f"Skipped unreadable image '{tmp_path / 'a' / '0.png'}' (DecompressionBombError" in r.getMessage()
               for r in caplog.records)


def test_a_yaml_config_that_would_run_code_is_a_one_line_error(tmp_path, marker):
    path = tmp_path / "config.yaml"
    path.write_text(f'_BASE_: "{DEMO}"\nMODEL:\n  WEIGHTS: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(GEConfigError) as error:
        get_ge_cfg(str(path))
    assert str(error.value).startswith(f"config file '{path}' is not plain YAML data, it was not loaded: could not "
                                       "determine a constructor for the tag 'tag:yaml.org,2002:python/object/apply:os.system'")
    assert "\n" not in str(error.value)
