"""Checkpointing for GE models: detectron2's DetectionCheckpointer with

- atomic writes: a checkpoint and ``last_checkpoint`` are written to a temporary file and renamed,
  so a run killed while saving never leaves a truncated checkpoint or a tag pointing at one; the
  temporary files such a kill leaves are removed when the next run starts;
- the incompatible keys of the last weights loaded (``incompatible``), which detectron2 only logs, and
  ``weights_mismatch``: what they mean, in the words of the errors of the tools that need an exact fit;
- GE modules built with ``ge_init="identity"`` (``MODEL.GE.INIT``) that the checkpoint has no weights for
  inserted as the identity (``modeling.insert_missing_ge_as_identity``), logged once per load;
- a loud warning when a learnable GE module sits in a frozen stage and the checkpoint has no weights
  for it, unless it was inserted as the identity (GE_SPEC.md: it would stay a fixed random gate for the
  whole run);
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
from .modeling import insert_missing_ge_as_identity
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

    def insert_missing_ge_as_identity(self, missing_keys):
        """Insert the GE modules built with ge_init="identity" that ``missing_keys`` lack as the identity and
        log which; return the keys of ``missing_keys`` that stay at their initialisation."""
        inserted = insert_missing_ge_as_identity(self.model, missing_keys)
        if not inserted:
            return list(missing_keys)
        stages = {}
        for name in inserted:
            stage = name.rsplit(".", 1)[0]
            stages[stage] = stages.get(stage, 0) + 1
        logger.info("Gather-Excite inserted as the identity (MODEL.GE.INIT identity) into %d blocks the checkpoint "
                    "had no GE weights for: %s.", len(inserted), ", ".join(f"{s} ({n})" for s, n in stages.items()))
        prefixes = tuple(f"{name}.ge." for name in inserted)
        return [k for k in missing_keys if not k.startswith(prefixes)]

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
        still_random = self.insert_missing_ge_as_identity(incompatible.missing_keys)
        frozen_random = frozen_random_ge_parameters(self.model, still_random)
        if frozen_random:
            stages = sorted({name.split(".ge.")[0].rsplit(".", 1)[0] for name in frozen_random})
            logger.warning(
                "!!! %d learnable Gather-Excite parameters are FROZEN and were NOT in the checkpoint (in %s): "
                "they stay random for the whole run. Remove those stages from MODEL.GE.STAGES, lower "
                "MODEL.BACKBONE.FREEZE_AT, use a parameter-free variant (theta_minus), or load a GE-pretrained "
                "checkpoint. !!!", len(frozen_random), ", ".join(stages))
        return incompatible


def load_weights(model, weights):
    """Load ``weights`` into ``model`` through detectron2's checkpointer; return the incompatible keys
    (``missing_keys``, ``unexpected_keys``, ``incorrect_shapes``). ``weights`` is a path (what MODEL.WEIGHTS
    takes: a detectron2 .pth, a model-zoo or converted .pkl with detectron2's name matching, a Caffe2 .pkl)
    or a state dict under the model's names, loaded as a .pth holding it would be."""
    checkpointer = GECheckpointer(model)
    if isinstance(weights, str):
        checkpointer.load(weights, checkpointables=[])
    else:
        checkpointer._log_incompatible_keys(checkpointer._load_model({"model": dict(weights)}))
    return checkpointer.incompatible


def weights_mismatch(incompatible, allowed_missing=()):
    """Why loaded weights do not fit a model exactly, as one phrase ("2 tensors have other shapes than the
    model's (e.g. ...); 3 model tensors are missing (e.g. ...); 1 weights are not in the model (e.g. ...)"),
    or None when they fit. ``incompatible`` is what ``load_weights`` returns; missing tensors whose names
    start with one of ``allowed_missing`` are not counted. A tensor of another shape is counted once (the
    loader also lists it as missing)."""
    shapes = {key: (tuple(ckpt), tuple(mine)) for key, ckpt, mine in incompatible.incorrect_shapes}
    missing = [k for k in incompatible.missing_keys if k not in shapes and not k.startswith(tuple(allowed_missing))]
    unexpected = incompatible.unexpected_keys
    parts = []
    if shapes:
        key, (theirs, ours) = next(iter(shapes.items()))
        parts.append(f"{len(shapes)} tensors have other shapes than the model's (e.g. {key}: {theirs} in the "
                     f"weights, {ours} in the model)")
    if missing:
        parts.append(f"{len(missing)} model tensors are missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} weights are not in the model (e.g. {unexpected[0]})")
    return "; ".join(parts) or None
