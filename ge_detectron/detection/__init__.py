"""Training, evaluation and prediction of GE detectors: the YAML trainer (``DetectionTrainer``), the
LazyConfig trainer (``lazy``), what both task adapters share (``task_mixin``), the predictor (``predictor``)
and the images in and out of every predictor (``images``). The tools' flows are ``ge_detectron.cli``'s."""
from .trainer import DetectionTrainer
