"""Training, evaluation and prediction of GE detectors: the YAML trainer (``DetectionTrainer``), the
LazyConfig trainer (``lazy``), the predictor (``predictor``) and the tools' command-line flows (``cli``)."""
from .trainer import DetectionTrainer
