"""ge_detectron: Gather-Excite networks as a detectron2 plugin.

Install into an environment that has torch, torchvision and detectron2:
    pip install --no-build-isolation -e .
This builds the C++ CPU kernels of the fused excite operator (ge_detectron/csrc; a C++ compiler is all
it needs). The operator's CUDA kernels are Triton kernels (ge_detectron/ops), compiled at run time by the
triton that CUDA builds of torch install: nothing CUDA is built here.
Without torch at build time (pip's default build isolation) the package installs without the
extension, and the operator runs on the CPU in PyTorch ops.
"""
import glob
import os
import sys

from setuptools import find_packages, setup

CSRC = os.path.join("ge_detectron", "csrc")


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
              "fused excite operator are not built (the operator then runs in PyTorch ops on the CPU). Install "
              "with `pip install --no-build-isolation -e .` to build them.", file=sys.stderr)
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
    install_requires=["fvcore", "pycocotools", "faster-coco-eval", "opencv-python-headless", "tabulate", "matplotlib",
                      "protobuf"],
    extras_require={"test": ["pytest", "hypothesis"], "export": ["onnx", "onnxruntime", "onnxscript"]},
)
