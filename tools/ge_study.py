#!/usr/bin/env python
"""The seeded study of what Gather-Excite does on the data this project generates (docs/benchmarks.md,
"GE study"): every arm trained with each of ``--seeds``, the results as mean ± std with the raw numbers in
``OUTPUT/results.json``.

Parts (``--parts``):

- ``finetune``: a plain R50-FPN detector (VARIANT none) trained on the generated shapes as ``make demo``
  trains (``--base-iters``, the demo's 200) stands for plain pretrained weights; from it, ``--finetune-iters``
  iterations of (a) plain, (b) GE-θ E8 with MODEL.GE.INIT paper, (c) GE-θ E8 with MODEL.GE.INIT identity.
  Box AP / AP50 on the validation set at iteration 0 (``train_net.py --eval-only`` of the plain weights
  loaded into the arm's model; for (a) and (c), whose model at iteration 0 does not depend on the seed,
  with the first seed only) and at the end.
- ``cls``: the classification demo (configs/pretrain/demo_shapes.yaml) from scratch without GE, with GE-θ
  and with GE-θ⁻, ``--cls-iters`` iterations (the demo's 600); top-1 on its validation set.
- ``det``: the detection demo (``make demo``'s config) from scratch without GE, with GE-θ E8 and with GE-θ⁻
  E8, ``--det-iters`` iterations (the demo's 200); box AP / AP50.

Shorter schedules scale the LR steps and warmup with the iterations. Each run is a subprocess of
tools/train_net.py or tools/pretrain_net.py writing to its own folder under ``--output``; a run whose
result is there already is not repeated, so an interrupted study continues where it stopped. ``--jobs`` runs
run at once; a progress line with the elapsed time and an ETA follows each run, and results.json is
rewritten after each (``"complete"`` says whether every planned run is in; ``--collect`` only summarizes
the runs that finished).

    python tools/ge_study.py --output output/ge_study            # the demos' full schedules
    python tools/ge_study.py --parts finetune cls --finetune-iters 20 --cls-iters 200 --jobs 2
"""
import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

import detectron2
import torch

from ge_detectron.benchmark import cpu_name
from ge_detectron.data import prepare_datasets
from ge_detectron.data.classification import prepare_image_folders
from ge_detectron.pretrain.config import get_pretrain_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DET_DEMO = "configs/demo/faster_rcnn_ge_theta_e8_r50_fpn_shapes.yaml"
CLS_DEMO = "configs/pretrain/demo_shapes.yaml"
# The demos' schedules, which shorter runs scale: detection steps (150, 185) and warmup 50 of 200
# iterations; classification warmup 50 of 600 (cosine).
DET_ITERS, CLS_ITERS = 200, 600
ARMS = {
    "finetune": {"plain": ["MODEL.GE.VARIANT", "none"],
                 "theta_e8_paper": ["MODEL.GE.VARIANT", "theta", "MODEL.GE.EXTENT", "8", "MODEL.GE.INIT", "paper"],
                 "theta_e8_identity": ["MODEL.GE.VARIANT", "theta", "MODEL.GE.EXTENT", "8",
                                       "MODEL.GE.INIT", "identity"]},
    "cls": {"none": ["MODEL.GE.VARIANT", "none"], "theta": ["MODEL.GE.VARIANT", "theta"],
            "theta_minus": ["MODEL.GE.VARIANT", "theta_minus"]},
    "det": {"none": ["MODEL.GE.VARIANT", "none"], "theta_e8": ["MODEL.GE.VARIANT", "theta", "MODEL.GE.EXTENT", "8"],
            "theta_minus_e8": ["MODEL.GE.VARIANT", "theta_minus", "MODEL.GE.EXTENT", "8"]},
}


def det_schedule(iters, base_lr=None):
    """The detection demo's schedule scaled to ``iters`` iterations."""
    steps = tuple(round(iters * s / DET_ITERS) for s in (150, 185))
    opts = ["SOLVER.MAX_ITER", str(iters), "SOLVER.STEPS", str(steps), "SOLVER.CHECKPOINT_PERIOD", str(iters),
            "SOLVER.WARMUP_ITERS", str(max(1, round(iters * 50 / DET_ITERS)))]
    return opts + (["SOLVER.BASE_LR", str(base_lr)] if base_lr is not None else [])


def cls_schedule(iters):
    return ["SOLVER.MAX_ITER", str(iters), "SOLVER.CHECKPOINT_PERIOD", str(iters), "TEST.EVAL_PERIOD", str(iters),
            "SOLVER.WARMUP_ITERS", str(max(1, round(iters * 50 / CLS_ITERS)))]


class Run:
    """One subprocess of a tool; ``metrics()`` reads its result from its log."""

    def __init__(self, part, arm, seed, stage, tool, args, output):
        self.part, self.arm, self.seed, self.stage, self.tool = part, arm, seed, stage, tool
        self.output = output
        self.args = [*args, "OUTPUT_DIR", output]
        self.result_file = os.path.join(output, "study_result.json")

    @property
    def name(self):
        return f"{self.part}/{self.arm}/seed{self.seed}/{self.stage}"

    def command(self):
        return [sys.executable, self.tool, *self.args]

    def execute(self):
        if os.path.exists(self.result_file):
            with open(self.result_file) as f:
                return json.load(f), 0.0
        os.makedirs(self.output, exist_ok=True)
        start = time.time()
        with open(os.path.join(self.output, "study.log"), "w") as log:
            returncode = subprocess.call(self.command(), cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        with open(os.path.join(self.output, "study.log")) as f:
            text = f.read()
        if returncode != 0:
            raise RuntimeError(f"{self.name} failed (exit status {returncode}): {' '.join(self.command())}\n"
                               f"{text[-2000:]}")
        result = parse_metrics(text, self.part)
        with open(self.result_file, "w") as f:
            json.dump(result, f)
        return result, time.time() - start


def parse_metrics(log, part):
    """The last evaluation in a tool's log (detectron2's ``copypaste:`` lines): box AP and AP50, or top-1."""
    task, keep = ("classification", ("top1",)) if part == "cls" else ("bbox", ("AP", "AP50"))
    found = re.findall(rf"copypaste: Task: {task}\n.*copypaste: ([^\n]*)\n.*copypaste: ([^\n]*)", log)
    if not found:
        raise RuntimeError(f"no {task} evaluation in the log")
    names, values = found[-1]
    return {name: float(value) for name, value in zip(names.split(","), values.split(",")) if name in keep}


def prepare_data(parts):
    """Generate the demos' data before runs start in parallel, so that no two runs write it at once."""
    if {"finetune", "det"} & set(parts):
        prepare_datasets(["ge_shapes_train", "ge_shapes_val"])
    if "cls" in parts:
        prepare_image_folders(get_pretrain_cfg(CLS_DEMO))


def plan(args):
    """The base run (or None) and the other runs of ``args.parts``."""
    out = args.output
    base, runs = None, []
    if "finetune" in args.parts:
        base_weights = args.base_weights or os.path.join(out, "finetune", "base", "model_final.pth")
        if not args.base_weights:
            base = Run("finetune", "base", 1, "train", "tools/train_net.py",
                       ["--config-file", DET_DEMO, *ARMS["finetune"]["plain"], *det_schedule(args.base_iters)],
                       os.path.join(out, "finetune", "base"))
        starts, ends = [], []  # the evaluations at iteration 0 first, then seed by seed, so that a study
        for seed in args.seeds:  # stopped early holds every arm
            for arm, opts in ARMS["finetune"].items():
                common = ["--config-file", DET_DEMO, *opts, "MODEL.WEIGHTS", base_weights, "SEED", str(seed)]
                folder = os.path.join(out, "finetune", arm, f"seed{seed}")
                if arm == "theta_e8_paper" or seed == args.seeds[0]:  # the others' start does not depend on the seed
                    starts.append(Run("finetune", arm, seed, "iter0", "tools/train_net.py", ["--eval-only", *common],
                                      os.path.join(folder, "iter0")))
                ends.append(Run("finetune", arm, seed, "end", "tools/train_net.py",
                                [*common, *det_schedule(args.finetune_iters, args.finetune_lr)],
                                os.path.join(folder, "end")))
        runs += starts + ends
    for part, config, schedule in (("cls", CLS_DEMO, cls_schedule(args.cls_iters)),
                                   ("det", DET_DEMO, det_schedule(args.det_iters))):
        if part in args.parts:
            for seed in args.seeds:
                for arm, opts in ARMS[part].items():
                    tool = "tools/pretrain_net.py" if part == "cls" else "tools/train_net.py"
                    runs.append(Run(part, arm, seed, "end", tool,
                                    ["--config-file", config, *opts, *schedule, "SEED", str(seed)],
                                    os.path.join(out, part, arm, f"seed{seed}")))
    return base, runs


def summarize(results):
    """{part: {arm: {stage: {metric: {"values": [...], "seeds": [...], "mean": m, "std": s}}}}}; std is
    the sample standard deviation (0 for one value)."""
    table = {}
    for (part, arm, stage), by_seed in results.items():
        metrics = {}
        for name in next(iter(by_seed.values())):
            seeds = sorted(by_seed)
            values = [by_seed[s][name] for s in seeds]
            metrics[name] = {"seeds": seeds, "values": values, "mean": statistics.fmean(values),
                             "std": statistics.stdev(values) if len(values) > 1 else 0.0}
        table.setdefault(part, {}).setdefault(arm, {})[stage] = metrics
    return table


def print_table(table):
    for part, arms in table.items():
        print(f"\n{part}")
        for arm, stages in arms.items():
            cells = [f"{stage} {name} {m['mean']:.2f} ± {m['std']:.2f} {m['values']}"
                     for stage, metrics in stages.items() for name, m in metrics.items()]
            print(f"  {arm:20s} " + "  |  ".join(cells))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="output/ge_study", help="folder of the runs and results.json")
    parser.add_argument("--parts", nargs="+", choices=("finetune", "cls", "det"), default=["finetune", "cls", "det"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--base-iters", type=int, default=DET_ITERS, help="iterations of the plain base detector")
    parser.add_argument("--base-weights", default="", help="an existing plain detector to fine-tune from instead")
    parser.add_argument("--finetune-iters", type=int, default=100)
    parser.add_argument("--finetune-lr", type=float, default=0.005, help="SOLVER.BASE_LR of the fine-tuning "
                        "(a quarter of the from-scratch demo's 0.02)")
    parser.add_argument("--cls-iters", type=int, default=CLS_ITERS)
    parser.add_argument("--det-iters", type=int, default=DET_ITERS)
    parser.add_argument("--jobs", type=int, default=1, help="runs at once")
    parser.add_argument("--collect", action="store_true", help="run nothing: summarize the runs that finished")
    args = parser.parse_args(argv)

    base, runs = plan(args)
    planned = len(runs)
    if args.collect:
        runs = [run for run in runs if os.path.exists(run.result_file)]
    else:
        prepare_data(args.parts)
        if base is not None:
            print(f"base: {' '.join(base.command())}", flush=True)
            result, seconds = base.execute()
            print(f"base: {result} ({seconds:.0f} s)", flush=True)
    start = time.time()
    results, durations, done = {}, [], 0
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(run.execute): run for run in runs}
        for future in as_completed(futures):
            run = futures[future]
            result, seconds = future.result()
            done += 1
            if seconds:
                durations.append(seconds)
            results.setdefault((run.part, run.arm, run.stage), {})[run.seed] = result
            remaining = len(runs) - done
            eta = statistics.fmean(durations) * remaining / args.jobs if durations else 0.0
            print(f"[{done}/{len(runs)}] {run.name}: {result} ({seconds:.0f} s); elapsed "
                  f"{(time.time() - start) / 60:.1f} min, ETA {eta / 60:.1f} min", flush=True)
            write_results(args, results, complete=done == planned)
    print_table(summarize(results))


def write_results(args, results, complete):
    """OUTPUT/results.json: the arguments, the machine and versions, whether every planned run is in, and the
    summary."""
    environment = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu_name(),
                   "cores": os.cpu_count(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                   "python": platform.python_version(), "torch": torch.__version__,
                   "detectron2": detectron2.__version__}
    with open(os.path.join(args.output, "results.json"), "w") as f:
        json.dump({"command": " ".join(sys.argv), "args": vars(args), "environment": environment,
                   "complete": complete, "results": summarize(results)}, f, indent=1)


if __name__ == "__main__":
    main()
