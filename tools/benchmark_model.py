#!/usr/bin/env python
"""Training-step time and inference throughput of Faster R-CNN R50-FPN with and without Gather-Excite.

Models: plain R50, GE-θ⁻ and GE-θ (extent 8 by default, in res3-res5 as configs/faster_rcnn_ge_r50_fpn.yaml),
each GE model with the pure-PyTorch excite (MODEL.GE.FUSED off) and with the fused operator (on).
Built from detectron2's model-zoo config COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml with
``add_ge_config`` and the GE-ResNet FPN backbone, randomly initialised. A training step is forward,
backward and the optimizer step (SGD from detectron2's build_optimizer) on one fixed synthetic batch,
under AMP (float16 autocast + GradScaler) on CUDA. The learning rate is 0: the step costs the same, and
the weights, so the proposals and the work, stay fixed from iteration to iteration. Times are medians;
the models take turns step by step, so that background load on a shared machine hits all alike.

    python tools/benchmark_model.py                   # CUDA: 2 images of 800x1216, 50 steps
    python tools/benchmark_model.py --device cpu      # CPU: 2 images of 224x320, 5 steps
"""
import argparse
import datetime
import json
import os
import statistics
import time

import torch

import ge_detectron  # noqa: F401  (compat fixes and registration before detectron2 is used)
from detectron2 import model_zoo
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.solver import build_optimizer
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from ge_detectron import add_ge_config
from ge_detectron import ops

from benchmark_excite import cpu_name  # tools/ is on sys.path when this script runs

# name, MODEL.GE.VARIANT, MODEL.GE.FUSED
MODELS = [("R50", "none", "off"), ("GE-θ⁻ reference", "theta_minus", "off"), ("GE-θ⁻ fused", "theta_minus", "on"),
          ("GE-θ reference", "theta", "off"), ("GE-θ fused", "theta", "on")]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    p.add_argument("--image", help="HxW of the synthetic images (default 800x1216 on CUDA, 224x320 on CPU)")
    p.add_argument("--batch", type=int, default=2, help="images per step")
    p.add_argument("--iters", type=int, help="timed training steps (default 50 CUDA, 5 CPU)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default 10 CUDA, 2 CPU)")
    p.add_argument("--extent", type=int, default=8, help="GE extent (0 = global)")
    p.add_argument("--stages", nargs="+", default=["res3", "res4", "res5"], help="stages with GE")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help="default: on for CUDA")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    p.add_argument("--json", default="output/benchmark_model_{device}.json")
    args = p.parse_args()
    cuda = args.device == "cuda"
    args.image = args.image or ("800x1216" if cuda else "224x320")
    args.iters = args.iters or (50 if cuda else 5)
    args.warmup = args.warmup if args.warmup is not None else (10 if cuda else 2)
    args.amp = cuda if args.amp is None else args.amp
    return args


def build(variant, fused, args):
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"))
    add_ge_config(cfg)
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.BACKBONE.NAME = "build_ge_resnet_fpn_backbone"
    cfg.MODEL.GE.VARIANT = variant
    cfg.MODEL.GE.EXTENT = args.extent
    cfg.MODEL.GE.STAGES = list(args.stages)
    cfg.MODEL.GE.FUSED = fused
    cfg.MODEL.DEVICE = args.device
    cfg.SOLVER.BASE_LR = 0.0
    torch.manual_seed(0)
    model = build_model(cfg)
    return model, build_optimizer(cfg, model)


def synthetic_batch(args):
    gen = torch.Generator().manual_seed(0)
    H, W = (int(v) for v in args.image.lower().split("x"))
    batch = []
    for _ in range(args.batch):
        xy = torch.rand(8, 2, generator=gen) * torch.tensor([W * 0.7, H * 0.7])
        wh = torch.rand(8, 2, generator=gen) * torch.tensor([W * 0.3, H * 0.3]) + 8
        instances = Instances((H, W), gt_boxes=Boxes(torch.cat([xy, xy + wh], dim=1)),
                              gt_classes=torch.randint(0, 80, (8,), generator=gen))
        batch.append({"image": torch.randint(0, 256, (3, H, W), generator=gen, dtype=torch.uint8),
                      "height": H, "width": W, "instances": instances})
    return batch


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def round_robin_ms(fns, iters, warmup, device):
    """Median ms of each function over `iters` rounds after `warmup`; a round runs every function once,
    so that background load on a shared machine hits all models alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def train_step_fn(model, optimizer, batch, args):
    scaler = torch.amp.GradScaler(args.device, enabled=args.amp)

    def step():
        model.train()
        with torch.autocast(args.device, dtype=torch.float16, enabled=args.amp):
            losses = sum(model(batch).values())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(losses).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def inference_fn(model, batch, args):
    inputs = [{k: v for k, v in d.items() if k != "instances"} for d in batch]

    def infer():
        model.eval()
        with torch.no_grad(), torch.autocast(args.device, dtype=torch.float16, enabled=args.amp):
            model(inputs)

    return infer


def main():
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    models = [m for m in MODELS if m[2] == "off" or ops.native_kernels(args.device)]
    if len(models) < len(MODELS):
        print(f"the fused operator has no {args.device} kernels ({ops.unavailable_reason(args.device)}): "
              "fused models skipped")
    batch = synthetic_batch(args)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else cpu_name()
    print(f"{device_name} | torch {torch.__version__} | {args.batch} x {args.image} | AMP {args.amp} | "
          f"threads {torch.get_num_threads()} | GE extent {args.extent} in {', '.join(args.stages)} | "
          f"median of {args.iters} steps, the models taking turns")
    built = {name: build(variant, fused, args) for name, variant, fused in models}
    with EventStorage():  # detectron2's training losses log to it
        train = round_robin_ms({name: train_step_fn(m, opt, batch, args) for name, (m, opt) in built.items()},
                               args.iters, args.warmup, args.device)
    infer = round_robin_ms({name: inference_fn(m, batch, args) for name, (m, _) in built.items()},
                           args.iters, args.warmup, args.device)
    rows = [{"model": name, "variant": variant, "fused": fused, "train_step_ms": train[name],
             "inference_images_per_s": len(batch) / infer[name] * 1e3} for name, variant, fused in models]
    base = rows[0]
    print(f"{'model':<18}{'train step ms':>15}{'vs R50':>8}{'infer img/s':>13}{'vs R50':>8}")
    for r in rows:
        r["train_vs_r50"] = r["train_step_ms"] / base["train_step_ms"]
        r["inference_vs_r50"] = r["inference_images_per_s"] / base["inference_images_per_s"]
        print(f"{r['model']:<18}{r['train_step_ms']:>15.1f}{r['train_vs_r50']:>8.3f}"
              f"{r['inference_images_per_s']:>13.2f}{r['inference_vs_r50']:>8.3f}")
    path = args.json.format(device=args.device)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump({"device": device_name, "torch": torch.__version__, "date": datetime.date.today().isoformat(),
                   "threads": torch.get_num_threads(), "args": vars(args), "results": rows}, f, indent=1)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
