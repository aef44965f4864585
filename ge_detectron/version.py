"""The package's version (``ge_detectron.__version__``), in the base layer so that every layer may report it."""
__version__ = "0.1.0"
