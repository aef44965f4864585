"""Forward hooks that record, per image, the spatially averaged outputs of bottleneck blocks and the channel
gates of Gather-Excite modules, read from the module that computes the gate logits."""
import contextlib

import torch

from ..layers import GatherExcite


def _spatial_mean(t):
    return t.detach().float().mean(dim=(2, 3))


@contextlib.contextmanager
def forward_hooks(hooks):
    """While active, every ``(module, hook)`` of ``hooks`` is a forward hook of its module."""
    handles = [module.register_forward_hook(hook) for module, hook in hooks]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def _record_outputs(modules, summary):
    """Forward hooks on ``modules`` (name -> module); yields a dict that holds, after each forward, ``summary``
    of every module's output."""
    records = {}

    def recorder(name):
        def hook(module, inputs, output):
            records[name] = summary(output)
        return hook

    with forward_hooks((module, recorder(name)) for name, module in modules.items()):
        yield records


def record_block_outputs(blocks):
    """Forward hooks on ``blocks`` (name -> module); yields a dict that holds, after each forward, every
    block's output averaged over space, (N, C) float32. A bottleneck's output is taken after its final
    ReLU, so these are the non-negative activities that ``class_selectivity`` expects."""
    return _record_outputs(blocks, _spatial_mean)


def gate_logits_module(ge):
    """The submodule of ``GatherExcite`` whose output is the pre-sigmoid gate g of ``ge.gather_logits``:
    the excite MLP where there is one (theta_plus, se), else the gather. Hooking it reads (and may replace)
    the gate without touching the layer's computation."""
    if not isinstance(ge, GatherExcite):
        raise TypeError(f"expected a GatherExcite module, got {type(ge).__name__}.")
    return ge.mlp if ge.mlp is not None else ge.gather


def channel_gates(logits):
    """(N, C) gate of every channel: the sigmoid of the gate logits, averaged over the gate's cells (a global
    gate has one cell; a gate with extent has one per cell and is nearest-upsampled, so this is its mean
    over the feature map up to border cells)."""
    return torch.sigmoid(logits.detach().float()).mean(dim=(2, 3))


def record_gates(ge_modules):
    """Forward hooks on the gate logits of ``ge_modules`` (name -> GatherExcite); yields a dict that holds,
    after each forward, every module's ``channel_gates``, (N, C) float32."""
    return _record_outputs({name: gate_logits_module(ge) for name, ge in ge_modules.items()}, channel_gates)
