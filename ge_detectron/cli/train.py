"""The command-line flow of the training tools (tools/train_net.py: YAML detection configs,
tools/lazyconfig_train_net.py: LazyConfigs, tools/pretrain_net.py: pretraining), one for every task: parse
detectron2's options (``--config-file``, ``--resume``, ``--eval-only``, ``--num-gpus``, ``--num-machines``,
``--machine-rank``, ``--dist-url``, trailing overrides) and the task adapter's own; check the config, data,
device and process layout before any process starts (a failed check is a one-line ``error: ...`` and exit
status 1, not a traceback); launch (torchrun or detectron2's launch: ge_detectron.launch); in each process
train, resuming with ``--resume``, or evaluate with ``--eval-only``; end a faulty run with one line
(engine.faults)."""
import functools
import sys

from detectron2.engine import default_argument_parser, default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from .. import compat
from ..checkpoint import GECheckpointer
from ..config_files import resolve_config_file
from ..detection import DetectionTrainer
from ..detection.lazy import LazyTrainer
from ..engine.faults import keep_fault_tracebacks_off_the_console, stop_on_full_disk_in_log_files, train_or_exit
from ..launch import check_launch_args, launch_from_args
from ..pretrain import PretrainTrainer
from ..safe_load import UnsafeFileError
from .checks import exit_on_check_error

__all__ = ["run_training_tool", "train_or_evaluate", "run_train_net", "run_lazyconfig_train_net", "run_pretrain_net"]


def train_or_evaluate(trainer_class, args):
    """What a training tool does in each process: the config of ``args``, detectron2's ``default_setup``
    and a log line of the compat fixes applied; with ``--eval-only``, ``trainer_class.test`` of the config's
    weights (the last checkpoint with ``--resume``); else train, resuming with ``--resume``, through
    ``train_or_exit``. Weights that would run code when loaded (safe_load.UnsafeFileError) end the run with
    one line."""
    config = trainer_class.task_adapter.from_args(args)
    default_setup(config.cfg, args)
    setup_logger(config.output_dir, distributed_rank=comm.get_rank(), name="ge_detectron")
    stop_on_full_disk_in_log_files()
    keep_fault_tracebacks_off_the_console()
    compat.log_applied()
    try:
        if args.eval_only:
            model = trainer_class.build_model(config.cfg)
            GECheckpointer(model, save_dir=config.output_dir).resume_or_load(config.weights, resume=args.resume)
            return trainer_class.test(config.cfg, model)
        trainer = trainer_class(config.cfg)
        trainer.resume_or_load(resume=args.resume)
    except UnsafeFileError as e:
        sys.exit(f"error: {e}")
    return train_or_exit(trainer)


def run_training_tool(trainer_class, argv=None):
    """The whole flow of a training tool whose trainer is ``trainer_class`` (a GETrainer)."""
    adapter = trainer_class.task_adapter
    args = adapter.add_arguments(default_argument_parser()).parse_args(argv)
    args.config_file = resolve_config_file(args.config_file)  # a model-zoo name: the path default_setup copies
    with exit_on_check_error():  # fail fast, with a message instead of a traceback, before any worker starts
        config = adapter.from_args(args)
        config.check(args.eval_only)
        check_launch_args(args, config.device, config.total_batch_size, device_key=adapter.DEVICE,
                          batch_key=adapter.BATCH, timeout=config.dist_timeout, timeout_key=adapter.DIST_TIMEOUT)
    return launch_from_args(functools.partial(train_or_evaluate, trainer_class), args, config.device,
                            config.dist_timeout)


def run_train_net(argv=None):
    """tools/train_net.py: a YAML detection config."""
    return run_training_tool(DetectionTrainer, argv)


def run_lazyconfig_train_net(argv=None):
    """tools/lazyconfig_train_net.py: a detection LazyConfig."""
    return run_training_tool(LazyTrainer, argv)


def run_pretrain_net(argv=None):
    """tools/pretrain_net.py: a pretraining config."""
    return run_training_tool(PretrainTrainer, argv)
