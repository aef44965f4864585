"""ge_detectron: Gather-Excite networks as a detectron2 plugin.

Install into an environment that has torch, torchvision and detectron2:
    pip install --no-build-isolation -e .      (a checkout: configs are read from configs/)
    pip wheel --no-build-isolation .           (a wheel: configs copied into ge_detectron/model_zoo/configs)
This builds the C++ CPU kernels of the fused excite operator (ge_detectron/csrc; a C++ compiler is all
it needs). The operator's CUDA kernels are Triton kernels (ge_detectron/ops), compiled at run time by the
triton that CUDA builds of torch install: nothing CUDA is built here.
Without torch at build time (pip's default build isolation) the package installs without the
extension, and the operator runs on the CPU in PyTorch ops.
"""
import glob
import os
import shutil
import sys

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

CSRC = os.path.join("ge_detectron", "csrc")
MIN_TORCH = "2.7"  # the oldest torch the package supports: ge_detectron/version.py's MIN_TORCH


class BuildPyWithConfigs(build_py):
    """build_py that also copies the top-level configs/ (the source of truth) into the built package as
    ge_detectron/model_zoo/configs, as detectron2 ships its model zoo's configs."""

    def run(self):
        super().run()
        target = os.path.join(self.build_lib, "ge_detectron", "model_zoo", "configs")
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree("configs", target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def get_extensions():
    """The ``ge_detectron._C`` extension: the excite operators' C++ CPU kernels. The C++ standard is left to
    torch's cpp_extension (C++17 or C++20, whichever the installed torch's headers need)."""
    sources = sorted(glob.glob(os.path.join(CSRC, "*.cpp")))
    if not sources:
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        print("ge_detectron: torch is not importable in the build environment, so the C++ CPU kernels of the "
              "fused excite operator are not built (the operator then runs in PyTorch ops on the CPU). Build "
              "with `pip install --no-build-isolation .` (or `pip wheel --no-build-isolation .`) to include them.",
              file=sys.stderr)
        return [], {}

    cxx_flags, link_flags = ["-O3"], []
    if _torch_uses_openmp(torch):
        # at::parallel_for is a header template: without -fopenmp it compiles to a serial loop. The
        # extension then links the libgomp.so.1 that torch has already loaded (same soname): one runtime.
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    extension = CppExtension("ge_detectron._C", sources, extra_compile_args={"cxx": cxx_flags},
                             extra_link_args=link_flags)
    return [extension], {"build_ext": BuildExtension.with_options(use_ninja=_has_ninja())}


def _torch_uses_openmp(torch):
    """Whether torch's intra-op parallelism is OpenMP (as in the Linux wheels), on Linux (GCC's -fopenmp)."""
    return sys.platform.startswith("linux") and "ATen parallel backend: OpenMP" in torch.__config__.parallel_info()


def _has_ninja():
    from torch.utils.cpp_extension import is_ninja_available

    return is_ninja_available()


ext_modules, cmdclass = get_extensions()
cmdclass["build_py"] = BuildPyWithConfigs

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
    # detectron2 is expected in the environment (see README: it is not on PyPI under its own name); torch
    # is named with its supported range (README, "Versions") and not installed by the Makefile's route.
    install_requires=[f"torch>={MIN_TORCH}", "fvcore", "pycocotools", "faster-coco-eval", "opencv-python-headless", "tabulate", "matplotlib",
                      "protobuf"],
    extras_require={"test": ["pytest", "hypothesis"], "export": ["onnx", "onnxruntime", "onnxscript"]},
)
