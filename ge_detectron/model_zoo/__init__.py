"""The project's configs by name, as ``detectron2.model_zoo`` serves detectron2's: ``get_config_file`` (the
path of a config), ``get_config`` (a YAML config as a frozen CfgNode with the ``MODEL.GE`` keys, a LazyConfig
``.py`` as its LazyConfig) and ``list_configs`` (the names). The names are paths relative to the repository's
``configs/``, which a built package holds as ``ge_detectron/model_zoo/configs``."""
from ..config import config_file_not_found, get_ge_cfg
from ..config_files import list_configs, resolve_config_file
from ..detection.lazy import load_lazy_config

__all__ = ["get_config_file", "get_config", "list_configs"]


def get_config_file(name):
    """The path of the model zoo's config ``name`` (e.g. ``"faster_rcnn_ge_r50.yaml"``); GEConfigError if there
    is none of that name."""
    path = resolve_config_file(name)
    if path == name and name not in list_configs():
        raise config_file_not_found(name)
    return path


def get_config(name, overrides=()):
    """The model zoo's config ``name`` loaded: a ``.py`` name as its LazyConfig (``key=value`` overrides), any
    other as a validated, frozen CfgNode with the ``MODEL.GE`` keys (``KEY VALUE`` overrides)."""
    path = get_config_file(name)
    return load_lazy_config(path, overrides) if path.endswith(".py") else get_ge_cfg(path, overrides)
