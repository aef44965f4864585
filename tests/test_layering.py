"""The package's layering as docs/design.md's map states it: every module of ge_detectron imports (at module
level or inside a function) only from its own layer or lower ones; no two modules and no two packages of
ge_detectron import each other, directly or around a circle; no module imports the package inside a function
(the import a cycle would hide behind); layers/ speak of arguments, not of ``MODEL.GE`` keys; the tools are
entry points into the package that import nothing of tests/ or of each other. The checker is tested on a
small package with each fault."""
import ast
import glob
import os
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "ge_detectron")
TOOLS = os.path.join(REPO, "tools")

# docs/design.md's map, lowest first; a module belongs to the layer of the longest prefix its path (relative to
# ge_detectron/, without ".py") equals or lies under. "_C" is the compiled extension (csrc/).
LAYERS = [
    ("base", ["atomic", "compat", "coco_eval", "evaluation", "launch", "benchmark", "safe_load", "config_files",
              "version"]),
    ("ops", ["ops", "_C"]),
    ("layers", ["layers"]),
    ("config", ["config"]),
    ("modeling", ["modeling"]),
    ("checkpoint", ["checkpoint"]),
    ("data", ["data"]),
    ("engine", ["engine"]),
    ("flows", ["detection", "pretrain"]),
    ("applications", ["export", "analysis", "fused_gradients", "model_zoo"]),
    ("command-line flows", ["cli", "collect_env"]),
    ("public API", ["__init__"]),
]

def layer_of(module, layers=LAYERS):
    """The index in ``layers`` of a module given by its path relative to the package ("ops/excite_op")."""
    matches = [(len(p), index) for index, (_, prefixes) in enumerate(layers) for p in prefixes
               if module == p or module.startswith(p + "/")]
    assert matches, f"{module} is in no layer: add it to docs/design.md's map and LAYERS in {__file__}"
    return max(matches)[1]


def package_modules(root=PACKAGE):
    """Every module of the package at ``root`` as its path relative to ``root``, without .py."""
    paths = glob.glob(os.path.join(root, "**", "*.py"), recursive=True)
    return sorted(os.path.relpath(p, root)[:-3] for p in paths)


def _imports_with_scope(tree):
    """(import node, whether it sits inside a function) for every import of a module's AST."""
    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, in_function
            yield from visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                      ast.Lambda)))
    yield from visit(tree, False)


def imported_modules(path):
    tree = ast.parse(open(path).read())
    for node, _ in _imports_with_scope(tree):
        if isinstance(node, ast.ImportFrom):
            yield "." * node.level + (node.module or "")
        else:
            yield from (alias.name for alias in node.names)


def package_imports(module, root=PACKAGE, name="ge_detectron", function_level=None):
    """The package's modules that ``module`` imports, as paths relative to ``root`` (``from . import x`` and
    ``from .pkg import name`` resolved to the module or package they name; a package as its path, its
    ``__init__`` as "__init__" for the top level). ``function_level``: True for the imports inside functions
    only, False for the others, None for all."""
    file = os.path.join(root, module + ".py")
    package = module.split("/")[:-1]  # the package holding the module (for __init__: the package itself)
    for node, in_function in _imports_with_scope(ast.parse(open(file).read())):
        if function_level is not None and in_function != function_level:
            continue
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - node.level + 1]
            targets = [base + node.module.split(".")] if node.module else [base + [a.name] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == name:
            targets = [node.module.split(".")[1:] or [a.name for a in node.names][:1]]
        elif isinstance(node, ast.Import):
            targets = [a.name.split(".")[1:] for a in node.names if a.name.split(".")[0] == name]
        else:
            continue
        for parts in targets:
            while parts and not (os.path.exists(os.path.join(root, *parts) + ".py")
                                 or os.path.isdir(os.path.join(root, *parts)) or parts == ["_C"]):
                parts = parts[:-1]  # a name imported from a module or a package's __init__
            yield "/".join(parts) if parts else "__init__"


def upward_imports(root=PACKAGE, name="ge_detectron", layers=LAYERS):
    """"module (layer) imports module (layer)" for every import against ``layers``."""
    found = []
    for module in package_modules(root):
        for imported in package_imports(module, root, name):
            if layer_of(imported, layers) > layer_of(module, layers):
                found.append(f"{module} ({layers[layer_of(module, layers)][0]}) imports {imported} "
                             f"({layers[layer_of(imported, layers)][0]})")
    return found


def _module_node(imported, root):
    """The module an import target names: a package's ``__init__`` for a package."""
    return imported + "/__init__" if os.path.isdir(os.path.join(root, imported)) else imported


def _cycles(edges):
    """Each cycle of the directed graph ``edges`` ({node: {node, ...}}) found by a depth-first search, as the
    list of its nodes with the first repeated at the end (every node lies on at most one listed cycle)."""
    found, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for succ in sorted(edges.get(node, ())):
            if state.get(succ) == "open":
                found.append(path[path.index(succ):] + [succ])
            elif succ not in state:
                visit(succ, path + [succ])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return found


def import_cycles(root=PACKAGE, name="ge_detectron"):
    """The cycles of the package's import graph, between modules and between top-level packages (a package:
    all its modules; a top-level module is its own package), as "a -> b -> a" lines."""
    modules, packages = {}, {}
    for module in package_modules(root):
        for imported in package_imports(module, root, name):
            target = _module_node(imported, root)
            if target != module:
                modules.setdefault(module, set()).add(target)
            source_package, target_package = module.split("/")[0], target.split("/")[0]
            if source_package != target_package:
                packages.setdefault(source_package, set()).add(target_package)
    return [" -> ".join(cycle) for graph in (modules, packages) for cycle in _cycles(graph)]


def function_level_imports(root=PACKAGE, name="ge_detectron"):
    """"module imports module inside a function" for every import of the package inside a function."""
    return [f"{module} imports {imported} inside a function" for module in package_modules(root)
            for imported in package_imports(module, root, name, function_level=True)]


def test_package_imports_point_down_the_layers():
    modules = package_modules()
    assert "ops/excite_op" in modules and "__init__" in modules and "cli/train" in modules
    upward = upward_imports()
    assert not upward, "imports against the layering of docs/design.md:\n" + "\n".join(upward)


def test_no_import_cycle_between_modules_or_packages():
    cycles = import_cycles()
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_function_level_import_of_the_package():
    hidden = function_level_imports()
    assert not hidden, "imports of ge_detectron inside functions:\n" + "\n".join(hidden)


def test_layering_check_resolves_relative_and_absolute_imports():
    """The resolver itself, on modules whose imports are known: a check that finds no imports passes trivially."""
    assert set(package_imports("modeling/backbone")) >= {"config", "layers"}
    assert set(package_imports("layers/gather_excite")) >= {"layers/gathers", "ops"}
    assert "_C" in set(package_imports("ops/excite_cpp"))
    assert {"detection/predictor", "export/predictor", "cli/checks"} <= set(package_imports("cli/predict"))
    assert layer_of("ops/excite_op") < layer_of("layers/gathers") < layer_of("modeling/backbone")
    assert layer_of("detection/predictor") < layer_of("export/predictor") < layer_of("cli/predict")
    assert layer_of("engine") < layer_of("detection") < layer_of("cli")


def test_the_checker_reports_an_upward_import_a_cycle_and_a_hidden_function_level_import(tmp_path):
    """A package ``pkg`` with one fault of each kind: ``low`` imports ``high`` (a layer above) at module level,
    and ``high`` imports ``low``: upward and a module cycle; the packages ``a`` and ``b`` import each other
    through different modules (a package cycle without a module cycle); ``hidden`` imports ``high`` inside a
    function, once relatively and once absolutely."""
    files = {
        "__init__.py": "from . import high\n",
        "low.py": "from .high import VALUE\n",
        "high.py": "from . import low\nVALUE = 1\n",
        "a/__init__.py": "",
        "a/one.py": "from ..b.two import TWO\nONE = 1\n",
        "a/three.py": "",
        "b/__init__.py": "",
        "b/two.py": "from ..a import three\nTWO = 2\n",
        "hidden.py": """
            import os


            def value():
                from .high import VALUE
                return VALUE


            class Lazy:
                def value(self):
                    import pkg.high
                    return pkg.high.VALUE + len(os.sep)
            """,
    }
    root = tmp_path / "pkg"
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(textwrap.dedent(text))
    layers = [("low", ["low"]), ("a", ["a"]), ("b", ["b"]), ("high", ["high"]), ("top", ["hidden"]),
              ("api", ["__init__"])]

    assert upward_imports(str(root), "pkg", layers) == ["a/one (a) imports b/two (b)", "low (low) imports high (high)"]
    cycles = import_cycles(str(root), "pkg")
    assert "high -> low -> high" in cycles
    assert "a -> b -> a" in cycles
    assert not any(c.startswith("a/") or c.startswith("b/") for c in cycles)  # no module cycle between a and b
    assert function_level_imports(str(root), "pkg") == ["hidden imports high inside a function"] * 2
    # the same package with the faults removed passes every check
    (root / "low.py").write_text("VALUE = 1\n")
    (root / "a" / "one.py").write_text("ONE = 1\n")
    (root / "hidden.py").write_text("from .high import VALUE\n")
    assert upward_imports(str(root), "pkg", layers) == []
    assert import_cycles(str(root), "pkg") == []
    assert function_level_imports(str(root), "pkg") == []


def test_layers_are_docs_design_md_map():
    """LAYERS is the table of docs/design.md's map: the same layers in the same order with the same modules."""
    text = open(os.path.join(REPO, "docs", "design.md")).read().split("## Map", 1)[1]
    table_lines = text[text.index("\n|"):].strip().split("\n\n")[0].splitlines()[2:]  # after header and rule
    rows = [line.split("|")[1:3] for line in table_lines]
    table = [(layer.strip(), [m.removesuffix(".py").rstrip("/") for m in modules.split("`")[1::2] if m != "csrc/"])
             for layer, modules in rows]
    assert table == LAYERS


def test_layers_import_nothing_from_config_and_name_no_config_keys():
    files = glob.glob(os.path.join(REPO, "ge_detectron", "layers", "*.py"))
    assert files
    for path in files:
        assert not [m for m in imported_modules(path) if m.endswith("config") or ".config" in m], path
        assert "MODEL.GE" not in open(path).read(), path


def test_detection_tools_only_call_the_package():
    for tool, flow in (("train_net.py", "train"), ("lazyconfig_train_net.py", "train"), ("predict.py", "predict"),
                       ("export_model.py", "export"), ("pretrain_net.py", "train")):
        path = os.path.join(TOOLS, tool)
        assert set(imported_modules(path)) == {f"ge_detectron.cli.{flow}"}, tool


def test_tools_import_nothing_of_tests_or_of_each_other():
    tools = sorted(glob.glob(os.path.join(TOOLS, "*.py")))
    assert len(tools) >= 10
    repository_modules = ({os.path.basename(p)[:-3] for p in tools + glob.glob(os.path.join(REPO, "tests", "*.py"))}
                          | {"tests", "tools"})
    for path in tools:
        imported = {m.lstrip(".").split(".")[0] for m in imported_modules(path)}
        assert not imported & repository_modules, f"{path} imports {sorted(imported & repository_modules)}"
        assert "sys.path" not in open(path).read(), path
