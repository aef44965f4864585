#!/usr/bin/env python
"""Everything the GPU must show, in one run of at most 8 minutes (`make gpu-check`): the CUDA op tests,
the excite and model benchmarks, a short demo training and the fused-against-reference losses, each
step under its own time budget; writes output/gpu_check/report.md and report.json.

    python tools/gpu_check.py                         # on a CUDA machine (without a GPU: says so, exits 0)
    python tools/gpu_check.py --device cpu --quick    # the same path on the CPU, tiny shapes

The steps, budgets and targets: ge_detectron/gpu_check.py.
"""
import sys
import warnings

# detectron2 0.6 scripts a few functions at import, which torch warns about: not this tool's output
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)

from ge_detectron.gpu_check import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
