"""The benchmarks' shared timing harness (ge_detectron.benchmark), tools/benchmark_model.py's per-block
breakdown, which must time the blocks' own modules, not a copy of their forward, and tools/benchmark_export.py
in its tiny mode."""
import ast
import importlib.util
import os
import sys
from collections import Counter

import pytest

from ge_detectron.benchmark import NARROW_R50, Timer, rotations
from ge_detectron.layers import GatherExcite
from ge_detectron.modeling import GEBottleneckBlock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_rotations_start_one_later_each_round():
    assert list(rotations(["a", "b", "c"], 4)) == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]


def test_timer_calls_each_function_warmup_plus_runs_times_in_rotating_order():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in ("a", "b")}
    times = Timer("cpu", runs=3, warmup=2, flush_mb=1).times(fns)
    assert calls == ["a", "b", "a", "b"] + ["a", "b", "b", "a", "a", "b"]
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3} and all(t >= 0 for v in times.values() for t in v)


@pytest.fixture(scope="module")
def benchmark_model():
    spec = importlib.util.spec_from_file_location("benchmark_model", os.path.join(REPO, "tools", "benchmark_model.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_breakdown_runs_the_blocks_own_modules(benchmark_model, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["benchmark_model.py", "--stages", "res4", "res5", "--device", "cpu",
                                      "--image", "64x96", "--batch", "2", "--no-calibrate-norms", *NARROW_R50])
    args = benchmark_model.parse_args()
    batch = benchmark_model.synthetic_batch(args)
    model, _ = benchmark_model.build("theta", "on", args, batch)
    calls = benchmark_model.block_part_calls(model, batch, args)
    resnet = model.backbone.bottom_up
    ge_blocks = [b for stage in resnet.stages for b in stage if isinstance(b, GEBottleneckBlock)]
    assert len(ge_blocks) == 6 + 3  # res4 and res5 of an R50
    counts = Counter()
    hooks = [m.register_forward_hook(lambda module, inputs, output: counts.update([id(module)]))
             for m in model.modules() if isinstance(m, (GEBottleneckBlock, GatherExcite)) or
             any(m is ge.gather for ge in model.modules() if isinstance(ge, GatherExcite))]
    for stage, part, call in calls["train"]:  # forward + backward
        call()
    for hook in hooks:
        hook.remove()
    parts = Counter((stage, part) for stage, part, _ in calls["train"])
    assert parts == {("res2", "block"): 3, ("res3", "block"): 4, ("res4", "block"): 6, ("res4", "ge"): 6,
                     ("res4", "gather"): 6, ("res5", "block"): 3, ("res5", "ge"): 3, ("res5", "gather"): 3}
    for block in ge_blocks:  # the block once; its GE module in it and alone; the gather in all three
        assert (counts[id(block)], counts[id(block.ge)], counts[id(block.ge.gather)]) == (1, 2, 3)


@pytest.mark.slow
def test_benchmark_export_tiny_runs_a_global_ge_detector_beside_r50_in_every_runtime(monkeypatch, capsys):
    """tools/benchmark_export.py --tiny: narrow models, one round; the MindSpore global GE-θ⁺ C4 detector and the
    plain R50-C4 each in eager PyTorch, TorchScript and ONNX Runtime, with their detections and a table row."""
    monkeypatch.syspath_prepend(os.path.join(REPO, "tools"))  # the tool imports tools/benchmark_model.py
    spec = importlib.util.spec_from_file_location("benchmark_export", os.path.join(REPO, "tools", "benchmark_export.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    names = ["faster_rcnn_ge_theta_plus_global_r50_mindspore", "faster_rcnn_r50"]
    tool.main(["--tiny", "--threads", "1", "--configs", *(f"configs/{name}.yaml" for name in names)])
    out, err = capsys.readouterr()
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in out.splitlines()
            if line.startswith("| faster_rcnn")]
    runtimes = ["eager", "TorchScript", "ONNX Runtime"]
    assert [row[:2] for row in rows] == [[name, runtime] for name in names for runtime in runtimes]
    assert all(float(row[2]) > 0 and float(row[4]) > 0 for row in rows)
    assert all(row[5].endswith("x") for row in rows[:3]) and [row[5] for row in rows[3:]] == [""] * 3
    assert "1 image of 64x96, 1 rounds after 0" in out and "--tiny" in out
    for name in names:  # each runtime's detection count (random narrow weights: possibly none)
        line = next(line for line in err.splitlines() if line.startswith(f"{name}: detections per runtime"))
        counts = ast.literal_eval(line.split(": detections per runtime ")[1])
        assert list(counts) == runtimes and all(isinstance(n, int) and n >= 0 for n in counts.values())
