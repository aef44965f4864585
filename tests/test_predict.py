"""tools/predict.py's flow: a trained Mask R-CNN on files, a directory and a glob, one picture per input at the
input's size, COCO results equal to what the evaluation of the same model wrote, and one-line errors."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from detectron2.data import MetadataCatalog
from helpers import DEMO, MASK_DEMO, REPO, TINY
from PIL import Image

from ge_detectron.cli.predict import run_predict
from ge_detectron.cli.train import run_train_net

pytestmark = pytest.mark.slow  # every test here trains or runs a subprocess


@pytest.fixture(scope="module")
def trained(tiny_shapes, tmp_path_factory):
    """A Mask R-CNN trained for 2 iterations with train_net's flow, which evaluated it on the val images."""
    out = tmp_path_factory.mktemp("trained")
    opts = [*TINY, "MODEL.ROI_MASK_HEAD.CONV_DIM", "32", "MODEL.GE.NORM", "GN", "SOLVER.BASE_LR", "0.001",
            "DATASETS.TRAIN", f"('{tiny_shapes['train']}',)", "DATASETS.TEST", f"('{tiny_shapes['val']}',)",
            "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "SEED", "4", "OUTPUT_DIR", str(out)]
    run_train_net(["--config-file", MASK_DEMO, *opts, "SOLVER.MAX_ITER", "2"])
    return out, opts


def predict(*args):
    return run_predict(list(map(str, args)))


def test_predictions_per_input_at_its_size_and_coco_results_as_evaluation(trained, tiny_shapes, tmp_path):
    out, opts = trained
    val_dir = MetadataCatalog.get(tiny_shapes["val"]).image_root
    other = tmp_path / "other"
    other.mkdir()
    Image.open(os.path.join(val_dir, "000001.jpg")).resize((100, 80)).save(other / "wide.png")
    shutil.copy(os.path.join(val_dir, "000002.jpg"), other / "000002.jpg")  # the same name as a val image

    predict("--config-file", MASK_DEMO, "--input", val_dir, other / "wide.png", f"{other}/*.jpg", "--output",
            tmp_path / "pred", "--json", "--score-threshold", 0.0, *opts)
    assert sorted(os.listdir(tmp_path / "pred")) == ["000001.png", "000002.png", "000002_2.png", "predictions.json", "wide.png"]
    for name, source in (("000001.png", os.path.join(val_dir, "000001.jpg")), ("wide.png", other / "wide.png")):
        drawn, image = Image.open(tmp_path / "pred" / name), Image.open(source)
        assert drawn.size == image.size  # the input's size: (100, 80) for wide.png
        assert np.abs(np.asarray(drawn.convert("RGB"), float) - np.asarray(image.convert("RGB"), float)).mean() > 1

    # the detections of the val images, as COCO results: what train_net's evaluation wrote for the same model
    results = json.load(open(tmp_path / "pred" / "predictions.json"))
    assert {r["file_name"] for r in results} == {os.path.join(val_dir, "000001.jpg"), os.path.join(val_dir, "000002.jpg"),
                                                 str(other / "wide.png"), f"{other}/000002.jpg"}
    evaluated = json.load(open(out / "inference" / "coco_instances_results.json"))
    ours = [r for r in results if r["image_id"] in (1, 2)]
    assert len(ours) == len(evaluated) > 0 and all("segmentation" in r for r in ours)
    key = lambda r: (r["image_id"], -r["score"])  # noqa: E731
    for got, want in zip(sorted(ours, key=key), sorted(evaluated, key=key)):
        assert (got["image_id"], got["category_id"], got["segmentation"]) == (
            want["image_id"], want["category_id"], want["segmentation"])
        assert got["bbox"] == pytest.approx(want["bbox"], abs=1e-3) and got["score"] == pytest.approx(want["score"], abs=1e-5)
    copy = [r for r in results if r["file_name"] == f"{other}/000002.jpg"]
    assert sorted(r["score"] for r in copy) == pytest.approx(sorted(r["score"] for r in ours if r["image_id"] == 2))


@pytest.mark.parametrize("case", ["missing input", "unreadable input", "empty directory", "no checkpoint",
                                  "missing weights", "broken weights", "foreign weights", "other widths"])
def test_errors_are_one_line_naming_the_file(case, trained, tiny_shapes, tmp_path):
    out, opts = trained
    image = os.path.join(MetadataCatalog.get(tiny_shapes["val"]).image_root, "000001.jpg")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    (tmp_path / "empty").mkdir()
    config, inputs, extra = MASK_DEMO, [image], []
    if case == "missing input":
        inputs, message = [image, tmp_path / "nope.jpg"], f"input not found: '{tmp_path / 'nope.jpg'}'."
    elif case == "unreadable input":
        inputs, message = [bad], f"cannot read image '{bad}': UnidentifiedImageError"
    elif case == "empty directory":
        inputs, message = [tmp_path / "empty"], f"input directory '{tmp_path / 'empty'}' holds no images"
    elif case == "no checkpoint":
        extra, message = ["OUTPUT_DIR", tmp_path], f"no trained weights for '{MASK_DEMO}': '{tmp_path / 'last_checkpoint'}' does not exist"
    elif case == "missing weights":
        extra, message = ["MODEL.WEIGHTS", tmp_path / "nope.pth"], f"weights file not found: '{tmp_path / 'nope.pth'}'."
    elif case == "broken weights":
        (tmp_path / "half.pth").write_bytes((out / "model_final.pth").read_bytes()[:1000])
        extra, message = ["MODEL.WEIGHTS", tmp_path / "half.pth"], f"cannot load weights '{tmp_path / 'half.pth'}': "
    elif case == "foreign weights":  # a Mask R-CNN's weights for a Faster R-CNN config
        config, message = DEMO, rf"weights '{out / 'model_final.pth'}' do not fit the model of '{DEMO}': \d+ weights are not in the model \(e.g. roi_heads.mask_head"
    else:
        extra, message = ["MODEL.FPN.OUT_CHANNELS", 64], (rf"weights '{out / 'model_final.pth'}' do not fit the model of "
                                                          rf"'{MASK_DEMO}': \d+ tensors have other shapes than the model's "
                                                          r"\(e.g. backbone.fpn_lateral2.weight: \(32, 64, 1, 1\) in the "
                                                          r"weights, \(64, 64, 1, 1\) in the model\)")
    with pytest.raises(SystemExit, match="^error: " + message) as error:
        predict("--config-file", config, "--input", *inputs, "--output", tmp_path / "pred", *opts, *map(str, extra))
    assert "\n" not in str(error.value)


def test_the_tool_prints_one_line_and_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(REPO, "tools", "predict.py"), "--config-file", MASK_DEMO,
                             "--input", str(tmp_path / "photo.jpg"), "--output", str(tmp_path / "out")], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"error: input not found: '{tmp_path / 'photo.jpg'}'."
