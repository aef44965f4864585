"""The fused excite operator against the reference in a whole model: every parameter's gradient after one
forward and backward with every ``GatherExcite`` on the fused operator (``fused="on"``), and on the pure-PyTorch
reference (``"off"``), both measured against the reference in float64.

A wrong gradient anywhere in the operator shows in the parameters below the GE module that computed it
(every earlier layer's gradient flows through it); a comparison of losses after a few training steps would
not show it (the weights move too little). How far a gradient may be from float64 depends on the
parameter: a norm on a 1x1 gathered map or a deep random network amplifies rounding by orders of magnitude,
so no single tolerance fits every parameter. The rule: the fused operator, computing in float32 inside,
may be no less accurate than the reference at the same precision, parameter by parameter, up to
``RATIO`` and a floor of ``FLOOR_EPS`` units of the precision's epsilon (for rounding luck on parameters
where the reference's error happens to be near 0):

    error_fused(p) <= RATIO * error_reference(p) + FLOOR_EPS * eps(dtype)

with error = ||grad - grad_float64|| / ||grad_float64||, and every gradient finite (a non-finite one is an
infinite error). ``tools/gpu_check.py`` runs it on the full-size
GE-R50-FPN backbone (``make gpu-check``); on a model of one's own:

    result = compare_fused_to_reference(model, images, autocast_dtype=torch.float16)
    assert result["ok"], result["worst"]
"""
import contextlib
import copy
import math

import torch

from .layers import GatherExcite

__all__ = ["compare_fused_to_reference", "relative_error", "RATIO", "FLOOR_EPS"]

RATIO = 2.0
FLOOR_EPS = 16


def relative_error(value, reference):
    """||value - reference|| / ||reference|| in float64 (the difference's norm where the reference is 0);
    infinite if ``value`` is not finite."""
    value, reference = value.double(), reference.double()
    if not torch.isfinite(value).all():
        return float("inf")
    scale = reference.norm().item()
    diff = (value - reference).norm().item()
    return diff / scale if scale > 0 else diff


def _outputs(out):
    """The tensors of a model's output: a tensor, or a dict / list / tuple of them (nested)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for key in sorted(out) for t in _outputs(out[key])]
    return [t for item in out for t in _outputs(item)]


def _gradients(model, inputs, fused, autocast_dtype, weights):
    """{name: gradient} of sum_k sum(output_k * weights[k]) / sqrt(numel_k), weights fixed random per output."""
    for m in model.modules():
        if isinstance(m, GatherExcite):
            m.fused = fused
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    for _, p in params:
        p.grad = None
    device_type = inputs.device.type
    with torch.autocast(device_type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext():
        outputs = _outputs(model(inputs))
    while len(weights) < len(outputs):  # drawn once, on the first run, from a fixed seed
        shape = outputs[len(weights)].shape
        weights.append(torch.randn(shape, generator=torch.Generator().manual_seed(len(weights)), dtype=torch.float64))
    # / sqrt(numel): each output element's gradient ~1/sqrt(numel), neither underflowing float16 (as a mean's
    # would at detection sizes, without a loss scaler) nor overflowing it in the weights' gradient sums
    loss = sum((out.double() * w.to(out.device)).sum() / math.sqrt(out.numel()) for out, w in zip(outputs, weights))
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in params if p.grad is not None}
    for _, p in params:
        p.grad = None
    return grads


def compare_fused_to_reference(model, inputs, autocast_dtype=None, worst=3):
    """Every parameter's gradient of a fixed random projection of ``model(inputs)`` (a tensor or a dict /
    list of tensors), with the fused operator and with the reference, in float32 (``autocast_dtype`` None)
    or under ``torch.autocast(dtype=autocast_dtype)``, each against the reference in float64 (on a float64
    copy of the model). Returns {"modules", "parameters", "ok" (the rule above holds for every parameter),
    "worst" ([name, error_fused, error_reference] of the ``worst`` parameters closest to or over the
    rule's bound), "max_error_fused", "max_error_reference", "missing" (parameters with a gradient in one
    run only)}. The model's own ``fused`` settings are restored. Raises ValueError without a GatherExcite."""
    modules = [m for m in model.modules() if isinstance(m, GatherExcite)]
    if not modules:
        raise ValueError("the model has no GatherExcite module: nothing to compare")
    settings = [m.fused for m in modules]
    weights = []
    try:
        truth = _gradients(copy.deepcopy(model).double(), inputs.double(), "off", None, weights)
        reference = _gradients(model, inputs, "off", autocast_dtype, weights)
        fused = _gradients(model, inputs, "on", autocast_dtype, weights)
    finally:
        for m, setting in zip(modules, settings):
            m.fused = setting
    floor = FLOOR_EPS * torch.finfo(autocast_dtype or inputs.dtype).eps
    rows = []
    for name in truth.keys() & reference.keys() & fused.keys():
        rows.append((name, relative_error(fused[name], truth[name]), relative_error(reference[name], truth[name])))
    rows.sort(key=lambda row: -row[1] / (RATIO * row[2] + floor))  # the largest share of its allowance first
    missing = sorted((truth.keys() | reference.keys() | fused.keys()) - {name for name, _, _ in rows})
    return {"modules": len(modules), "parameters": len(rows),
            "ok": not missing and bool(rows) and all(math.isfinite(r) and f <= RATIO * r + floor for _, f, r in rows),
            "ratio": RATIO, "floor": floor, "worst": [list(row) for row in rows[:worst]],
            "max_error_fused": max((f for _, f, _ in rows), default=0.0),
            "max_error_reference": max((r for _, _, r in rows), default=0.0), "missing": missing}
