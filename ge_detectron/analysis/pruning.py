"""Feature importance (the GE paper's Fig. 5): zeroing, per image, a block's residual-branch channels in
the order of their excite gates, and removing the whole residual branch of any bottleneck as reference."""
import contextlib

import torch
import torch.nn.functional as F

from .recording import channel_gates, forward_hooks, gate_logits_module

PRUNE_ORDERS = ("asc", "des")


def pruned_channels(gates, ratio, order):
    """(N, C) bool mask of the ``round(ratio * C)`` channels of each image to zero: the smallest gates
    first for ``order`` "asc" (least important first), the largest first for "des" (ties: lower index first)."""
    if order not in PRUNE_ORDERS:
        raise ValueError(f"order={order!r} is invalid: use one of {', '.join(map(repr, PRUNE_ORDERS))}.")
    if not 0 <= ratio <= 1:
        raise ValueError(f"ratio={ratio!r} is invalid: use a fraction in [0, 1].")
    count = round(ratio * gates.shape[1])
    ranked = torch.argsort(gates, dim=1, descending=order == "des", stable=True)[:, :count]
    return torch.zeros_like(gates, dtype=torch.bool).scatter_(1, ranked, True)


@contextlib.contextmanager
def prune_by_gate(ge, ratio, order="asc"):
    """While active, ``ge`` (a GatherExcite given the shortcut, as in a GE bottleneck) zeroes, per image, the
    fraction ``ratio`` of its residual-branch channels ranked by their gate (``channel_gates``): "asc" the
    least important (smallest gate) first, "des" the most important first. A pruned channel's gate logits
    are set to -inf, so its gate is exactly 0 and the block outputs relu(shortcut) there; the other channels
    are computed as without pruning, on every excite path (reference or fused)."""
    def hook(module, inputs, logits):
        mask = pruned_channels(channel_gates(logits), ratio, order)
        return logits.masked_fill(mask[:, :, None, None], float("-inf"))

    with forward_hooks([(gate_logits_module(ge), hook)]):
        yield


@contextlib.contextmanager
def remove_residual_branch(block):
    """While active, the bottleneck ``block`` (GE or not) outputs relu(shortcut(x)): its residual branch removed."""
    def hook(module, inputs, output):
        x = inputs[0]
        return F.relu(module.shortcut(x) if module.shortcut is not None else x)

    with forward_hooks([(block, hook)]):
        yield
