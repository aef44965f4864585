"""Gather-Excite inserted into plain pretrained weights as the identity (``MODEL.GE.INIT`` "identity",
``ge_init="identity"``): after weights are loaded, every ``GEBottleneckBlock`` built with "identity" whose GE
module the weights lacked is made to compute the plain block (``GEBottleneckBlock.insert_as_identity``), as
non-local blocks are inserted into pretrained networks (Wang et al., 2018). docs/GE_SPEC.md says why."""
from .backbone import GEBottleneckBlock

__all__ = ["insert_missing_ge_as_identity"]

# Norm statistics that detectron2's FrozenBatchNorm2d fills in itself when a checkpoint lacks them (so the
# checkpointer does not report them missing): they do not tell whether a checkpoint held a GE module.
_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


def _lacks_ge(block, prefix, missing):
    keys = [f"{prefix}.ge.{k}" for k in block.ge.state_dict() if not k.endswith(_STATISTICS)]
    return bool(keys) and all(k in missing for k in keys)


def insert_missing_ge_as_identity(model, missing_keys):
    """Call ``insert_as_identity`` on every GEBottleneckBlock of ``model`` built with ``ge_init="identity"``
    whose GE weights are all among ``missing_keys`` (the state_dict keys the loaded weights lacked); return
    the names of those blocks. Blocks whose GE weights were loaded are left as loaded."""
    missing = set(missing_keys)
    inserted = []
    for name, module in model.named_modules():
        if isinstance(module, GEBottleneckBlock) and module.ge_init == "identity" and _lacks_ge(module, name, missing):
            module.insert_as_identity()
            inserted.append(name)
    return inserted
