"""Make the installed detectron2 run on current torch, numpy, Pillow, setuptools and Python.

``apply()`` runs at ``import ge_detectron``, before detectron2's modules are imported. Each fix is
applied only when this detectron2 fails without it, which is decided by probing detectron2 itself:
whether its C++ extension is importable, which since-removed names its own sources use, whether its
``detectron2.export`` imports, how its ``MapDataset`` behaves. Versions of other packages decide
nothing, and no module of detectron2 is replaced: each fix supplies the one missing piece.

Measured (torch 2.14.1, numpy 2.4, Pillow 13, setuptools 81, Python 3.11): detectron2 main built from
source needs none; detectron2 0.6 built without its extension needs all but ``pkg_resources``, which
either needs once setuptools >= 82 is installed. ``applied()`` lists what was applied,
``log_applied()`` logs it (once per process).
"""
import contextlib
import functools
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import re
import sys
import types

from .coco_eval import fast_coco_eval

logger = logging.getLogger(__name__)

EXTENSION_PLACEHOLDER = "detectron2._C placeholder (detectron2 built without its C++/CUDA extension)"
_applied = []
_state = {"done": False, "logged": False}


def applied():
    """The fixes ``apply()`` applied in this process, in order (empty when detectron2 needs none)."""
    return tuple(_applied)


def log_applied():
    """Log, once per process, which fixes were applied."""
    if _state["logged"]:
        return
    _state["logged"] = True
    if _applied:
        logger.info("detectron2 compatibility fixes applied (ge_detectron.compat): " + "; ".join(_applied))
    else:
        logger.info("detectron2 compatibility fixes applied (ge_detectron.compat): none needed")


@functools.lru_cache(maxsize=None)
def _detectron2_dir():
    spec = importlib.util.find_spec("detectron2")  # a top-level package: found, not imported
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


@functools.lru_cache(maxsize=None)
def _detectron2_source():
    """The text of all of detectron2's Python files (about 2 MB, read once)."""
    texts = []
    for root, _, files in os.walk(_detectron2_dir()):
        for name in sorted(files):
            if name.endswith(".py"):
                with open(os.path.join(root, name), encoding="utf-8") as f:
                    texts.append(f.read())
    return "\n".join(texts)


@contextlib.contextmanager
def _modules_while_importing(finder):
    """Let ``finder`` provide modules for the duration of the block only; afterwards the modules it
    made are gone from ``sys.modules`` (those who imported them keep their references)."""
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        for name in [name for name in sys.modules if finder.provides(name)]:
            del sys.modules[name]


class _PlaceholderFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Provides the package ``root`` and any submodule of it as placeholder modules: every attribute
    is a class whose attributes are such classes too, and calling any of them raises ImportError with
    ``message``. Classes, so that detectron2's module-level uses (type annotations such as
    ``-> caffe2_pb2.NetDef`` or ``Dict[str, X]``, ``isinstance`` checks) still evaluate."""

    def __init__(self, root, message, attributes=None):
        self.root, self.message, self.attributes = root, message, attributes or {}

    def provides(self, name):
        return name == self.root or name.startswith(self.root + ".")

    def find_spec(self, name, path=None, target=None):
        return importlib.machinery.ModuleSpec(name, self, is_package=True) if self.provides(name) else None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        module.__path__ = []
        module.__dict__.update(self.attributes)
        message = self.message

        class Unavailable(type):
            def __call__(cls, *args, **kwargs):
                raise ImportError(f"{cls.__qualname__}: {message}")

            def __getattr__(cls, name):  # e.g. ``workspace.Int8Tensor`` at module level: another placeholder
                if name.startswith("__"):
                    raise AttributeError(name)
                return Unavailable(name, (), {"__qualname__": f"{cls.__qualname__}.{name}"})

        def __getattr__(name):
            if name.startswith("__"):
                raise AttributeError(name)
            return Unavailable(name, (), {"__qualname__": f"{module.__name__}.{name}"})

        module.__getattr__ = __getattr__


def _extension_placeholder():
    """detectron2 built without its C++/CUDA extension (e.g. detectron2 0.6 from PyPI's sources): its
    layers, evaluation and ``collect_env_info`` import ``detectron2._C`` at module level. The placeholder
    makes them import; its ops raise NotImplementedError saying what is missing."""
    if importlib.util.find_spec("detectron2._C") is not None:
        return
    module = types.ModuleType("detectron2._C")

    def missing(*args, **kwargs):
        raise NotImplementedError(
            "this detectron2 was installed without its C++/CUDA extension (detectron2._C), so this op "
            "(deformable conv, rotated boxes or the C++ COCO evaluator) is unavailable. Build detectron2 "
            "from source for it (make install DETECTRON2_SRC=...); ge_detectron itself does not need it.")

    def __getattr__(name):
        if name.startswith("__"):
            raise AttributeError(name)
        return missing

    module.__getattr__ = __getattr__
    module.get_compiler_version = lambda: "none (detectron2 built without its extension)"
    module.get_cuda_version = lambda: "none"
    module.has_cuda = lambda: False
    sys.modules["detectron2._C"] = module
    _applied.append(EXTENSION_PLACEHOLDER)


def _pillow_linear():
    """detectron2 0.6 reads ``PIL.Image.LINEAR`` (removed in Pillow 10) at class definition."""
    from PIL import Image

    if not hasattr(Image, "LINEAR") and "Image.LINEAR" in _detectron2_source():
        Image.LINEAR = Image.BILINEAR
        _applied.append("PIL.Image.LINEAR = Image.BILINEAR")


def _numpy_aliases():
    """detectron2 0.6 uses ``np.int``, ``np.float``, ``np.str`` (removed in numpy 1.24), e.g. in the class
    histogram of every training run and the Pascal VOC loader: restore those it uses and numpy lacks."""
    import numpy as np

    builtins = {"int": int, "float": float, "str": str, "bool": bool, "object": object, "complex": complex}
    used = set(re.findall(r"np\.(int|float|str|bool|object|complex)\b", _detectron2_source()))
    for alias in sorted(name for name in used if name not in np.__dict__):  # numpy's __getattr__ would warn
        setattr(np, alias, builtins[alias])
        _applied.append(f"numpy.{alias} = {alias}")


def _pkg_resources_for_model_zoo():
    """``detectron2.model_zoo`` imports ``pkg_resources`` (not shipped by setuptools >= 82) for its one
    function ``resource_filename``: model_zoo gets a module with that function; nothing else sees it."""
    if importlib.util.find_spec("pkg_resources") is not None or "\nimport pkg_resources" not in _detectron2_source():
        return
    from importlib import resources

    def resource_filename(package, name):
        return str(resources.files(package).joinpath(name))

    finder = _PlaceholderFinder("pkg_resources", "pkg_resources is not installed (setuptools >= 82)",
                                {"resource_filename": resource_filename})
    with _modules_while_importing(finder):
        importlib.import_module("detectron2.model_zoo")
    _applied.append("pkg_resources.resource_filename for detectron2.model_zoo")


def _caffe2_for_export():
    """detectron2 0.6's ``detectron2.export`` imports caffe2 (not part of torch 2) unconditionally, so
    TracingAdapter, scripting and the rest of its public API fail to import. It is imported here with
    placeholder caffe2 modules, which only its Caffe2 export functions use (they then raise ImportError);
    afterwards no caffe2 module remains importable."""
    try:
        importlib.import_module("detectron2.export")
        return
    except ModuleNotFoundError as e:
        if not (e.name or "").split(".")[0] == "caffe2":
            raise
    finder = _PlaceholderFinder("caffe2", "caffe2 is not part of this torch, so detectron2's Caffe2 export "
                                "is unavailable (TracingAdapter, scripting_with_instances and torch.onnx work)")
    with _modules_while_importing(finder):
        importlib.import_module("detectron2.export")
    _applied.append("caffe2 placeholder while importing detectron2.export")


class _SampleableSet(set):
    """A set that ``random.sample`` accepts (Python 3.11 samples only from sequences)."""

    def __getitem__(self, index):
        return sorted(self)[index]  # only on MapDataset's retry path, after a mapper returned None


def _map_dataset_sampling():
    """detectron2 0.6's MapDataset answers a mapper that returns None (e.g. an unreadable image) with
    ``random.sample`` of a set, a TypeError since Python 3.11: probed with a two-item MapDataset."""
    import collections.abc

    from detectron2.data.common import MapDataset

    try:
        MapDataset([0, 1], lambda x: x or None)[0]
        return
    except TypeError:
        pass
    collections.abc.Sequence.register(_SampleableSet)
    original_init = MapDataset.__init__

    @functools.wraps(original_init)
    def __init__(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self._fallback_candidates = _SampleableSet(self._fallback_candidates)

    MapDataset.__init__ = __init__
    _applied.append("MapDataset retry sampling on Python >= 3.11")


def _coco_eval_without_extension():
    """Without the extension, detectron2's fast COCO evaluator (``COCOeval_opt``, the default of
    COCOEvaluator) is C++ that is missing: ``ge_detectron.coco_eval.fast_coco_eval`` takes its place."""
    if EXTENSION_PLACEHOLDER not in _applied:
        return
    from detectron2.evaluation import coco_evaluation

    coco_evaluation.COCOeval_opt = fast_coco_eval
    _applied.append("detectron2.evaluation's COCOeval_opt = ge_detectron.evaluation.fast_coco_eval "
                    "(faster-coco-eval or pycocotools)")


def apply():
    """Apply the fixes this detectron2 needs (once per process); returns ``applied()``."""
    if not _state["done"] and _detectron2_dir() is not None:
        _state["done"] = True
        for fix in (_extension_placeholder, _pillow_linear, _numpy_aliases, _pkg_resources_for_model_zoo,
                    _caffe2_for_export, _map_dataset_sampling, _coco_eval_without_extension):
            fix()
    return applied()
