"""The package's layering: layers/ (the GE module and its gathers) import nothing from the config layer and
speak of arguments, not of ``MODEL.GE`` keys; the tools are thin entry points into the package."""
import ast
import glob
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def imported_modules(path):
    tree = ast.parse(open(path).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            yield "." * node.level + (node.module or "")
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def test_layers_import_nothing_from_config_and_name_no_config_keys():
    files = glob.glob(os.path.join(REPO, "ge_detectron", "layers", "*.py"))
    assert files
    for path in files:
        assert not [m for m in imported_modules(path) if m.endswith("config") or ".config" in m], path
        assert "MODEL.GE" not in open(path).read(), path


def test_detection_tools_only_call_the_package():
    for tool in ("train_net.py", "lazyconfig_train_net.py", "predict.py"):
        path = os.path.join(REPO, "tools", tool)
        assert set(imported_modules(path)) == {"ge_detectron.detection.cli"}, tool
