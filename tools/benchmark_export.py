#!/usr/bin/env python
"""CPU latency and images/s of an exported detector against eager PyTorch: Faster R-CNN GE-θ E8 R50-FPN
(configs/faster_rcnn_ge_r50_fpn.yaml) and plain R50-FPN (configs/faster_rcnn_r50_fpn.yaml), each in eager
PyTorch, TorchScript (torch.jit.trace through detectron2's TracingAdapter, as tools/export_model.py
writes it) and ONNX Runtime, on one image of 800x1216 (batch 1).

What is timed is the exported graph's work, the same in the three runtimes: the resized uint8 image to the
detections at its size (``model.inference(..., do_postprocess=False)``); reading and resizing the image
and rescaling the detections are outside it. The models are randomly initialised; their frozen norms get
the statistics of their inputs on the image (ge_detectron.benchmark's ``calibrate_frozen_norms``), so
that the RPN and the RoI heads do the work of a trained model (all 1000 proposals) in both models.

All six (model, runtime) pairs take turns: a round runs each once, starting one later each round, so
background load on a shared machine hits all alike (ge_detectron.benchmark's ``Timer``). The
table gives the median and the best (minimum) ms per image; images/s is 1000 / median. The load average
before and after is printed.

    nice -n 5 python tools/benchmark_export.py --threads 2 --rounds 10
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
from ge_detectron.config import get_ge_cfg
from ge_detectron.export.tracing import tracing_adapter

from ge_detectron.benchmark import Timer, calibrate_frozen_norms, cpu_name

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = {"GE-θ E8 R50-FPN": "configs/faster_rcnn_ge_r50_fpn.yaml", "R50-FPN": "configs/faster_rcnn_r50_fpn.yaml"}
RUNTIMES = ("eager", "TorchScript", "ONNX Runtime")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default="800x1216", help="HxW of the (already resized) image")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of torch and ONNX Runtime")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    return parser.parse_args()


def runtimes(config_file, image, threads):
    """{runtime: a call of the model on image} for one config."""
    cfg = get_ge_cfg(os.path.join(REPO, config_file), ["MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    model = build_model(cfg)
    calibrate_frozen_norms(model, [{"image": image}])
    adapter = tracing_adapter(model, image)
    traced = torch.jit.trace(adapter, (image,), check_trace=False)
    buffer = io.BytesIO()
    torch.onnx.export(adapter, (image,), buffer, dynamo=False, opset_version=17, input_names=["image"],
                      dynamic_axes={"image": {1: "height", 2: "width"}})
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = onnxruntime.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
    feed = {"image": image.numpy()}

    def eager():
        with torch.no_grad():
            return adapter(image)

    def torchscript():
        with torch.no_grad():
            return traced(image)

    detections = {"eager": len(eager()[0]), "TorchScript": len(torchscript()[0]),
                  "ONNX Runtime": len(session.run(None, feed)[0])}
    return {"eager": eager, "TorchScript": torchscript, "ONNX Runtime": lambda: session.run(None, feed)}, detections


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    height, width = (int(v) for v in args.image.lower().split("x"))
    image = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, height, width), dtype=np.uint8))
    load_before = os.getloadavg()
    fns = {}
    for name, config_file in MODELS.items():
        calls, detections = runtimes(config_file, image, args.threads)
        print(f"{name}: detections per runtime {detections}", file=sys.stderr)
        fns.update({(name, runtime): fn for runtime, fn in calls.items()})
    times = Timer("cpu", args.rounds, args.warmup).times(fns)
    load_after = os.getloadavg()

    print(f"{datetime.date.today()}, {cpu_name()}, {os.cpu_count()} cores, {args.threads} threads; torch "
          f"{torch.__version__}, detectron2 {detectron2.__version__}, onnxruntime {onnxruntime.__version__}; "
          f"1 image of {height}x{width}, {args.rounds} rounds after {args.warmup}; load average before "
          f"{load_before[0]:.2f} / {load_before[1]:.2f}, after {load_after[0]:.2f} / {load_after[1]:.2f} (1 / 5 min)")
    print()
    print("| model | runtime | median ms | best ms | images/s (median) | GE / R50 (median) |")
    print("| --- | --- | --- | --- | --- | --- |")
    median = {key: statistics.median(t) for key, t in times.items()}
    ge, plain = MODELS
    for key in fns:
        name, runtime = key
        ratio = f"{median[(ge, runtime)] / median[(plain, runtime)]:.2f}x" if name == ge else ""
        print(f"| {name} | {runtime} | {median[key]:.0f} | {min(times[key]):.0f} | {1000 / median[key]:.2f} | "
              f"{ratio} |")
    print()
    eager_ms = median[(ge, "eager")]
    print(f"{ge}: ONNX Runtime / eager {median[(ge, 'ONNX Runtime')] / eager_ms:.2f}x, "
          f"TorchScript / eager {median[(ge, 'TorchScript')] / eager_ms:.2f}x (median ms)")


if __name__ == "__main__":
    main()
