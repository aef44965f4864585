"""--register-coco NAME JSON IMAGE_ROOT: a user's COCO-format files trained and evaluated from the command line
(YAML and LazyConfig tools), with the bad-data handling, and clear errors before training starts."""
import json
import os

import pytest
from helpers import DEMO, PAPER, REPO, RETINANET, TINY, TINY_C4, tiny

from ge_detectron.data import generate_shapes_split
from ge_detectron.cli.train import run_lazyconfig_train_net, run_train_net


def users_dataset(root, name, num_images, seed, bad=False):
    """A COCO-format dataset as a user has it: ``root/name.json`` and ``root/name/``; with ``bad``, one image
    is corrupt and one box degenerate."""
    generate_shapes_split(str(root / name), str(root / f"{name}.json"), num_images, seed, image_size=64, min_side=12,
                          max_side=30)
    if bad:
        (root / name / "000001.jpg").write_bytes(b"\xff\xd8 not a jpeg")
        coco = json.loads((root / f"{name}.json").read_text())
        coco["annotations"][-1]["bbox"] = [10, 10, 0, 5]
        (root / f"{name}.json").write_text(json.dumps(coco))
    return [str(root / f"{name}.json"), str(root / name)]


YAML_OPTS = [*TINY, "MODEL.GE.NORM", "GN", "SOLVER.BASE_LR", "0.001", "SEED", "2"]


@pytest.mark.slow
def test_train_and_evaluate_a_registered_dataset_with_bad_data(tmp_path):
    train = users_dataset(tmp_path, "my_train", 5, 20, bad=True)
    val = users_dataset(tmp_path, "my_val", 2, 21)
    out = tmp_path / "out"
    run_train_net(["--config-file", DEMO, "--register-coco", "my_train", *train, "--register-coco", "my_val",
                   *val, *YAML_OPTS, "DATASETS.TRAIN", "('my_train',)", "DATASETS.TEST", "('my_val',)",
                   "SOLVER.MAX_ITER", "3", "OUTPUT_DIR", str(out)])
    assert (out / "model_final.pth").exists()
    log = (out / "log.txt").read_text()
    assert f"Loaded 5 images in COCO format from {train[0]}" in log and "Evaluation results for bbox" in log
    assert "Dropped 1 annotations with degenerate or out-of-image boxes" in log
    assert "Skipped unreadable image" in log and "000001.jpg" in log
    assert (out / "inference" / "coco_instances_results.json").exists()


@pytest.mark.slow
def test_lazy_tool_trains_a_registered_dataset_with_bad_data(tiny_shapes, tmp_path):
    train = users_dataset(tmp_path, "my_lazy_train", 5, 22, bad=True)
    out = tmp_path / "out"
    run_lazyconfig_train_net(["--config-file", PAPER, "--register-coco", "my_lazy_train", *train,
                              *tiny(tiny_shapes, out), *TINY_C4, "dataloader.train.dataset.names=my_lazy_train",
                              "train.max_iter=3"])
    log = (out / "log.txt").read_text()
    assert f"Loaded 5 images in COCO format from {train[0]}" in log and (out / "model_final.pth").exists()
    assert "Dropped 1 annotations with degenerate or out-of-image boxes" in log
    assert "Skipped unreadable image" in log and "000001.jpg" in log


@pytest.mark.parametrize("case", ["missing json", "missing images", "not coco", "roi classes", "retinanet classes",
                                  "name taken"])
def test_errors_before_training(case, tmp_path):
    mine = "mine_" + case.replace(" ", "_")  # registrations last for the process: a name per case
    json_file, image_root = users_dataset(tmp_path, mine, 2, 23)
    config, opts = DEMO, []
    if case == "missing json":
        json_file = str(tmp_path / "nope.json")
        message = f"cannot register COCO dataset '{mine}': the annotation file '{json_file}' does not exist."
    elif case == "missing images":
        image_root = str(tmp_path / "no_images")
        message = f"cannot register COCO dataset '{mine}': the image folder '{image_root}' does not exist."
    elif case == "not coco":
        (tmp_path / f"{mine}.json").write_text('{"images": []}')
        message = f"dataset '{mine}': '{json_file}' is not a COCO instances file with categories \\(KeyError"
    elif case == "roi classes":
        opts = ["MODEL.ROI_HEADS.NUM_CLASSES", "3"]
        message = (f"MODEL.ROI_HEADS.NUM_CLASSES = 3 but dataset '{mine}' has 4 categories \\(circle, square, "
                   "triangle, cross\\): set MODEL.ROI_HEADS.NUM_CLASSES to 4.")
    elif case == "retinanet classes":  # 80 COCO classes by default
        config, opts = RETINANET, ["MODEL.DEVICE", "cpu"]
        message = f"MODEL.RETINANET.NUM_CLASSES = 80 but dataset '{mine}' has 4 categories"
    else:
        opts = ["DATASETS.TRAIN", "('coco_2014_train',)"]
        json_file, message = str(tmp_path / "other.json"), "cannot register COCO dataset 'coco_2014_train'"
        os.rename(tmp_path / f"{mine}.json", json_file)
    name = "coco_2014_train" if case == "name taken" else mine
    with pytest.raises(SystemExit, match="^error: " + message):
        run_train_net(["--config-file", config, "--register-coco", name, json_file, image_root, *YAML_OPTS,
                       "DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", "()", "OUTPUT_DIR", str(tmp_path / "out"),
                       *opts])
    assert not (tmp_path / "out").exists()  # nothing started


@pytest.mark.parametrize("tool,config", [(run_train_net, "faster_rcnn_ge_r50.yaml"),
                                         (run_lazyconfig_train_net, "faster_rcnn_ge_r50.py")])
def test_eval_only_checks_only_the_test_datasets(tool, config, tmp_path):
    """Without COCO on disk, --eval-only names the missing test dataset, not the training one it does not read."""
    device = ["train.device=cpu"] if config.endswith(".py") else ["MODEL.DEVICE", "cpu"]
    with pytest.raises(SystemExit, match="^error: Dataset 'coco_2014_val' was not found"):
        tool(["--config-file", os.path.join(REPO, "configs", config), "--eval-only", *device])
