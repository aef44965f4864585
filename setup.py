"""ge_detectron: Gather-Excite networks as a detectron2 plugin.

Install into an environment that has torch, torchvision and detectron2:
    pip install --no-build-isolation -e .
The fused excite operator (ge_detectron/csrc) is compiled for the CPU always, and with its CUDA
kernels when a CUDA toolkit is found or FORCE_CUDA=1 (TORCH_CUDA_ARCH_LIST, default "8.0;9.0");
FORCE_CUDA=0 builds the CPU kernels only.
Without torch at build time (pip's default build isolation) the package installs without the
extension and falls back to the pure-PyTorch reference.
"""
import glob
import os
import re
import subprocess
import sys

from setuptools import find_packages, setup

CSRC = os.path.join("ge_detectron", "csrc")


def get_extensions():
    """The ``ge_detectron._C`` extension: the excite operators' schemas and CPU kernels, plus their CUDA
    kernels when building with CUDA. FORCE_CUDA=1 requires them (CI: fail rather than build CPU-only;
    no GPU is needed to compile them), FORCE_CUDA=0 never builds them, and unset it follows torch:
    CUDA when torch is a CUDA build and a CUDA toolkit (nvcc) is found. The C++ standard is left to
    torch's cpp_extension (C++17 or C++20, whichever the installed torch's headers need)."""
    sources = sorted(glob.glob(os.path.join(CSRC, "*.cpp")))
    if not sources:
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        print("ge_detectron: torch is not importable in the build environment, so the fused excite operator "
              "is not built (the pure-PyTorch reference is used). Install with `pip install "
              "--no-build-isolation -e .` to build it.", file=sys.stderr)
        return [], {}

    cxx_flags, link_flags = ["-O3"], []
    if _torch_uses_openmp(torch):
        # at::parallel_for is a header template: without -fopenmp it compiles to a serial loop. The
        # extension then links the libgomp.so.1 that torch has already loaded (same soname): one runtime.
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    force_cuda = os.environ.get("FORCE_CUDA", "")
    if force_cuda not in ("", "0", "1"):
        raise ValueError(f"FORCE_CUDA={force_cuda!r}: use 1 (build the CUDA kernels), 0 (do not) or leave it unset.")
    if force_cuda:
        with_cuda = force_cuda == "1"
    else:
        with_cuda = CUDA_HOME is not None and torch.version.cuda is not None
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        extension = CUDAExtension(
            "ge_detectron._C",
            sources + sorted(glob.glob(os.path.join(CSRC, "*.cu"))),
            define_macros=[("WITH_CUDA", None)],
            library_dirs=_cuda_runtime_library_dirs(CUDA_HOME),
            # No --use_fast_math: the kernels are memory-bound, and the nearest-index rule needs IEEE floats.
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3"]},
            extra_link_args=link_flags,
        )
    else:
        extension = CppExtension("ge_detectron._C", sources, extra_compile_args={"cxx": cxx_flags},
                                 extra_link_args=link_flags)
    return [extension], {"build_ext": BuildExtension.with_options(use_ninja=_has_ninja())}


def _torch_uses_openmp(torch):
    """Whether torch's intra-op parallelism is OpenMP (as in the Linux wheels), on Linux (GCC's -fopenmp)."""
    return sys.platform.startswith("linux") and "ATen parallel backend: OpenMP" in torch.__config__.parallel_info()


def _cuda_runtime_library_dirs(cuda_home):
    """Where the linker finds libcudart when torch's CUDA_HOME is not the toolkit's root: torch derives it
    from the nvcc on PATH, which may be a wrapper script (e.g. /usr/local/bin/nvcc, giving /usr/local).
    nvcc itself reports its toolkit's library directories under -dryrun (which runs nothing, so the
    source file named need not exist)."""
    if cuda_home and any(glob.glob(os.path.join(cuda_home, sub, "libcudart.so*")) for sub in ("lib64", "lib")):
        return []
    nvcc = os.path.join(cuda_home, "bin", "nvcc") if cuda_home else "nvcc"
    try:
        run = subprocess.run([nvcc, "-dryrun", "-c", "probe.cu"], capture_output=True, text=True, check=True)
        report = run.stdout + run.stderr
    except (OSError, subprocess.CalledProcessError):
        return []
    line = next((ln for ln in report.splitlines() if ln.startswith("#$ LIBRARIES=")), "")
    dirs = re.findall(r'-L"?([^"\s]+)"?', line)
    return [os.path.normpath(d) for d in dirs if os.path.basename(os.path.normpath(d)) != "stubs"]


def _has_ninja():
    from torch.utils.cpp_extension import is_ninja_available

    return is_ninja_available()


ext_modules, cmdclass = get_extensions()

setup(
    name="ge_detectron",
    version="0.1.0",
    description="Gather-Excite networks (Hu et al., NeurIPS 2018) for detectron2",
    long_description=open("README.md").read() if os.path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["ge_detectron", "ge_detectron.*"]),
    package_data={"ge_detectron": ["csrc/*"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    # torch, torchvision and detectron2 are expected in the environment (see README: detectron2 is
    # not on PyPI under its own name); these are the light runtime dependencies.
    install_requires=["fvcore", "pycocotools", "faster-coco-eval", "opencv-python-headless", "tabulate"],
    extras_require={"test": ["pytest", "hypothesis"]},
)
