"""What the training tools share around detectron2's trainers: one trainer over the config systems
(``trainer``: GETrainer; ``config_system``: the adapters' interface), checkpoints that resume exactly
(``resume``), a clear stop on a fault (``faults``), and the command-line flow (``cli``)."""
from .cli import CHECK_ERRORS, run_training_tool, train_or_evaluate
from .config_system import ConfigSystem, YAMLConfigSystem
from .faults import CheckFiniteState, NonFiniteState, train_or_exit
from .resume import ExactResumeState, warn_if_resume_is_inexact
from .trainer import GETrainer

__all__ = ["GETrainer", "ConfigSystem", "YAMLConfigSystem", "ExactResumeState", "warn_if_resume_is_inexact",
           "NonFiniteState", "CheckFiniteState", "train_or_exit", "train_or_evaluate", "run_training_tool",
           "CHECK_ERRORS"]
