"""The package's layering, as docs/design.md's map states it: every module of ge_detectron imports (at module
level or inside a function) only from its own layer or lower ones; layers/ speak of arguments, not of
``MODEL.GE`` keys; the tools are thin entry points into the package."""
import ast
import glob
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "ge_detectron")

# The layers, lowest first; a module belongs to the layer of the longest prefix its path (relative to
# ge_detectron/, without ".py") equals or lies under. "_C" is the compiled extension (csrc/).
LAYERS = [
    ("base", ["atomic", "compat", "evaluation", "launch", "benchmark", "safe_load"]),
    ("ops", ["ops", "_C"]),
    ("layers", ["layers"]),
    ("builder arguments", ["modeling/arguments"]),
    ("config", ["config"]),
    ("modeling", ["modeling"]),
    ("data and checkpoints", ["data", "checkpoint"]),
    ("engine", ["engine"]),
    ("run flows", ["detection", "pretrain"]),
    ("export and analysis", ["export", "analysis"]),
    ("tool flows", ["detection/cli", "export/cli", "gpu_check"]),
    ("public API", ["__init__"]),
]


def layer_of(module_path):
    """The index in LAYERS of a module given by its path relative to ge_detectron/ ("ops/excite_op")."""
    matches = [(len(p), index) for index, (_, prefixes) in enumerate(LAYERS) for p in prefixes
               if module_path == p or module_path.startswith(p + "/")]
    assert matches, f"ge_detectron/{module_path} is in no layer: add it to LAYERS in {__file__}"
    return max(matches)[1]


def package_modules():
    """Every module of ge_detectron as its path relative to ge_detectron/, without .py."""
    paths = glob.glob(os.path.join(PACKAGE, "**", "*.py"), recursive=True)
    return sorted(os.path.relpath(p, PACKAGE)[:-3] for p in paths)


def imported_modules(path):
    tree = ast.parse(open(path).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            yield "." * node.level + (node.module or "")
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def package_imports(module_path):
    """The ge_detectron modules that ``module_path`` imports, as paths relative to ge_detectron/ (``from . import
    x`` and ``from .pkg import name`` resolved to the module or package they name)."""
    file = os.path.join(PACKAGE, module_path + ".py")
    package = module_path.split("/")[:-1]  # the package holding the module (for __init__: the package itself)
    tree = ast.parse(open(file).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - node.level + 1]
            targets = [base + node.module.split(".")] if node.module else [base + [a.name] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "ge_detectron":
            targets = [node.module.split(".")[1:] or [a.name for a in node.names][:1]]
        elif isinstance(node, ast.Import):
            targets = [a.name.split(".")[1:] for a in node.names if a.name.split(".")[0] == "ge_detectron"]
        else:
            continue
        for parts in targets:
            while parts and not (os.path.exists(os.path.join(PACKAGE, *parts) + ".py")
                                 or os.path.isdir(os.path.join(PACKAGE, *parts)) or parts == ["_C"]):
                parts = parts[:-1]  # a name imported from a module or a package's __init__
            yield "/".join(parts) if parts else "__init__"


def test_package_imports_point_down_the_layers():
    modules = package_modules()
    assert "ops/excite_op" in modules and "__init__" in modules
    upward = []
    for module in modules:
        for imported in package_imports(module):
            if layer_of(imported) > layer_of(module):
                upward.append(f"{module} ({LAYERS[layer_of(module)][0]}) imports {imported} "
                              f"({LAYERS[layer_of(imported)][0]})")
    assert not upward, "imports against the layering of docs/design.md:\n" + "\n".join(upward)


def test_layering_check_resolves_relative_and_absolute_imports():
    """The resolver itself, on modules whose imports are known: a check that finds no imports passes trivially."""
    assert set(package_imports("modeling/backbone")) >= {"config", "layers"}
    assert set(package_imports("layers/gather_excite")) >= {"layers/gathers", "ops"}
    assert "_C" in set(package_imports("ops/excite_cpp"))
    assert layer_of("ops/excite_op") < layer_of("layers/gathers") < layer_of("modeling/backbone")
    assert layer_of("detection/cli") > layer_of("engine")


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
