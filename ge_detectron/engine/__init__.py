"""What the training tools share around detectron2's trainers: one trainer over the task adapters
(``trainer``: GETrainer; ``task_adapter``: the adapters' interface), checkpoints that resume exactly
(``resume``) and a clear stop on a fault (``faults``). The tools' command-line flow is ``ge_detectron.cli.train``."""
from .faults import CheckFiniteState, NonFiniteState, train_or_exit
from .resume import ExactResumeState, warn_if_resume_is_inexact
from .task_adapter import TaskAdapter, YAMLTaskAdapter
from .trainer import GETrainer

__all__ = ["GETrainer", "TaskAdapter", "YAMLTaskAdapter", "ExactResumeState", "warn_if_resume_is_inexact",
           "NonFiniteState", "CheckFiniteState", "train_or_exit"]
