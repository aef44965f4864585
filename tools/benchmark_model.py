#!/usr/bin/env python
"""Training-step time and inference throughput of Faster R-CNN R50-FPN with and without Gather-Excite.

Models: plain R50, GE-θ⁻ and GE-θ (extent 8 by default, in res3-res5 as configs/faster_rcnn_ge_r50_fpn.yaml),
each GE model with the pure-PyTorch excite (MODEL.GE.FUSED off) and with the fused operator (on).
Built from detectron2's model-zoo config COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml with
``add_ge_config`` and the GE-ResNet FPN backbone, randomly initialised. A training step is forward,
backward and the optimizer step (SGD from detectron2's build_optimizer) on one fixed synthetic batch,
under AMP (float16 autocast + GradScaler) on CUDA. The learning rate is 0: the step costs the same, and
the weights, so the proposals and the work, stay fixed from iteration to iteration.

Equal work in the RoI heads: with its frozen norms at their initial identity, a randomly initialised
ResNet's activations grow from block to block, the RPN regresses most anchors off the image, and how
many proposals survive, hence how many RoIs the box head gets, depends on the model (docs/benchmarks.md:
at 2 x 224x320, 20 RoIs per training step for R50 and 362 for GE-θ). So each model's frozen norms are first given the
mean and variance of their inputs on the benchmark batch, as a pretrained backbone's frozen norms have
them; every model then gets the config's full 1000 proposals per image and 512 sampled RoIs per image.
``--no-calibrate-norms`` keeps the identity norms.

Times are taken in rounds; a round runs every model once, starting one model later each round, so
that background load on a shared machine hits all alike. The table gives the median over the rounds and
the best (minimum) time: load only ever adds time, so on a shared machine the best is the closer
estimate of an idle machine's time; the load average before and after is printed.
The per-block breakdown then times the real modules of each bottleneck block on the inputs they saw in
a training step (captured by forward pre-hooks), the models taking turns in the same way: the block's
forward, and in a GE block its GatherExcite module and that module's gather_logits; the tail (the excite
relu(x * sigmoid(up(g)) + shortcut)) is GatherExcite - gather, the convolutions (conv1 to conv3 and the
shortcut) block - GatherExcite. For training (forward + backward) and inference (forward), summed over
each stage's blocks. The timing harness is ge_detectron.benchmark's.

    python tools/benchmark_model.py                   # CUDA: 2 images of 800x1216, 50 steps
    python tools/benchmark_model.py --device cpu      # CPU: 2 images of 224x320, 5 steps
    python tools/benchmark_model.py --device cpu MODEL.RESNETS.DEPTH 101   # trailing config overrides
"""
import argparse
import datetime
import json
import os
import statistics

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
from ge_detectron.benchmark import Timer, calibrate_frozen_norms, device_name, rotations

# name, MODEL.GE.VARIANT, MODEL.GE.FUSED
MODELS = [("R50", "none", "off"), ("GE-θ⁻ reference", "theta_minus", "off"), ("GE-θ⁻ fused", "theta_minus", "on"),
          ("GE-θ reference", "theta", "off"), ("GE-θ fused", "theta", "on")]
MODES = ("train", "inference")
STATISTICS = {"median": statistics.median, "min": min}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    p.add_argument("--image", help="HxW of the synthetic images (default 800x1216 on CUDA, 224x320 on CPU)")
    p.add_argument("--batch", type=int, default=2, help="images per step")
    p.add_argument("--iters", type=int, help="timed training steps (default 50 CUDA, 5 CPU)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default 10 CUDA, 2 CPU)")
    p.add_argument("--breakdown-iters", type=int,
                   help="rounds of the per-block breakdown (default 50 CUDA, 10 CPU; 0 skips it)")
    p.add_argument("--breakdown-stat", choices=sorted(STATISTICS), default="median",
                   help="the breakdown's statistic over rounds: min is the better estimate on a loaded machine")
    p.add_argument("--extent", type=int, default=8, help="GE extent (0 = global)")
    p.add_argument("--stages", nargs="+", default=["res3", "res4", "res5"], help="stages with GE")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help="default: on for CUDA")
    p.add_argument("--calibrate-norms", action=argparse.BooleanOptionalAction, default=True,
                   help="give the frozen norms their inputs' statistics first (see above)")
    p.add_argument("--profile", action="store_true",
                   help="after the breakdown, print torch.profiler's op tables of the GE models' gathers and tails")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    p.add_argument("--json", default="output/benchmark_model_{device}.json")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="trailing KEY VALUE pairs override every model's config")
    args = p.parse_args()
    cuda = args.device == "cuda"
    args.image = args.image or ("800x1216" if cuda else "224x320")
    args.iters = args.iters if args.iters is not None else (50 if cuda else 5)
    if args.iters < 1:
        p.error(f"--iters {args.iters}: time at least one step")
    args.warmup = args.warmup if args.warmup is not None else (10 if cuda else 2)
    args.breakdown_iters = args.breakdown_iters if args.breakdown_iters is not None else (50 if cuda else 10)
    args.amp = cuda if args.amp is None else args.amp
    return args


def build(variant, fused, args, batch):
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
    cfg.merge_from_list(args.opts)
    torch.manual_seed(0)
    model = build_model(cfg)
    if args.calibrate_norms:
        calibrate_frozen_norms(model, inference_inputs(batch))
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


def inference_inputs(batch):
    return [{k: v for k, v in d.items() if k != "instances"} for d in batch]


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
    inputs = inference_inputs(batch)

    def infer():
        model.eval()
        with torch.no_grad(), torch.autocast(args.device, dtype=torch.float16, enabled=args.amp):
            model(inputs)

    return infer


def count_rois(model):
    """A list that gets, on each forward of the model's box head, the number of RoIs it was given."""
    counts = []
    model.roi_heads.box_head.register_forward_pre_hook(lambda module, inputs: counts.append(len(inputs[0])))
    return counts


def part_call(fn, inputs, params, mode, args):
    """A call of ``fn(*inputs)`` under the benchmark's autocast. Training: forward, then the gradients of
    the inputs and ``params`` that require them (none in a frozen stage) for fixed random gradients of the
    outputs, returned rather than accumulated into ``.grad``; inference: forward without autograd."""
    def forward():
        with torch.autocast(args.device, dtype=torch.float16, enabled=args.amp):
            out = fn(*inputs)
        return [t for t in (out if isinstance(out, tuple) else (out,)) if t.requires_grad]

    if mode == "inference":
        return torch.no_grad()(forward)
    grads = [torch.randn_like(t) for t in forward()]
    leaves = [t for t in [*inputs, *params] if t.requires_grad]

    def forward_backward():
        outputs = forward()
        if grads:
            torch.autograd.grad(outputs, leaves, grads, allow_unused=True)
    return forward_backward


def block_part_calls(model, batch, args):
    """{mode: [(stage, part, call)]} for every bottleneck block of the model's bottom-up ResNet: the
    block's own forward ("block") and, in a GE block, its GatherExcite module ("ge": gather and tail) and
    that module's gather ("gather"), each on the inputs it saw in a training forward, each input
    requiring gradients as there."""
    resnet = model.backbone.bottom_up
    blocks = [(name, block) for name, stage in zip(resnet.stage_names, resnet.stages) for block in stage]
    seen = {}

    def keep_inputs(key):
        def hook(module, inputs):
            seen.setdefault(key, inputs)
        return hook

    hooks = [block.register_forward_pre_hook(keep_inputs((i, "block"))) for i, (_, block) in enumerate(blocks)]
    hooks += [block.ge.register_forward_pre_hook(keep_inputs((i, "ge")))
              for i, (_, block) in enumerate(blocks) if getattr(block, "ge", None) is not None]
    model.train()
    with EventStorage(), torch.autocast(args.device, dtype=torch.float16, enabled=args.amp):
        model(batch)
    for hook in hooks:
        hook.remove()
    calls = {mode: [] for mode in MODES}
    for i, (stage, block) in enumerate(blocks):
        parts = [("block", block, seen[i, "block"], list(block.parameters()))]
        if (i, "ge") in seen:
            ge = block.ge
            parts += [("ge", ge, seen[i, "ge"], list(ge.parameters())),
                      ("gather", ge.gather_logits, seen[i, "ge"][:1], list(ge.parameters()))]
        for part, fn, inputs, params in parts:
            leaves = [t.detach().requires_grad_(t.requires_grad) for t in inputs]
            for mode in MODES:
                calls[mode].append((stage, part, part_call(fn, leaves, params, mode, args)))
    return calls


def breakdown_ms(built, calls, timer, args):
    """{(model, stage, part, mode): ms per step}: the median over rounds of the part's time summed over the
    stage's blocks, for ``calls[model]`` from block_part_calls; then, for GE blocks, "convs" = block - ge
    (conv1 to conv3 and the shortcut) and "tail" = ge - gather (the excite relu(x * sigmoid(up(g)) +
    shortcut)). A round runs all parts of one model, then of the next, starting one model later each
    round, as the whole steps do."""
    result = {}
    for mode in MODES:
        for model, _ in built.values():
            model.train(mode == "train")
        rounds = {}
        for i, order in enumerate(rotations(built, args.breakdown_iters + 1)):
            for name in order:
                sums = {}
                for stage, part, call in calls[name][mode]:
                    sums[stage, part] = sums.get((stage, part), 0.0) + timer.ms(call)
                if i:  # the first round warms up
                    for key, ms in sums.items():
                        rounds.setdefault((name, *key, mode), []).append(ms)
        result.update({key: STATISTICS[args.breakdown_stat](ms) for key, ms in rounds.items()})
    for (name, stage, part, mode), ms in list(result.items()):
        if part == "ge":
            result[name, stage, "convs", mode] = result[name, stage, "block", mode] - ms
            result[name, stage, "tail", mode] = ms - result[name, stage, "gather", mode]
    return result


def print_profiles(built, calls, args):
    """torch.profiler's op table of each GE model's gathers and tails in training (forward + backward)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if args.device == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    sort_by = "self_device_time_total" if args.device == "cuda" else "self_cpu_time_total"
    for name, (model, _) in built.items():
        model.train()
        for part in ("gather", "tail"):
            part_calls = [call for _, p, call in calls[name]["train"] if p == part]
            if not part_calls:
                continue
            with torch.profiler.profile(activities=activities) as prof:
                for _ in range(args.breakdown_iters):
                    for call in part_calls:
                        call()
                    if args.device == "cuda":
                        torch.cuda.synchronize()
            print(f"\n{name}: the {part} of every block, forward + backward, {args.breakdown_iters} rounds "
                  f"(divide the totals by {args.breakdown_iters} for one step)")
            print(prof.key_averages().table(sort_by=sort_by, row_limit=15))


def print_breakdown(breakdown, names, args):
    stages = list(dict.fromkeys(stage for _, stage, _, _ in breakdown))
    columns = [(part, mode) for part in ("convs", "gather", "tail", "block") for mode in MODES]

    def cell(name, stage, part, mode):
        ms = [v for (n, s, p, m), v in breakdown.items() if (n, p, m) == (name, part, mode) and stage in (s, "all")]
        width = 14 if mode == "train" else 8
        return f"{sum(ms):>{width}.1f}" if ms else f"{'-':>{width}}"

    print(f"\nper-block breakdown: ms per step, each stage's blocks summed, {args.breakdown_stat} of "
          f"{args.breakdown_iters} rounds; train = forward + backward, infer = forward;\n"
          "block = the block's forward; in GE blocks gather = GatherExcite.gather_logits, "
          "tail = GatherExcite - gather, convs = block - GatherExcite")
    print(f"{'model':<18}{'stage':<7}" + "".join(f"{p + ' train':>14}" if m == "train" else f"{'infer':>8}"
                                             for p, m in columns))
    for name in names:
        for stage in stages + ["all"]:
            print(f"{name:<18}{stage:<7}" + "".join(cell(name, stage, p, m) for p, m in columns))


def main():
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    models = [m for m in MODELS if m[2] == "off" or ops.native_kernels(args.device)]
    if len(models) < len(MODELS):
        print(f"the fused operator has no {args.device} kernels ({ops.unavailable_reason(args.device)}): "
              "fused models skipped")
    batch = synthetic_batch(args)
    timer = Timer(args.device, args.iters, args.warmup)
    load = [os.getloadavg()]
    print(f"{device_name(args.device)} | torch {torch.__version__} | {args.batch} x {args.image} | AMP {args.amp} | "
          f"threads {torch.get_num_threads()} | GE extent {args.extent} in {', '.join(args.stages)} | "
          f"frozen norms {'calibrated' if args.calibrate_norms else 'identity'} | {args.iters} rounds, "
          f"the models taking turns | load average {load[0][0]:.2f}")
    built = {name: build(variant, fused, args, batch) for name, variant, fused in models}
    rois = {name: count_rois(model) for name, (model, _) in built.items()}
    with EventStorage():  # detectron2's training losses log to it
        train = timer.times({name: train_step_fn(m, opt, batch, args) for name, (m, opt) in built.items()})
    train_rois = {name: counts[-1] for name, counts in rois.items()}
    infer = timer.times({name: inference_fn(m, batch, args) for name, (m, _) in built.items()})
    load.append(os.getloadavg())
    rows = []
    for name, variant, fused in models:
        rows.append({"model": name, "variant": variant, "fused": fused, "train_rois": train_rois[name],
                     "inference_rois": rois[name][-1], "train_step_ms_all": train[name], "inference_ms_all": infer[name]})
        for stat, fn in (("", statistics.median), ("_min", min)):
            rows[-1][f"train_step_ms{stat}"] = fn(train[name])
            rows[-1][f"inference_images_per_s{stat}"] = len(batch) / fn(infer[name]) * 1e3
    print(f"{'':<18}{'median':^30}{'best (min ms)':^30}")
    print(f"{'model':<18}" + f"{'train ms':>10}{'vs R50':>7}{'img/s':>7}{'vs R50':>7}" * 2 + f"{'RoIs train/infer':>19}")
    for r in rows:
        cells = []
        for stat in ("", "_min"):
            r[f"train_vs_r50{stat}"] = r[f"train_step_ms{stat}"] / rows[0][f"train_step_ms{stat}"]
            r[f"inference_vs_r50{stat}"] = r[f"inference_images_per_s{stat}"] / rows[0][f"inference_images_per_s{stat}"]
            cells.append(f"{r[f'train_step_ms{stat}']:>10.1f}{r[f'train_vs_r50{stat}']:>7.3f}"
                         f"{r[f'inference_images_per_s{stat}']:>7.2f}{r[f'inference_vs_r50{stat}']:>7.3f}")
        print(f"{r['model']:<18}{''.join(cells)}{str(r['train_rois']) + ' / ' + str(r['inference_rois']):>19}")
    print(f"load average (1 min) {load[0][0]:.2f} before, {load[1][0]:.2f} after the steps")
    breakdown = {}
    if args.breakdown_iters:
        calls = {name: block_part_calls(model, batch, args) for name, (model, _) in built.items()}
        breakdown = breakdown_ms(built, calls, timer, args)
        print_breakdown(breakdown, list(built), args)
        load.append(os.getloadavg())
        print(f"load average (1 min) {load[-1][0]:.2f} after the breakdown")
        if args.profile:
            print_profiles(built, calls, args)
    path = args.json.format(device=args.device)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump({"device": device_name(args.device), "torch": torch.__version__,
                   "date": datetime.date.today().isoformat(),
                   "threads": torch.get_num_threads(), "args": vars(args), "load_average": load, "results": rows,
                   "breakdown_ms": [{"model": n, "stage": s, "part": p, "mode": m, "ms": v}
                                    for (n, s, p, m), v in breakdown.items()]}, f, indent=1)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
