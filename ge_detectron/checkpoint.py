"""Checkpointing for GE models: detectron2's DetectionCheckpointer with

- atomic writes: a checkpoint and ``last_checkpoint`` are written to a temporary file and renamed,
  so a run killed while saving never leaves a truncated checkpoint or a tag pointing at one; the
  temporary files such a kill leaves are removed when the next run starts;
- the incompatible keys of the last weights loaded (``incompatible``), which detectron2 only logs;
- a loud warning when a learnable GE module sits in a frozen stage and the checkpoint has no weights
  for it (GE_SPEC.md: it would stay a fixed random gate for the whole run);
- weights read as data (ge_detectron.safe_load): a ``.pkl`` builds only numpy arrays and plain values, a
  ``.pth`` goes through ``torch.load(..., weights_only=True)``; a file needing anything else is an
  UnsafeFileError. Every MODEL.WEIGHTS / ``train.init_checkpoint``, ``--resume``, predict, export and
  analysis load goes through here.
"""
import logging
import os

from detectron2.checkpoint import DetectionCheckpointer
from fvcore.common.checkpoint import Checkpointer

from .atomic import AtomicFile, abandoned_temporary_name
from .safe_load import load_pickle, load_torch

logger = logging.getLogger(__name__)


class _AtomicWrites:
    """A path manager whose local writes go through ``AtomicFile``; everything else is delegated."""

    def __init__(self, path_manager):
        self._path_manager = path_manager

    def open(self, path, mode="r", **kwargs):
        if mode.startswith("w") and "://" not in path:
            return AtomicFile(path, mode)
        return self._path_manager.open(path, mode, **kwargs)

    def __getattr__(self, name):
        return getattr(self._path_manager, name)


def frozen_random_ge_parameters(model, missing_keys):
    """Names of GE parameters that are frozen (requires_grad False) and were not loaded."""
    missing = set(missing_keys)
    return [name for name, p in model.named_parameters() if ".ge." in name and not p.requires_grad and name in missing]


def model_zoo_checkpoint(data):
    """The checkpoint detectron2's DetectionCheckpointer makes of a ``.pkl``'s content: a detectron2 model-zoo
    or converted file (``{"model": ..., "__author__": ...}``) as it is; else a Caffe2 / Detectron1 file (its
    ``blobs``, or the top-level dict for ImageNet models, without the ``*_momentum`` blobs), to be renamed by
    detectron2's Caffe2 name matching."""
    blobs = data.get("blobs", data) if isinstance(data, dict) else data
    if not isinstance(blobs, dict):
        raise ValueError(f"a weights .pkl holds a dict of arrays, not a {type(blobs).__name__}.")
    if "model" in data and "__author__" in data:
        return data
    return {"model": {k: v for k, v in blobs.items() if not k.endswith("_momentum")}, "__author__": "Caffe2",
            "matching_heuristics": True}


class _WeightsOnlyTorchLoad(Checkpointer):
    """fvcore's Checkpointer reading ``.pth`` files with ``load_torch`` (weights_only). GECheckpointer lists it
    after DetectionCheckpointer, so it is what DetectionCheckpointer's ``super()._load_file`` reaches, on
    detectron2 0.6 (``_load_file``) and main (``_torch_load``) alike."""

    def _load_file(self, filename):
        return load_torch(filename, filename)


class GECheckpointer(DetectionCheckpointer, _WeightsOnlyTorchLoad):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.path_manager = _AtomicWrites(self.path_manager)
        self.incompatible = None  # missing_keys, unexpected_keys, incorrect_shapes of the last weights loaded

    def remove_stale_temporary_files(self):
        """Delete the temporary files of atomic writes (``last_checkpoint.tmp<pid>``, ``model_*.pth.tmp<pid>``)
        that a process killed while saving left in ``save_dir``, unless that process is still running."""
        if not self.save_dir or "://" in self.save_dir or not os.path.isdir(self.save_dir):
            return
        for name in sorted(os.listdir(self.save_dir)):
            final = abandoned_temporary_name(name)
            if final is not None and (final == "last_checkpoint" or final.endswith(".pth")):
                os.remove(os.path.join(self.save_dir, name))
                logger.info(f"Removed {name} from {self.save_dir}: the unfinished write of a process that was stopped.")

    def _load_file(self, filename):
        """A ``.pkl`` through ``load_pickle`` (detectron2 would ``pickle.load`` it), the rest as detectron2
        reads it, which for ``.pth`` ends in ``_WeightsOnlyTorchLoad``."""
        if filename.endswith(".pkl"):
            with open(filename, "rb") as f:  # a local path: fvcore's load() has resolved it
                data = load_pickle(f, filename)
            checkpoint = model_zoo_checkpoint(data)
            if checkpoint["__author__"] != "Caffe2":
                self.logger.info(f"Reading a file from {checkpoint['__author__']!r}")
            return checkpoint
        return super()._load_file(filename)

    def _load_model(self, checkpoint):
        incompatible = self.incompatible = super()._load_model(checkpoint)
        frozen_random = frozen_random_ge_parameters(self.model, incompatible.missing_keys)
        if frozen_random:
            stages = sorted({name.split(".ge.")[0].rsplit(".", 1)[0] for name in frozen_random})
            logger.warning(
                "!!! %d learnable Gather-Excite parameters are FROZEN and were NOT in the checkpoint (in %s): "
                "they stay random for the whole run. Remove those stages from MODEL.GE.STAGES, lower "
                "MODEL.BACKBONE.FREEZE_AT, use a parameter-free variant (theta_minus), or load a GE-pretrained "
                "checkpoint. !!!", len(frozen_random), ", ".join(stages))
        return incompatible


def load_weights(model, path):
    """Load the weights in ``path`` (what MODEL.WEIGHTS takes: a detectron2 .pth, a model-zoo or converted
    .pkl, a Caffe2 .pkl) into ``model`` through detectron2's checkpointer, with its name matching; return
    the incompatible keys (``missing_keys``, ``unexpected_keys``, ``incorrect_shapes``)."""
    checkpointer = GECheckpointer(model)
    checkpointer.load(path, checkpointables=[])
    return checkpointer.incompatible
