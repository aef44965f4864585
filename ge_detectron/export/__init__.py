"""Export of GE detectors (any detectron2 detector of a YAML config or a LazyConfig) to TorchScript and
ONNX, and the predictor that runs the exported files; docs/export.md."""
from .backbone import export_backbone, export_backbone_onnx
from .exporter import FORMATS, ExportError, export_predictor
from .predictor import ExportedPredictor

__all__ = ["ExportError", "FORMATS", "export_predictor", "ExportedPredictor", "export_backbone", "export_backbone_onnx"]
