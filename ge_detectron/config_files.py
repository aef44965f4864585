"""Where the config files are: a path as given, or a name of the model zoo (a path relative to the configs
directory, e.g. ``faster_rcnn_ge_r50.yaml`` or ``demo/faster_rcnn_ge_theta_e8_r50_fpn_shapes.yaml``).

The configs directory is the repository's top-level ``configs/`` in a checkout (an editable install), else
the copy that setup.py's build_py puts into a built package (``ge_detectron/model_zoo/configs``).
``resolve_config_file`` is the one function every config loader (YAML and LazyConfig) calls."""
import os

__all__ = ["configs_dir", "list_configs", "resolve_config_file"]

_PACKAGE = os.path.dirname(os.path.abspath(__file__))
_CHECKOUT_CONFIGS = os.path.join(os.path.dirname(_PACKAGE), "configs")
_PACKAGED_CONFIGS = os.path.join(_PACKAGE, "model_zoo", "configs")
_MARKER = "Base-GE-RCNN-C4.yaml"  # a file only this project's configs directory holds


def configs_dir():
    """The configs directory: the checkout's ``configs/`` if this package sits in a checkout, else the copy
    inside the package (None if neither exists: a package built without its configs)."""
    for directory in (_CHECKOUT_CONFIGS, _PACKAGED_CONFIGS):
        if os.path.isfile(os.path.join(directory, _MARKER)):
            return directory
    return None


def list_configs():
    """The model zoo's config names (YAML and LazyConfig files, ``common/`` excluded: it is imported, not loaded)."""
    root = configs_dir()
    if root is None:
        return []
    names = []
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = sorted(d for d in subdirectories if d not in ("common", "__pycache__"))
        names += [os.path.relpath(os.path.join(directory, f), root) for f in sorted(files)
                  if f.endswith((".yaml", ".py"))]
    return names


def resolve_config_file(name_or_path):
    """``name_or_path`` if it is an existing file, else the model zoo's file of that name if there is one, else
    ``name_or_path`` unchanged (the loader then reports it as not found)."""
    if not name_or_path or os.path.isfile(name_or_path):
        return name_or_path
    root = configs_dir()
    candidate = os.path.join(root, name_or_path) if root and not os.path.isabs(name_or_path) else None
    return candidate if candidate and os.path.isfile(candidate) else name_or_path
