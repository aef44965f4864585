"""What several test modules share: the configs' paths, the tiny configs (a narrow R50 at 64 px, in YAML and
LazyConfig syntax, and for pretraining), tiny generated datasets, and the tools run in a subprocess with test
hooks. Fixtures are in conftest.py.

Run as a script, it is that subprocess harness: ``python tests/helpers.py TOOL ARGS...`` runs TOOL (e.g.
tools/train_net.py) with ARGS, and with the hooks that the environment asks for:

- ``KILL_AFTER_ITERATION=N``: the process SIGKILLs itself after every hook of iteration N has run (the
  checkpointer's among them): a kill at an exact point, in the first run of the workers only (torchrun
  restarts them with the same environment); with ``KILL_RANK=R`` only the process of rank R does, with
  ``KILL_SIGNAL=SIGSTOP`` it stops itself instead (a process that hangs without closing its connections), and with ``KILL_RECORD=FILE`` it first writes to FILE (JSON) the inode, mtime (ns) and SHA-256 of
  each file then in the output directory, so that a test can tell whether a later run rewrote them;
- ``RANK_STATE_DIR=DIR``: after training, every process saves its model's final parameters and buffers
  (unwrapped from DDP, on the CPU) to ``DIR/rank{RANK}.pth``, so that a test can compare data-parallel
  processes' weights.
"""
import hashlib
import json
import os
import runpy
import signal
import socket
import subprocess
import sys

import ge_detectron  # noqa: F401  (detectron2's compatibility fixes before detectron2 is imported)
import torch
from detectron2.engine import HookBase, TrainerBase
from detectron2.layers import ShapeSpec
from detectron2.utils import comm

from ge_detectron.data import generate_shapes_split, shape_classes
from ge_detectron.detection.lazy import load_lazy_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "configs", "demo", "faster_rcnn_ge_theta_e8_r50_fpn_shapes.yaml")
MASK_DEMO = os.path.join(REPO, "configs", "demo", "mask_rcnn_ge_theta_e8_r50_fpn_shapes.yaml")
RETINANET = os.path.join(REPO, "configs", "retinanet_ge_r50_fpn.yaml")
PAPER = os.path.join(REPO, "configs", "faster_rcnn_ge_r50.py")
PRETRAIN_DEMO = os.path.join(REPO, "configs", "pretrain", "demo_shapes.yaml")

# A narrow R50 (about 1/16 of the widths): fast to build, train and checkpoint.
NARROW_R50 = ["MODEL.RESNETS.STEM_OUT_CHANNELS", "16", "MODEL.RESNETS.WIDTH_PER_GROUP", "16",
              "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"]
# YAML detection configs: the narrow R50-FPN at 64 px, 2 images per step on the CPU.
TINY = ["INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64", "INPUT.MIN_SIZE_TEST", "64",
        "INPUT.MAX_SIZE_TEST", "64", "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0",
        "MODEL.RPN.POST_NMS_TOPK_TEST", "50", "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "()",
        "MODEL.RESNETS.NORM", "BN", *NARROW_R50, "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.FPN.NORM", "",
        "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
        # At 64 px the E8 gathers of res3-res5 end in 1x1 maps: BN there would normalise each channel over the
        # batch's 2 values, and its backward scales gradients by up to 1/sqrt(eps) ~ 316 per gather conv (the 2
        # values equal when an unreadable image's replacement is the other image of the batch): inf in the stem.
        "MODEL.GE.NORM", "FrozenBN"]
# YAML pretraining configs: the narrow R50 classifier on 32 px images, 8 per step, a global gather.
TINY_PRETRAIN = ["PRETRAIN.GENERATE_DEMO_DATA", "False", "PRETRAIN.CROP_SIZE", "32", "PRETRAIN.RESIZE_SIZE", "32",
                 "SOLVER.IMS_PER_BATCH", "8", "PRETRAIN.EVAL_IMS_PER_BATCH", "16", "DATALOADER.NUM_WORKERS", "0",
                 *NARROW_R50, "MODEL.GE.EXTENT", "0", "MODEL.GE.GLOBAL_INPUT_SIZE", "32"]


def tiny(tiny_shapes, output_dir, seed=3):
    """LazyConfig key=value overrides: the tiny generated data at 64 px, 1 iteration of 2 images on the CPU."""
    return ["train.device=cpu", "train.init_checkpoint=", "train.max_iter=1", f"train.output_dir={output_dir}",
            "train.amp.enabled=false", "train.eval_period=0", "train.checkpointer.period=100", f"+train.seed={seed}",
            "optimizer.lr=0.001", "dataloader.train.total_batch_size=2", "dataloader.train.num_workers=0",
            "dataloader.test.num_workers=0", f"dataloader.train.dataset.names={tiny_shapes['train']}",
            f"dataloader.test.dataset.names={tiny_shapes['val']}", "model.roi_heads.num_classes=4",
            "dataloader.test.mapper.augmentations.0.short_edge_length=64",
            "dataloader.test.mapper.augmentations.0.max_size=64"]


# NARROW_R50 in LazyConfig syntax: stem 16, res2 64 channels, bottlenecks from 16.
NARROW_BOTTOM_UP = ["stem.out_channels=16", "stages.stem_out_channels=16", "stages.res2_out_channels=64",
                    "stages.width_per_group=16"]
# the paper's C4 detector: narrow res2-res4 and res5 (head), 64 px training; all reachable by key=value
TINY_C4 = [*(f"model.backbone.{o}" for o in NARROW_BOTTOM_UP), "model.proposal_generator.head.in_channels=256",
           "model.roi_heads.res5.in_channels=256", "model.roi_heads.res5.bottleneck_channels=128",
           "model.roi_heads.res5.out_channels=512", "model.backbone.stem.norm=BN", "model.backbone.stages.norm=BN",
           "model.roi_heads.res5.norm=BN", "model.backbone.freeze_at=0", "model.roi_heads.batch_size_per_image=16",
           "model.roi_heads.pooler.output_size=7",
           "model.proposal_generator.post_nms_topk=[200,50]",
           "dataloader.train.mapper.augmentations.0.short_edge_length=[64]",
           "dataloader.train.mapper.augmentations.0.max_size=64",
           # no batch statistics over the 1x1 maps the E8 gathers end in at 64 px (see TINY)
           "model.backbone.stages.ge_norm=FrozenBN", "model.roi_heads.res5.ge_norm=FrozenBN"]
# the LSJ Mask R-CNN: 64 px jitter and crop (its ShapeSpecs are narrowed in Python, narrow_fpn_heads)
TINY_LSJ = [*(f"model.backbone.bottom_up.{o}" for o in NARROW_BOTTOM_UP), "model.backbone.out_channels=32",
            "model.proposal_generator.head.in_channels=32", "model.roi_heads.batch_size_per_image=64",
            "model.proposal_generator.post_nms_topk=[200,50]",
            "dataloader.train.mapper.augmentations.0.target_height=64",
            "dataloader.train.mapper.augmentations.0.target_width=64",
            "dataloader.train.mapper.augmentations.1.crop_size=[64,64]",
            "model.backbone.bottom_up.stages.ge_norm=FrozenBN"]  # as in TINY_C4


def narrow_fpn_heads(cfg):
    heads = cfg.model.roi_heads
    heads.box_head.input_shape = ShapeSpec(channels=32, height=7, width=7)
    heads.box_head.conv_dims, heads.box_head.fc_dims = [32] * len(heads.box_head.conv_dims), [64]
    heads.box_predictor.input_shape = ShapeSpec(channels=64)
    heads.mask_head.input_shape = ShapeSpec(channels=32, height=14, width=14)
    heads.mask_head.conv_dims = [32] * len(heads.mask_head.conv_dims)
    return cfg


def tiny_lazy_cfg(path, tiny_shapes, output_dir, extra=()):
    """The LazyConfig at ``path`` with tiny() and the narrow model for its kind (C4 or LSJ), then ``extra``."""
    lsj = "LSJ" in path
    cfg = load_lazy_config(path, tiny(tiny_shapes, output_dir) + (TINY_LSJ if lsj else TINY_C4) + list(extra))
    return narrow_fpn_heads(cfg) if lsj else cfg


def shapes_root(tmp_path, num_train=4, num_val=2):
    """A tiny ge_shapes dataset where the tools (DETECTRON2_DATASETS=tmp_path) look for it."""
    root = tmp_path / "ge_shapes"
    for split, num, seed in (("train", num_train, 0), ("val", num_val, 1)):
        generate_shapes_split(str(root / split), str(root / f"{split}.json"), num, seed, image_size=64,
                              min_side=12, max_side=30)
    return root


def class_folders(tmp_path, train_per_class=2, val_per_class=2):
    """tmp_path/train and tmp_path/val: the 8 shape classes' folders of 32x32 PNGs (pretraining data)."""
    shape_classes.generate_split(str(tmp_path / "train"), train_per_class, seed=0, size=32)
    shape_classes.generate_split(str(tmp_path / "val"), val_per_class, seed=1, size=32)
    return tmp_path


def free_port():
    """A TCP port of 127.0.0.1 that no process listened on a moment ago (another may take it since)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ToolRun:
    """``tool`` (a path under tools/) in a subprocess through this module's harness, its output going to
    ``log_path`` (a pipe nobody reads would block it); with ``kill_after``, SIGKILLed after that iteration's
    hooks (its checkpoint among them)."""

    def __init__(self, tool, args, log_path, env=None, kill_after=None):
        cmd = [sys.executable, os.path.abspath(__file__), os.path.join(REPO, tool), *map(str, args)]
        env = {k: v for k, v in {**os.environ, **(env or {})}.items() if k != "KILL_AFTER_ITERATION"}
        env.update({} if kill_after is None else {"KILL_AFTER_ITERATION": str(kill_after)})
        self.log_path = log_path
        with open(log_path, "w") as log:
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)

    def wait(self, timeout=300):
        self.proc.wait(timeout=timeout)
        return self.proc.returncode, self.log_path.read_text()


def check_resumed_weights_equal_uninterrupted(tmp_path):
    """The final checkpoints of runs in tmp_path/uninterrupted and tmp_path/killed (killed after iteration 3,
    resumed, 5 iterations in all) hold bit-identical weights, which differ from those at the kill; returns both."""
    load = lambda path: torch.load(path, map_location="cpu", weights_only=True)  # noqa: E731
    expected, resumed = (load(tmp_path / out / "model_final.pth") for out in ("uninterrupted", "killed"))
    at_kill = load(tmp_path / "killed" / "model_0000003.pth")["model"]
    assert expected["iteration"] == resumed["iteration"] == 5
    assert expected["model"].keys() == resumed["model"].keys()
    assert [k for k, v in expected["model"].items() if not torch.equal(v, resumed["model"][k])] == []
    assert any(not torch.equal(v, at_kill[k]) for k, v in expected["model"].items())  # it trained after the kill
    return expected, resumed


class SaveRankState(HookBase):
    def __init__(self, directory):
        self.directory = directory

    def after_train(self):
        model = self.trainer.model
        model = getattr(model, "module", model)
        state = {"iteration": self.trainer.iter,
                 "parameters": {k: v.detach().cpu() for k, v in model.named_parameters()},
                 "buffers": {k: v.detach().cpu() for k, v in model.named_buffers()}}
        os.makedirs(self.directory, exist_ok=True)
        torch.save(state, os.path.join(self.directory, f"rank{comm.get_rank()}.pth"))


def with_rank_state_saved(register_hooks, directory):
    """``TrainerBase.register_hooks`` that appends SaveRankState after the trainer's own hooks."""
    def register(trainer, hooks):
        register_hooks(trainer, [*hooks, SaveRankState(directory)])
    return register


def file_records(directory):
    """{name: [inode, mtime in ns, SHA-256]} of the files in ``directory``."""
    records = {}
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                stat = os.stat(path)
                records[name] = [stat.st_ino, stat.st_mtime_ns, hashlib.sha256(f.read()).hexdigest()]
    return records


def with_sigkill_after(after_step, iteration, rank=None, record=None, sig=signal.SIGKILL):
    """``TrainerBase.after_step`` (every hook's after_step) followed by a SIGKILL (or ``sig``) at ``iteration``
    (of the process of ``rank`` alone if given) unless torchrun restarted the process, after writing the
    output directory's ``file_records`` to ``record``."""
    first_run = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"

    def step(trainer):
        after_step(trainer)
        if first_run and trainer.iter == iteration and rank in (None, comm.get_rank()):
            if record:
                with open(record, "w") as f:
                    json.dump(file_records(trainer.checkpointer.save_dir), f)
            os.kill(os.getpid(), sig)
    return step


if __name__ == "__main__":
    if "RANK_STATE_DIR" in os.environ:
        TrainerBase.register_hooks = with_rank_state_saved(TrainerBase.register_hooks, os.environ["RANK_STATE_DIR"])
    if "KILL_AFTER_ITERATION" in os.environ:
        rank = os.environ.get("KILL_RANK")
        TrainerBase.after_step = with_sigkill_after(TrainerBase.after_step, int(os.environ["KILL_AFTER_ITERATION"]),
                                                    rank=None if rank is None else int(rank),
                                                    record=os.environ.get("KILL_RECORD"),
                                                    sig=signal.Signals[os.environ.get("KILL_SIGNAL", "SIGKILL")])
    tool = sys.argv.pop(1)
    sys.argv[0] = tool
    runpy.run_path(tool, run_name="__main__")
