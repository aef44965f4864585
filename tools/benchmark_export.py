#!/usr/bin/env python
"""CPU latency and images/s of exported detectors against eager PyTorch: each config (by default Faster
R-CNN GE-θ E8 R50-FPN, configs/faster_rcnn_ge_r50_fpn.yaml, beside plain R50-FPN,
configs/faster_rcnn_r50_fpn.yaml) in eager PyTorch, TorchScript (torch.jit.trace through detectron2's
TracingAdapter, as tools/export_model.py writes it) and ONNX Runtime, on one image of 800x1216 (batch 1).

What is timed is the exported graph's work, the same in the three runtimes: the resized uint8 image to the
detections at its size (``model.inference(..., do_postprocess=False)``); reading and resizing the image
and rescaling the detections are outside it. The models are randomly initialised; their frozen norms get
the statistics of their inputs on the image (ge_detectron.benchmark's ``calibrate_frozen_norms``), so
that the RPN and the RoI heads do the work of a trained model (all proposals) in every model.

All (model, runtime) pairs take turns: a round runs each once, starting one later each round, so
background load on a shared machine hits all alike (ge_detectron.benchmark's ``Timer``). The table gives
the median and the best (minimum) ms per image; images/s is 1000 / median; the last config is the
baseline of the ratio column. The load average before and after is printed.

    nice -n 5 python tools/benchmark_export.py --threads 2 --rounds 10
    python tools/benchmark_export.py --configs configs/faster_rcnn_ge_theta_plus_global_r50_mindspore.yaml \
        configs/faster_rcnn_r50.yaml --runtimes onnxruntime --image 480x736 --rounds 5
    python tools/benchmark_export.py --tiny     # narrow models on a 64x96 image, one round: runs in seconds
"""
import argparse
import datetime
import io
import os
import statistics
import sys

import numpy as np
import onnxruntime
import torch

import ge_detectron  # noqa: F401  (compat fixes and registration before detectron2 is used)
import detectron2
from detectron2.modeling import build_model
from ge_detectron.benchmark import NARROW_R50, Timer, calibrate_frozen_norms, cpu_name
from ge_detectron.config import get_ge_cfg
from ge_detectron.export.tracing import tracing_adapter

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ["configs/faster_rcnn_ge_r50_fpn.yaml", "configs/faster_rcnn_r50_fpn.yaml"]
RUNTIMES = {"eager": "eager", "torchscript": "TorchScript", "onnxruntime": "ONNX Runtime"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=CONFIGS, metavar="FILE",
                        help="YAML detection configs; the last is the ratio column's baseline")
    parser.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=list(RUNTIMES))
    parser.add_argument("--image", default="800x1216", help="HxW of the (already resized) image")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of torch and ONNX Runtime")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--tiny", action="store_true",
                        help="narrow R50s (ge_detectron.gpu_check.NARROW_R50) on a 64x96 image, one round, no "
                             "warm-up: checks that the tool runs; its times say nothing")
    args = parser.parse_args(argv)
    if args.tiny:
        args.image, args.rounds, args.warmup = "64x96", 1, 0
    return args


def model_name(config_file):
    return os.path.splitext(os.path.basename(config_file))[0]


def runtimes(config_file, image, threads, names, opts=()):
    """{runtime: a call of the model on image} for one config and the ``names`` of RUNTIMES, and the
    number of detections each call returns."""
    cfg = get_ge_cfg(os.path.join(REPO, config_file), ["MODEL.DEVICE", "cpu", *opts])
    torch.manual_seed(0)
    model = build_model(cfg)
    calibrate_frozen_norms(model, [{"image": image}])
    adapter = tracing_adapter(model, image)

    def eager():
        with torch.no_grad():
            return adapter(image)

    calls = {"eager": eager}
    if "torchscript" in names:
        traced = torch.jit.trace(adapter, (image,), check_trace=False)

        def torchscript():
            with torch.no_grad():
                return traced(image)

        calls["torchscript"] = torchscript
    if "onnxruntime" in names:
        buffer = io.BytesIO()
        torch.onnx.export(adapter, (image,), buffer, dynamo=False, opset_version=17, input_names=["image"],
                          dynamic_axes={"image": {1: "height", 2: "width"}})
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = onnxruntime.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
        feed = {"image": image.numpy()}
        calls["onnxruntime"] = lambda: session.run(None, feed)
    calls = {name: calls[name] for name in names}
    return calls, {RUNTIMES[name]: len(call()[0]) for name, call in calls.items()}


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    height, width = (int(v) for v in args.image.lower().split("x"))
    image = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, height, width), dtype=np.uint8))
    load_before = os.getloadavg()
    fns = {}
    for config_file in args.configs:
        calls, detections = runtimes(config_file, image, args.threads, args.runtimes, NARROW_R50 if args.tiny else ())
        print(f"{model_name(config_file)}: detections per runtime {detections}", file=sys.stderr)
        fns.update({(model_name(config_file), RUNTIMES[name]): fn for name, fn in calls.items()})
    times = Timer("cpu", args.rounds, args.warmup).times(fns)
    load_after = os.getloadavg()

    print(f"{datetime.date.today()}, {cpu_name()}, {os.cpu_count()} cores, {args.threads} threads; torch "
          f"{torch.__version__}, detectron2 {detectron2.__version__}, onnxruntime {onnxruntime.__version__}; "
          f"1 image of {height}x{width}, {args.rounds} rounds after {args.warmup}; load average before "
          f"{load_before[0]:.2f} / {load_before[1]:.2f}, after {load_after[0]:.2f} / {load_after[1]:.2f} (1 / 5 min)"
          + ("; --tiny: narrow models, the times say nothing" if args.tiny else ""))
    print()
    baseline = model_name(args.configs[-1])
    print(f"| model | runtime | median ms | best ms | images/s (median) | / {baseline} (median) |")
    print("| --- | --- | --- | --- | --- | --- |")
    median = {key: statistics.median(t) for key, t in times.items()}
    for key in fns:
        name, runtime = key
        ratio = f"{median[key] / median[(baseline, runtime)]:.2f}x" if name != baseline else ""
        print(f"| {name} | {runtime} | {median[key]:.0f} | {min(times[key]):.0f} | {1000 / median[key]:.2f} | "
              f"{ratio} |")
    if "eager" in args.runtimes and len(args.runtimes) > 1:
        print()
        for config_file in args.configs[:-1]:
            name = model_name(config_file)
            eager_ms = median[(name, "eager")]
            print(f"{name}: " + ", ".join(f"{RUNTIMES[r]} / eager {median[(name, RUNTIMES[r])] / eager_ms:.2f}x"
                                          for r in args.runtimes if r != "eager") + " (median ms)")


if __name__ == "__main__":
    main()
