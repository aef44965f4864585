"""ge_detectron.compat applies a fix exactly when the installed detectron2 fails without it, replaces no
module, leaves detectron2's public API (detectron2.export's) intact and installs no warnings filter.

Whether a fix is needed is shown independently of compat's own probes: by running the detectron2 code
the fix is for in a process without ge_detectron (or with the fix undone), and by an AST scan of
detectron2's sources for the removed names it uses."""
import ast
import json
import os
import subprocess
import sys

import pytest
from ge_detectron import compat

pytestmark = pytest.mark.slow  # every test here runs a subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DETECTRON2 = os.path.dirname(__import__("detectron2").__file__)
NUMPY_ALIASES = ("int", "float", "str", "bool", "object", "complex")


def python(code):
    """Run ``code`` in a fresh interpreter; its last stdout line parsed as JSON."""
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def fails_without_ge_detectron(statement):
    """The exception type and message of ``statement`` in a process that never imports ge_detectron."""
    return python(f"""
import json
try:
    {statement}
    print(json.dumps(None))
except Exception as e:
    print(json.dumps([type(e).__name__, str(e)]))
""")


def detectron2_attribute_uses(module_name):
    """Attributes of ``module_name`` (as detectron2 imports it, e.g. ``np``) that detectron2's sources read."""
    used = set()
    for root, _, files in os.walk(DETECTRON2):
        for name in (n for n in files if n.endswith(".py")):
            with open(os.path.join(root, name), encoding="utf-8") as f:
                tree = ast.parse(f.read())
            used |= {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
                     and isinstance(node.value, ast.Name) and node.value.id == module_name}
    return used


def detectron2_imports(module_name):
    for root, _, files in os.walk(DETECTRON2):
        for name in (n for n in files if n.endswith(".py")):
            with open(os.path.join(root, name), encoding="utf-8") as f:
                tree = ast.parse(f.read())
            if any(isinstance(node, ast.Import) and any(a.name == module_name for a in node.names)
                   for node in tree.body):
                return True
    return False


@pytest.fixture(scope="module")
def before_and_after():
    """What numpy, Pillow and pkg_resources lack before ``import ge_detectron``, the fixes applied, whether
    ge_detectron's modules add warnings filters, and whether caffe2 / pkg_resources placeholders remain."""
    return python(f"""
import importlib.util, json, sys, warnings
import numpy
from PIL import Image
missing = {{"numpy": [a for a in {NUMPY_ALIASES!r} if a not in vars(numpy)], "LINEAR": not hasattr(Image, "LINEAR"),
            "pkg_resources": importlib.util.find_spec("pkg_resources") is None}}
callers = []  # the modules that add warnings filters (torch, numpy and sympy do, at import)
for name in ("filterwarnings", "simplefilter"):
    def record(*args, _add=getattr(warnings, name), **kwargs):
        callers.append(sys._getframe(1).f_globals.get("__name__", ""))
        return _add(*args, **kwargs)
    setattr(warnings, name, record)
import ge_detectron
from ge_detectron import compat
print(json.dumps({{"missing": missing, "applied": list(compat.applied()),
                  "filters_from_ge_detectron": [c for c in callers if c.startswith("ge_detectron")],
                  "filters_recorded": len(callers),
                  "caffe2_importable": importlib.util.find_spec("caffe2") is not None,
                  "pkg_resources_module": "pkg_resources" in sys.modules and
                                          getattr(sys.modules["pkg_resources"], "__file__", None) is None}}))
""")


def applied(state, prefix):
    return any(fix.startswith(prefix) for fix in state["applied"])


def test_the_extension_placeholder_exactly_when_detectron2_has_no_extension(before_and_after):
    failure = fails_without_ge_detectron("import detectron2.layers")
    assert applied(before_and_after, "detectron2._C placeholder") == (failure is not None)
    if failure:
        assert failure[0] == "ImportError" and "_C" in failure[1]


def test_pillow_linear_exactly_when_detectron2_reads_it_and_pillow_lacks_it(before_and_after):
    needed = "LINEAR" in detectron2_attribute_uses("Image") and before_and_after["missing"]["LINEAR"]
    assert applied(before_and_after, "PIL.Image.LINEAR") == needed
    failure = fails_without_ge_detectron("import detectron2.data.transforms")
    assert (failure is not None and "LINEAR" in failure[1]) == needed


def test_numpy_aliases_exactly_those_detectron2_uses_and_numpy_lacks(before_and_after):
    used = detectron2_attribute_uses("np")
    expected = {f"numpy.{a} = {a}" for a in before_and_after["missing"]["numpy"] if a in used}
    assert {fix for fix in before_and_after["applied"] if fix.startswith("numpy.")} == expected


def test_pkg_resources_exactly_when_model_zoo_imports_it_and_it_is_missing(before_and_after):
    needed = detectron2_imports("pkg_resources") and before_and_after["missing"]["pkg_resources"]
    assert applied(before_and_after, "pkg_resources") == needed
    assert not before_and_after["pkg_resources_module"]  # nothing but detectron2.model_zoo sees the function


def test_caffe2_placeholder_exactly_when_detectron2_export_does_not_import_without_it(before_and_after):
    failure = fails_without_ge_detectron("import detectron2.export")
    assert applied(before_and_after, "caffe2 placeholder") == (failure is not None)
    if failure:
        assert failure[0] == "ModuleNotFoundError" and "caffe2" in failure[1]
    assert not before_and_after["caffe2_importable"]  # the placeholder modules are gone after the import


def test_map_dataset_fix_exactly_when_its_retry_fails(before_and_after):
    from detectron2.data.common import MapDataset

    original = getattr(MapDataset.__init__, "__wrapped__", MapDataset.__init__)
    dataset = object.__new__(MapDataset)
    original(dataset, [0, 1], lambda x: x or None)  # the mapper fails for item 0: a retry picks item 1
    try:
        fails = dataset[0] != 1
    except TypeError:
        fails = True
    assert applied(before_and_after, "MapDataset") == fails
    assert MapDataset([0, 1], lambda x: x or None)[0] == 1  # with compat


def test_coco_eval_backend_replaced_exactly_when_the_extension_is_missing(before_and_after):
    from detectron2.evaluation import coco_evaluation

    from ge_detectron.evaluation import fast_coco_eval

    assert applied(before_and_after, "detectron2.evaluation's COCOeval_opt") == \
        applied(before_and_after, "detectron2._C placeholder") == (coco_evaluation.COCOeval_opt is fast_coco_eval)


def test_no_warnings_filter_and_the_fixes_logged_once(before_and_after, caplog):
    assert before_and_after["filters_from_ge_detectron"] == [] and before_and_after["filters_recorded"] > 0
    assert list(compat.applied()) == before_and_after["applied"]
    compat._state["logged"] = False
    with caplog.at_level("INFO", logger="ge_detectron.compat"):
        compat.log_applied()
        compat.log_applied()
    lines = [r.getMessage() for r in caplog.records if r.name == "ge_detectron.compat"]
    assert len(lines) == 1 and all(fix in lines[0] for fix in compat.applied())
    assert compat.applied() or "none needed" in lines[0]


def export_names_declared():
    """The public names detectron2/export/__init__.py defines when caffe2 is absent, read from its AST:
    its definitions and imports, ``from X import *`` resolved through X's ``__all__``; the imports that
    need caffe2 sit in a ``try`` (detectron2 main) and are left out."""
    package = os.path.join(DETECTRON2, "export")
    tree = ast.parse(open(os.path.join(package, "__init__.py")).read())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.names[0].name == "*":
            module = ast.parse(open(os.path.join(package, node.module + ".py")).read())
            declared = next(n.value for n in module.body if isinstance(n, ast.Assign) and n.targets[0].id == "__all__")
            names |= set(ast.literal_eval(declared))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {a.asname or a.name.split(".")[0] for a in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return {n for n in names if not n.startswith("_")}


def test_detectron2_export_api_is_intact_after_import_ge_detectron():
    import detectron2.export as export

    assert os.path.realpath(export.__file__) == os.path.realpath(os.path.join(DETECTRON2, "export", "__init__.py"))
    declared = export_names_declared()
    assert {"TracingAdapter", "scripting_with_instances", "dump_torchscript_IR"} <= declared
    assert declared <= set(export.__all__) and all(hasattr(export, name) for name in declared)
    if "STABLE_ONNX_OPSET_VERSION" in declared:  # detectron2 main: what its tools/deploy/export_model.py imports
        python("import json, ge_detectron\nfrom detectron2.export import STABLE_ONNX_OPSET_VERSION, TracingAdapter, "
               "dump_torchscript_IR, scripting_with_instances\nprint(json.dumps(STABLE_ONNX_OPSET_VERSION))")
    if applied({"applied": compat.applied()}, "caffe2 placeholder"):  # its Caffe2 half says why it cannot run
        from detectron2.export import api

        with pytest.raises(ImportError, match="caffe2 is not part of this torch"):
            api.caffe2_pb2.NetDef()
