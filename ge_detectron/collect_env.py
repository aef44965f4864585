"""``python -m ge_detectron.collect_env [--self-test]``: the environment, to paste into a bug report.

detectron2's own report (``detectron2.utils.collect_env``: Python, torch with its CUDA / cuDNN, torchvision,
triton, detectron2's version, location and C++/CUDA ops, the GPUs), printed after ``import ge_detectron`` has
applied its compatibility fixes (detectron2 0.6 needs them to import), then ge_detectron's version and
location, what the fused excite operator runs per device, and the fixes applied. ``--self-test`` also runs
the operator on a small input on each available device and compares it with x * sigmoid(nearest-up(g))
computed here in float64 (and relu(... + shortcut)); the exit status is 1 if any device fails."""
import argparse
import importlib.metadata
import os
import sys

import torch
import torch.nn.functional as F
from detectron2.utils.collect_env import collect_env_info

from . import compat
from .ops import excite, excite_residual, native_kernels, unavailable_reason
from .version import __version__

__all__ = ["ge_detectron_info", "self_test", "main"]

_TOLERANCE = 1e-5  # float32 results against the float64 reference


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


def _reference(x, g, shortcut=None):
    up = F.interpolate(g.double(), size=x.shape[-2:], mode="nearest")
    out = x.double() * torch.sigmoid(up)
    return out if shortcut is None else torch.relu(out + shortcut.double())


def self_test(device):
    """(passed, line) for the forward operators on ``device`` on a small seeded float32 input."""
    generator = torch.Generator().manual_seed(0)
    x, g, shortcut = (torch.randn(shape, generator=generator).to(device)
                      for shape in ((2, 3, 8, 6), (2, 3, 2, 3), (2, 3, 8, 6)))
    errors = {"excite": (excite(x, g).double() - _reference(x, g)).abs().max().item(),
              "excite_residual": (excite_residual(x, g, shortcut).double()
                                  - _reference(x, g, shortcut)).abs().max().item()}
    passed = all(error <= _TOLERANCE for error in errors.values())
    detail = ", ".join(f"{name} max |error| {error:.2e}" for name, error in errors.items())
    runs_on = native_kernels(device) or "PyTorch ops"
    return passed, f"self-test, {device:<8}    {'pass' if passed else 'FAIL'} ({runs_on}; {detail}; tolerance {_TOLERANCE:g})"


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
