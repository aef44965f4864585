"""``python -m ge_detectron.collect_env [--self-test]``: the environment, to paste into a bug report.

detectron2's own report (``detectron2.utils.collect_env``: Python, torch with its CUDA / cuDNN, torchvision,
triton, detectron2's version, location and C++/CUDA ops, the GPUs), printed after ``import ge_detectron`` has
applied its compatibility fixes (detectron2 0.6 needs them to import), then ge_detectron's version and
location, what the fused excite operator runs per device, and the fixes applied. ``--self-test`` also runs
the operator's self-check (``ops.self_check``: every kernel, forward and backward, on small inputs against
the float64 definition) on each available device, float32 in NCHW and channels_last (and float16 /
bfloat16 on CUDA); the exit status is 1 if any fails."""
import argparse
import importlib.metadata
import os
import sys

import torch
from detectron2.utils.collect_env import collect_env_info

from . import compat
from .ops import native_kernels, self_check, unavailable_reason
from .version import __version__

__all__ = ["ge_detectron_info", "self_test", "main"]

DTYPES = {"cpu": (torch.float32,), "cuda": (torch.float32, torch.float16, torch.bfloat16)}


def devices():
    """The device types the operator can run on here: the CPU, and CUDA when a GPU is visible."""
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def ge_detectron_info():
    """ge_detectron's lines: version and location, the operator's kernels per device, the compat fixes."""
    lines = [f"ge_detectron             {__version__} @{os.path.dirname(os.path.abspath(__file__))}",
             f"triton                   {_version_of('triton')}"]
    for device in ("cpu", "cuda"):
        kernels = native_kernels(device)
        lines.append(f"excite kernels, {device:<8} " + (kernels or f"none: {unavailable_reason(device)}"))
    fixes = compat.applied()
    lines.append("compat fixes applied     " + ("; ".join(fixes) if fixes else "none"))
    return lines


def _version_of(distribution):
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def self_test(device):
    """(passed, line) of the operator's self-check on ``device``, per dtype and memory format."""
    results = [self_check(device, dtype, channels_last) for dtype in DTYPES[device] for channels_last in (False, True)]
    passed = all(r.ok for r in results)
    runs_on = native_kernels(device) or "PyTorch ops"
    detail = "; ".join(r.describe() for r in results if not r.ok) or \
        f"{sum(r.cases for r in results)} cases in {sum(r.ms for r in results):.0f} ms"
    return passed, f"self-test, {device:<8}    {'pass' if passed else 'FAIL'} ({runs_on}; {detail})"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m ge_detectron.collect_env", description=__doc__.split("\n\n")[0])
    parser.add_argument("--self-test", action="store_true", help="also check the fused operator on each device")
    args = parser.parse_args(argv)
    print(collect_env_info())
    print("\n".join(ge_detectron_info()))
    if not args.self_test:
        return 0
    results = [self_test(device) for device in devices()]
    print("\n".join(line for _, line in results))
    return 0 if all(passed for passed, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
