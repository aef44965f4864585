"""Make detectron2 0.6 import and run on current torch / numpy / Pillow / setuptools.

Applied by ``import ge_detectron`` before the first detectron2 import. Every fix is applied only
where the thing it stands in for is missing, so an official detectron2 build (with its C++/CUDA
extension) and older libraries are left untouched. ``APPLIED`` lists the fixes that were needed.
"""
import collections.abc
import importlib.util
import os
import sys
import types
import warnings

APPLIED = []


def _detectron2_dir():
    spec = importlib.util.find_spec("detectron2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def _has_compiled_extension(package_dir):
    return any(name.startswith("_C.") and name.endswith((".so", ".pyd")) for name in os.listdir(package_dir))


def _placeholder_extension():
    """``detectron2._C`` for a build without the extension: imports work, ops say what is missing."""

    module = types.ModuleType("detectron2._C")

    def missing(*args, **kwargs):
        raise NotImplementedError(
            "this detectron2 was installed without its C++/CUDA extension (detectron2._C), so this op "
            "(deformable conv, rotated boxes or the C++ COCO evaluator) is unavailable. Build detectron2 "
            "from source for it; ge_detectron itself does not need it."
        )

    def __getattr__(name):
        if name.startswith("__"):
            raise AttributeError(name)
        return missing

    module.__getattr__ = __getattr__
    module.get_compiler_version = lambda: "none (detectron2 built without its extension)"
    module.get_cuda_version = lambda: "none"
    module.has_cuda = lambda: False
    return module


def _caffe2_free_export_package(path):
    """``detectron2.export`` without its caffe2 half: the submodules import as usual, and the names
    that detectron2 itself imports from the package (e.g. ``detectron2.utils.analysis``) resolve lazily."""
    module = types.ModuleType("detectron2.export")
    module.__path__ = [path]
    module.__package__ = "detectron2.export"
    lazy = {"TracingAdapter": "flatten", "flatten_to_tuple": "flatten",
            "scripting_with_instances": "torchscript", "dump_torchscript_IR": "torchscript"}

    def __getattr__(name):
        if name not in lazy:
            raise AttributeError(f"detectron2.export.{name} needs caffe2, which this torch does not ship")
        return getattr(importlib.import_module(f"detectron2.export.{lazy[name]}"), name)

    module.__getattr__ = __getattr__
    return module


class _SampleableSet(set):
    """A set that ``random.sample`` accepts (Python 3.11 stopped sampling from sets), for the index
    pool of detectron2's MapDataset, which samples a replacement when a mapper returns None."""

    def __getitem__(self, index):
        return sorted(self)[index]  # only used on the rare retry path


collections.abc.Sequence.register(_SampleableSet)


def _sampleable_map_dataset_fallbacks():
    from detectron2.data.common import MapDataset

    original_init = MapDataset.__init__

    def __init__(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self._fallback_candidates = _SampleableSet(self._fallback_candidates)

    MapDataset.__init__ = __init__


def apply():
    if APPLIED:
        return APPLIED
    # detectron2 0.6 decorates helpers with @torch.jit.script at import; torch 2.10+ warns on each one.
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
    package_dir = _detectron2_dir()
    if package_dir is not None and not _has_compiled_extension(package_dir):
        sys.modules.setdefault("detectron2._C", _placeholder_extension())
        APPLIED.append("detectron2._C placeholder")

    from PIL import Image

    if not hasattr(Image, "LINEAR"):
        Image.LINEAR = Image.BILINEAR
        APPLIED.append("PIL.Image.LINEAR")

    import numpy as np

    for alias, builtin in (("int", int), ("float", float), ("str", str), ("object", object), ("bool", bool)):
        if alias not in np.__dict__:
            setattr(np, alias, builtin)
            APPLIED.append(f"numpy.{alias}")

    if importlib.util.find_spec("pkg_resources") is None:
        from importlib import resources

        shim = types.ModuleType("pkg_resources")
        shim.resource_filename = lambda package, name: str(resources.files(package).joinpath(name))
        sys.modules["pkg_resources"] = shim
        APPLIED.append("pkg_resources.resource_filename")

    # detectron2/export/__init__.py imports caffe2, which torch 2 no longer ships; a bare package
    # keeps detectron2.export.flatten (TracingAdapter) and .torchscript importable.
    if package_dir is not None and importlib.util.find_spec("caffe2") is None:
        sys.modules.setdefault("detectron2.export", _caffe2_free_export_package(os.path.join(package_dir, "export")))
        APPLIED.append("detectron2.export without caffe2")

    if package_dir is not None and sys.version_info >= (3, 11):
        _sampleable_map_dataset_fallbacks()
        APPLIED.append("MapDataset retry on Python >= 3.11")
    return APPLIED
