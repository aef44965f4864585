"""The LazyConfigs: each instantiates and trains one iteration on generated data; the paper's LazyConfig is
the detector of faster_rcnn_ge_r50.yaml; tools/lazyconfig_train_net.py's flow trains, evaluates, resumes,
stops on a non-finite loss, and fails before training with one-line errors."""
import glob
import logging
import os
import signal
import subprocess
import sys

import pytest
import torch
from detectron2.config import instantiate
from detectron2.modeling import build_model
from detectron2.solver import build_lr_scheduler
from detectron2.utils.env import seed_all_rng
from helpers import PAPER, TINY_C4, ToolRun, check_resumed_weights_equal_uninterrupted, tiny, tiny_lazy_cfg

from ge_detectron import GatherExcite
from ge_detectron.config import get_ge_cfg
from ge_detectron.data import generate_shapes_split
from ge_detectron.cli.train import run_lazyconfig_train_net
from ge_detectron.detection.lazy import LazyTrainer, load_lazy_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAZY = sorted(p for p in glob.glob(os.path.join(REPO, "configs", "**", "*.py"), recursive=True)
              if os.sep + "common" + os.sep not in p)


@pytest.mark.slow
@pytest.mark.parametrize("path", LAZY, ids=lambda p: os.path.relpath(p, REPO))
def test_every_lazy_config_instantiates_and_trains_one_iteration(path, tiny_shapes, tmp_path):
    full = instantiate(load_lazy_config(path, ["train.device=cpu"]).model)  # the config as shipped
    named = "theta_plus" if "theta_plus" in os.path.basename(path) else "theta"  # the variant the file is named for
    assert {m.variant for m in full.modules() if isinstance(m, GatherExcite)} == {named}

    cfg = tiny_lazy_cfg(path, tiny_shapes, tmp_path)
    seed_all_rng(cfg.train.seed)
    trainer = LazyTrainer(cfg)
    trainer.resume_or_load(resume=False)
    ge_params = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if ".ge." in n}
    assert ge_params
    trainer.train()
    assert trainer.iter == cfg.train.max_iter == 1
    losses = trainer.storage.history("total_loss").values()
    assert len(losses) == 1 and 0 < losses[0][0] < float("inf")
    if "LSJ" in path:
        assert trainer.storage.history("loss_mask").latest() > 0
    changed = [n for n, p in trainer.model.named_parameters() if n in ge_params and not torch.equal(p, ge_params[n])]
    assert changed, "one SGD step should move the GE parameters"
    assert (tmp_path / "model_final.pth").exists()  # GECheckpointer wrote the final checkpoint


def _module_settings(model):
    """Per submodule: its class, and the hyperparameters the two config systems could set differently."""
    attrs = ("variant", "extent", "ge_init", "pre_nms_topk", "post_nms_topk", "nms_thresh", "batch_size_per_image",
             "positive_fraction", "test_score_thresh", "test_nms_thresh", "test_topk_per_image", "num_classes",
             "stride", "in_features", "proposal_append_gt", "smooth_l1_beta", "box_reg_loss_type", "anchor_boundary_thresh")
    return {name: (type(m).__name__, {a: getattr(m, a) for a in attrs if hasattr(m, a)}) for name, m in model.named_modules()}


def test_paper_lazy_config_is_the_yaml_detector():
    torch.manual_seed(0)
    lazy_cfg = load_lazy_config(PAPER, ["train.device=cpu"])
    yaml_cfg = get_ge_cfg(os.path.join(REPO, "configs", "faster_rcnn_ge_r50.yaml"), ["MODEL.DEVICE", "cpu"])
    lazy, yaml = instantiate(lazy_cfg.model), build_model(yaml_cfg)

    lazy_state, yaml_state = lazy.state_dict(), yaml.state_dict()
    assert lazy_state.keys() == yaml_state.keys()
    assert {k: v.shape for k, v in lazy_state.items()} == {k: v.shape for k, v in yaml_state.items()}
    assert {n: p.requires_grad for n, p in lazy.named_parameters()} == {n: p.requires_grad for n, p in yaml.named_parameters()}
    assert _module_settings(lazy) == _module_settings(yaml)
    anchors = [a.tolist() for a in lazy.proposal_generator.anchor_generator.cell_anchors]
    assert anchors == [a.tolist() for a in yaml.proposal_generator.anchor_generator.cell_anchors]
    assert (lazy.roi_heads.pooler.level_poolers[0].output_size, lazy.roi_heads.pooler.level_poolers[0].aligned) == (
        yaml.roi_heads.pooler.level_poolers[0].output_size, yaml.roi_heads.pooler.level_poolers[0].aligned)
    assert lazy.roi_heads.pooler.level_poolers[0].aligned  # ROIAlignV2
    assert type(lazy.roi_heads).__name__ == "GERes5ROIHeads" and not lazy.roi_heads.mask_on

    # the data, the initial weights and the 1x schedule
    assert lazy_cfg.dataloader.train.dataset.names == yaml_cfg.DATASETS.TRAIN[0] == "coco_2014_train"
    assert lazy_cfg.dataloader.test.dataset.names == yaml_cfg.DATASETS.TEST[0] == "coco_2014_val"
    assert lazy_cfg.train.init_checkpoint == yaml_cfg.MODEL.WEIGHTS
    assert lazy_cfg.dataloader.train.total_batch_size == yaml_cfg.SOLVER.IMS_PER_BATCH
    resize = lazy_cfg.dataloader.train.mapper.augmentations[0]
    assert (list(resize.short_edge_length), resize.max_size) == (list(yaml_cfg.INPUT.MIN_SIZE_TRAIN), yaml_cfg.INPUT.MAX_SIZE_TRAIN)
    assert lazy_cfg.train.max_iter == yaml_cfg.SOLVER.MAX_ITER
    lazy_cfg.optimizer.params.model = lazy
    lazy_opt = instantiate(lazy_cfg.optimizer)
    yaml_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=yaml_cfg.SOLVER.BASE_LR)
    multiplier, scheduler = instantiate(lazy_cfg.lr_multiplier), build_lr_scheduler(yaml_cfg, yaml_opt)
    for it in (0, 1, 500, 999, 1000, 59999, 60000, 79999, 80000, 89999):
        scheduler.last_epoch = it - 1
        scheduler.step()  # the learning rate of iteration ``it``
        expected = yaml_opt.param_groups[0]["lr"]
        assert lazy_opt.defaults["lr"] * multiplier(it / lazy_cfg.train.max_iter) == pytest.approx(expected), it
    assert (lazy_opt.defaults["momentum"], lazy_opt.defaults["weight_decay"]) == (
        yaml_cfg.SOLVER.MOMENTUM, yaml_cfg.SOLVER.WEIGHT_DECAY)


def lazy_tool(tiny_shapes, output_dir, *args, extra=()):
    """tools/lazyconfig_train_net.py's flow in this process (detectron2's launch runs one process inline)."""
    return run_lazyconfig_train_net(["--config-file", PAPER, *args, *tiny(tiny_shapes, output_dir), *TINY_C4, *extra])


@pytest.mark.slow
def test_lazy_tool_trains_evaluates_resumes_and_evaluates_only(tiny_shapes, tmp_path, capsys):
    out = tmp_path / "out"
    lazy_tool(tiny_shapes, out, extra=["train.max_iter=2", "train.checkpointer.period=1",
                                       "model.roi_heads.box_predictor.test_score_thresh=0.0"])
    assert (out / "last_checkpoint").read_text() == "model_final.pth" and (out / "model_0000000.pth").exists()
    assert (out / "config.yaml").exists() and (out / "inference" / "coco_instances_results.json").exists()
    log = (out / "log.txt").read_text()
    assert "Evaluation results for bbox" in log and "Starting training from iteration 0" in log

    lazy_tool(tiny_shapes, out, "--resume", extra=["train.max_iter=3"])
    assert "Starting training from iteration 2" in (out / "log.txt").read_text()
    assert torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)["iteration"] == 2

    lazy_tool(tiny_shapes, tmp_path / "eval", "--eval-only", extra=[f"train.init_checkpoint={out / 'model_final.pth'}"])
    log = (tmp_path / "eval" / "log.txt").read_text()
    assert f"Loading from {out / 'model_final.pth'}" in log and "Evaluation results for bbox" in log


@pytest.mark.slow
def test_lazy_run_sigkilled_after_a_checkpoint_and_resumed_ends_bit_identical_to_an_uninterrupted_run(tmp_path):
    names = {"train": "exact_lazy_train", "val": "exact_lazy_val"}
    register = []
    for split, num, seed in (("train", 4, 10), ("val", 2, 11)):
        json_path = tmp_path / f"{split}.json"
        generate_shapes_split(str(tmp_path / split), str(json_path), num, seed, image_size=64, min_side=12, max_side=30)
        register += ["--register-coco", names[split], str(json_path), str(tmp_path / split)]

    def run(out, *args, kill_after=None):
        # momentum SGD, 2 of the 4 images per step (the stream position matters), the config's random flip and
        # resize in this process (num_workers 0: the generators matter), random proposal sampling
        extra = ["train.max_iter=6", "train.checkpointer.period=2", "dataloader.train.total_batch_size=2"]
        tool_args = ["--config-file", PAPER, *register, *args, *tiny(names, tmp_path / out, seed=5), *TINY_C4, *extra]
        return ToolRun("tools/lazyconfig_train_net.py", tool_args, tmp_path / f"{out}{len(args)}.log",
                       kill_after=kill_after).wait(timeout=600)

    returncode, log = run("uninterrupted")
    assert returncode == 0, log[-3000:]
    returncode, log = run("killed", kill_after=3)
    assert returncode == -signal.SIGKILL, log[-3000:]
    assert (tmp_path / "killed" / "last_checkpoint").read_text() == "model_0000003.pth"
    returncode, log = run("killed", "--resume")
    assert returncode == 0 and "Starting training from iteration 4" in log, log[-3000:]
    assert "will not equal an uninterrupted" not in log and "restarts" not in log

    expected, resumed = check_resumed_weights_equal_uninterrupted(tmp_path)
    torch.testing.assert_close(resumed["trainer"]["optimizer"], expected["trainer"]["optimizer"], rtol=0, atol=0)


@pytest.mark.slow
def test_a_lazy_checkpoint_without_exact_resume_state_resumes_with_a_warning_saying_what_is_lost(
        tiny_shapes, tmp_path, caplog):
    trainer = LazyTrainer(tiny_lazy_cfg(PAPER, tiny_shapes, tmp_path, ["train.max_iter=2"]))
    trainer.resume_or_load(resume=False)
    trainer.train()
    path = tmp_path / "model_final.pth"
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    # what detectron2's own tools/lazyconfig_train_net.py saves: SimpleTrainer's state (the optimizer's among it)
    assert "optimizer" in checkpoint["trainer"]
    del checkpoint["trainer"]["hooks"]["ExactResumeState"]
    torch.save(checkpoint, path)

    resumed = LazyTrainer(tiny_lazy_cfg(PAPER, tiny_shapes, tmp_path, ["train.max_iter=3"]))
    with caplog.at_level(logging.WARNING, logger="ge_detectron"):
        resumed.resume_or_load(resume=True)
    text = " ".join(r.getMessage() for r in caplog.records if r.name.startswith("ge_detectron"))
    assert "holds no data stream position and random generator states (the data stream restarts)" in text
    assert "optimizer state" not in text and "resumes at iteration 2 with its weights, optimizer and LR schedule" in text
    assert "run without --resume, with train.init_checkpoint set to the checkpoint" in text
    assert resumed.start_iter == 2
    resumed.train()
    assert resumed.iter == 3


@pytest.mark.slow
def test_lazy_tool_stops_on_a_non_finite_loss_and_keeps_the_last_good_checkpoint(tiny_shapes, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=r"error: training stopped, (the loss|the model's weights) (is|are) not finite.*"
                                         r"iteration=\d+.*The last good checkpoint is kept"):
        lazy_tool(tiny_shapes, out, extra=["train.max_iter=30", "train.checkpointer.period=1", "optimizer.lr=1e12"])
    state = torch.load(out / (out / "last_checkpoint").read_text(), map_location="cpu", weights_only=False)["model"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


@pytest.mark.parametrize("extra,message", [
    (["train.max_iters=5"], r"override 'train.max_iters=5': .* has no key 'train.max_iters' \(write \+train.max_iters=5"),
    (["train.max_iter"], r"override 'train.max_iter' is not key=value"),
    (["model.backbone.stages.ge_extent=6"], r"cannot build the model: ValueError: GatherExcite extent=6 is invalid"),
    (["model.backbone.stages.ge_stages=[res1]"], r"cannot build the model: ValueError: ge_stages=\['res1'\] is invalid"),
    (["+train.dist_timeout=0"], r"train.dist_timeout = 0 is invalid: the seconds a process waits for the others, > 0\."),
    (["model.roi_heads.num_classes=80"],
     r"model.roi_heads.num_classes = 80 but dataset 'tiny_shapes_train' has 4 categories \(circle, square, triangle, "
     r"cross\): set model.roi_heads.num_classes to 4"),
    (["train.device=cuda"] if not torch.cuda.is_available() else ["dataloader.train.total_batch_size=3"],
     r"train.device is 'cuda' but no CUDA GPU is visible" if not torch.cuda.is_available() else "not divisible"),
])
def test_lazy_tool_errors_before_training_name_the_problem(extra, message, tiny_shapes, tmp_path):
    with pytest.raises(SystemExit, match="^error: " + message):
        lazy_tool(tiny_shapes, tmp_path, extra=extra)
    assert not (tmp_path / "last_checkpoint").exists()


@pytest.mark.slow
def test_lazy_tool_missing_config_is_one_line_on_stderr(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(REPO, "tools", "lazyconfig_train_net.py"), "--config-file",
                             str(tmp_path / "nope.py"), "train.max_iter=1"], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: config file not found: {str(tmp_path / 'nope.py')!r} (neither a file nor a model-zoo name; "
        "`python -c 'from ge_detectron import model_zoo; print(model_zoo.list_configs())'` lists the names).")
