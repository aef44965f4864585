"""Backbone pretraining (ImageNet or any ImageFolder) and the weight hand-off to the detectors;
see docs/pretraining.md."""
from .config import PretrainConfigError, add_pretrain_config, get_pretrain_cfg, validate_pretrain_config
from .convert import TORCHVISION_CONVENTIONS, load_into_detector, to_backbone_checkpoint
from .evaluator import ClassificationEvaluator
from .task import ClassificationTask
from .trainer import PretrainTrainer, Pretraining
