"""The feature analyses of the GE paper's Section 4 on a GE-ResNet classifier (tools/analyze_features.py,
docs/analysis.md):

- class selectivity (Fig. 3): ``class_selectivity`` of the class-conditional means of each block's output
  (after its ReLU, spatially averaged) that ``record_block_outputs`` and ``ClassMeans`` collect;
- feature importance (Fig. 5): ``prune_by_gate`` zeroes, per image, a fraction of a block's residual-branch
  channels in the order of their excite gates; ``remove_residual_branch`` is its ratio-1 reference for any
  bottleneck, GE or not;
- the excite gates per stage and per class: ``record_gates``.

The functions take modules and tensors; ``load_classifier`` and ``image_folder_loader`` build the model and
the data from a pretraining config and an ImageFolder for the tool. (``ge_detectron.pretrain.analysis`` is
another thing: parameter and FLOP counts.)
"""
import contextlib
import json
import os
import pickle
import re
import tempfile
import time

import torch
import torch.nn.functional as F
from detectron2.modeling.backbone import BottleneckBlock
from torchvision import datasets
from torchvision.datasets.folder import IMG_EXTENSIONS

from .checkpoint import load_weights
from .data.classification import ImagesWithinPixelLimit
from .layers import GatherExcite
from .modeling.classifier import build_ge_classifier
from .pretrain.convert import detect_format, load_state_dict, torchvision_to_detectron2
from .pretrain.task import ClassificationTask
from .safe_load import UnsafeFileError

__all__ = ["AnalysisError", "class_selectivity", "ClassMeans", "channel_gates", "gate_logits_module",
           "record_block_outputs", "record_gates", "pruned_channels", "prune_by_gate", "remove_residual_branch",
           "bottleneck_blocks",
           "Progress", "top1_accuracy", "collect_statistics", "load_classifier", "image_folder_loader",
           "PRUNE_ORDERS", "PARTS", "ge_blocks", "analyze_features", "plot_selectivity", "plot_pruning",
           "plot_gates", "save_results"]

PRUNE_ORDERS = ("asc", "des")


class AnalysisError(ValueError):
    """Input the analyses cannot use (weights, data, a model without GE); the message says what to do."""


def class_selectivity(class_means):
    """Class selectivity index (Morcos et al., 2018) of every unit: ``(mu_max - mu_rest) / (mu_max + mu_rest)``,
    with ``mu_max`` a unit's largest class-conditional mean activity and ``mu_rest`` the mean of its other
    classes' means. 0: the same activity for every class; 1: active for one class only.

    Args:
        class_means: (classes, units) non-negative mean activities (e.g. after a ReLU), at least two classes.
    Returns:
        (units,) indices in [0, 1], in ``class_means``' dtype; 0 for units whose means are all zero.
    """
    if class_means.dim() != 2 or class_means.shape[0] < 2:
        raise ValueError(f"class_means must be (classes >= 2, units), got shape {tuple(class_means.shape)}.")
    if (class_means < 0).any():
        raise ValueError("class_means must be non-negative (the index is defined for activities after a ReLU).")
    means = class_means.double()
    mu_max = means.max(dim=0).values
    mu_rest = (means.sum(dim=0) - mu_max) / (means.shape[0] - 1)
    total = mu_max + mu_rest
    index = torch.where(total > 0, (mu_max - mu_rest) / total.clamp_min(torch.finfo(means.dtype).tiny), 0.0)
    return index.to(class_means.dtype)


class ClassMeans:
    """Running class-conditional means of (N, units) values, accumulated in float64 on the CPU."""

    def __init__(self, num_classes):
        self.num_classes = num_classes
        self.sums = None
        self.counts = torch.zeros(num_classes, dtype=torch.int64)

    def add(self, values, labels):
        values, labels = values.detach().double().cpu(), labels.cpu()
        if self.sums is None:
            self.sums = torch.zeros(self.num_classes, values.shape[1], dtype=torch.float64)
        self.sums.index_add_(0, labels, values)
        self.counts += torch.bincount(labels, minlength=self.num_classes)

    def classes(self):
        """The classes seen at least once (sorted indices)."""
        return torch.nonzero(self.counts).flatten()

    def means(self):
        """(seen classes, units) means, rows in the order of ``classes()``."""
        seen = self.classes()
        return self.sums[seen] / self.counts[seen, None]


def bottleneck_blocks(resnet, stage):
    """``{"res4.0": block, ...}``: the bottleneck blocks of ``stage`` of a detectron2 ResNet, in order."""
    stage_module = getattr(resnet, stage, None)
    if stage_module is None:
        raise AnalysisError(f"the model has no stage {stage!r}: use one of {', '.join(resnet.stage_names)}.")
    return {f"{stage}.{i}": block for i, block in enumerate(stage_module) if isinstance(block, BottleneckBlock)}


def _spatial_mean(t):
    return t.detach().float().mean(dim=(2, 3))


@contextlib.contextmanager
def record_block_outputs(blocks):
    """Forward hooks on ``blocks`` (name -> module); yields a dict that holds, after each forward, every
    block's output averaged over space, (N, C) float32. A bottleneck's output is taken after its final
    ReLU, so these are the non-negative activities that ``class_selectivity`` expects."""
    records = {}

    def hook(name, module, inputs, output):
        records[name] = _spatial_mean(output)

    handles = [block.register_forward_hook(lambda m, i, o, n=name: hook(n, m, i, o)) for name, block in blocks.items()]
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


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


@contextlib.contextmanager
def record_gates(ge_modules):
    """Forward hooks on the gate logits of ``ge_modules`` (name -> GatherExcite); yields a dict that holds,
    after each forward, every module's ``channel_gates``, (N, C) float32."""
    records = {}

    def hook(name, module, inputs, logits):
        records[name] = channel_gates(logits)

    handles = [gate_logits_module(ge).register_forward_hook(lambda m, i, o, n=name: hook(n, m, i, o))
               for name, ge in ge_modules.items()]
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


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

    handle = gate_logits_module(ge).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def remove_residual_branch(block):
    """While active, the bottleneck ``block`` (GE or not) outputs relu(shortcut(x)): its residual branch removed."""
    def hook(module, inputs, output):
        x = inputs[0]
        return F.relu(module.shortcut(x) if module.shortcut is not None else x)

    handle = block.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _clock(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Progress and ETA over several passes of known length: ``wrap(loader, label)`` yields the batches and
    logs every ``every_s`` seconds (and at the end of each pass) the pass, the batch, the share of all
    ``total_batches`` done, the elapsed time and the ETA."""

    def __init__(self, total_batches, log=print, every_s=10.0):
        self.total, self.done, self.log, self.every_s = total_batches, 0, log, every_s
        self.start = self.last = time.perf_counter()

    def wrap(self, loader, label):
        for i, batch in enumerate(loader, 1):
            yield batch
            self.done += 1
            now = time.perf_counter()
            if now - self.last >= self.every_s or i == len(loader):
                self.last, elapsed = now, now - self.start
                eta = elapsed / self.done * max(self.total - self.done, 0)
                self.log(f"{label}: batch {i}/{len(loader)}, {100 * self.done / self.total:.0f}% of all, "
                         f"elapsed {_clock(elapsed)}, ETA {_clock(eta)}")


def _correct(model, images, labels):
    return (model(images).argmax(dim=1).cpu() == labels).sum().item()


@torch.no_grad()
def top1_accuracy(model, batches):
    """Top-1 accuracy (%) of ``model`` (images -> logits) over ``(images, labels)`` batches."""
    correct = seen = 0
    for images, labels in batches:
        correct += _correct(model, images, labels)
        seen += len(labels)
    return 100.0 * correct / max(seen, 1)


@torch.no_grad()
def collect_statistics(model, batches, num_classes, blocks, ge_modules, bins=50):
    """One pass over ``(images, labels)`` batches: top-1 accuracy (%), the class-conditional means of the
    outputs of ``blocks`` (name -> bottleneck), and for ``ge_modules`` (name -> GatherExcite) the histogram
    of the channel gates on [0, 1] (``bins`` bins, one count per image and channel) and their class means.

    Returns ``{"top1": float, "classes": (seen classes,) indices, "block_means": {name: (classes, C)},
    "gate_histograms": {name: (bins,)}, "gate_means": {name: (classes, C)}}`` (float64 tensors)."""
    block_means = {name: ClassMeans(num_classes) for name in blocks}
    gate_means = {name: ClassMeans(num_classes) for name in ge_modules}
    histograms = {name: torch.zeros(bins, dtype=torch.float64) for name in ge_modules}
    correct = 0
    counts = torch.zeros(num_classes, dtype=torch.int64)
    with record_block_outputs(blocks) as outputs, record_gates(ge_modules) as gates:
        for images, labels in batches:
            correct += _correct(model, images, labels)
            counts += torch.bincount(labels, minlength=num_classes)
            for name in blocks:
                block_means[name].add(outputs[name], labels)
            for name in ge_modules:
                gate_means[name].add(gates[name], labels)
                histograms[name] += torch.histc(gates[name].double().cpu(), bins=bins, min=0.0, max=1.0)
    return {"top1": 100.0 * correct / max(counts.sum().item(), 1), "classes": torch.nonzero(counts).flatten(),
            "block_means": {name: m.means() for name, m in block_means.items()},
            "gate_histograms": histograms, "gate_means": {name: m.means() for name, m in gate_means.items()}}


@contextlib.contextmanager
def _torchvision_as_pretraining_checkpoint(path):
    """``path``, or for a torchvision ResNet state_dict a temporary copy under our classifier's names."""
    try:
        state_dict = load_state_dict(path) if path.endswith(".pth") and os.path.isfile(path) else {}
    except pickle.UnpicklingError:  # not tensors only (e.g. a pretraining checkpoint with its trainer state)
        state_dict = {}
    if detect_format(state_dict) != "torchvision":
        yield path
        return
    renamed = torchvision_to_detectron2({re.sub(r"^module\.", "", k): v for k, v in state_dict.items()})
    with tempfile.TemporaryDirectory() as folder:
        copy = os.path.join(folder, "torchvision.pth")
        torch.save({"model": {f"classifier.resnet.{k}": v for k, v in renamed.items()}}, copy)
        yield copy


def load_classifier(cfg, allow_missing_head=False):
    """``build_ge_classifier(cfg)`` with the weights of ``cfg.MODEL.WEIGHTS`` (a tools/pretrain_net.py
    checkpoint, a torchvision ResNet state_dict (.pth, renamed as tools/convert_weights.py does, keeping
    ``fc`` as the classifier layer), or a converted .pkl: detectron2's name matching), or when that is empty of
    ``OUTPUT_DIR/model_final.pth`` (where tools/pretrain_net.py leaves them), in eval mode on
    ``cfg.MODEL.DEVICE``. Raises AnalysisError when the weights are missing or do not fit the architecture
    (a missing or mis-shaped tensor, an extra tensor), except that with ``allow_missing_head`` the linear
    layer may be missing (a backbone-only checkpoint, e.g. a converted .pkl: the features are analysable,
    the top-1 is not)."""
    weights = cfg.MODEL.WEIGHTS or os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    if "://" not in weights and not os.path.isfile(weights):
        raise AnalysisError(f"no weights at {weights!r}: set MODEL.WEIGHTS to the classifier checkpoint (tools/"
                            "pretrain_net.py writes OUTPUT_DIR/model_final.pth, read when MODEL.WEIGHTS is empty).")
    classifier = build_ge_classifier(cfg)
    task = ClassificationTask(classifier)  # the module tools/pretrain_net.py checkpoints
    try:
        with _torchvision_as_pretraining_checkpoint(weights) as path:
            incompatible = load_weights(task, path)
    except UnsafeFileError as e:  # it says what the file refers to
        raise AnalysisError(str(e)) from None
    except Exception as e:  # torch.load / pickle errors of a file that is not a checkpoint
        raise AnalysisError(f"the weights {weights!r} cannot be read as a checkpoint ({type(e).__name__}): give a "
                            "tools/pretrain_net.py checkpoint, a torchvision state_dict or a converted .pkl.") from e
    head = "classifier.resnet.linear."
    missing = [k for k in incompatible.missing_keys if not (allow_missing_head and k.startswith(head))]
    problems = []
    if incompatible.incorrect_shapes:
        key, got, want = incompatible.incorrect_shapes[0]
        problems.append(f"{len(incompatible.incorrect_shapes)} tensors of another shape (e.g. {key}: {tuple(got)} in "
                        f"the file, {tuple(want)} in the model)")
    if missing:
        problems.append(f"{len(missing)} model tensors missing (e.g. {missing[0]})")
    if incompatible.unexpected_keys:
        problems.append(f"{len(incompatible.unexpected_keys)} unused tensors (e.g. {incompatible.unexpected_keys[0]})")
    if problems:
        advice = ("the classifier layer is needed for top-1 (pruning): use a tools/pretrain_net.py checkpoint"
                  if all(k.startswith(head) for k in missing) and not incompatible.incorrect_shapes
                  and not incompatible.unexpected_keys else
                  "use the config the weights were trained or converted with (MODEL.RESNETS, MODEL.GE)")
        raise AnalysisError(f"the weights {weights!r} do not fit the config's model: {'; '.join(problems)}; {advice}.")
    return classifier.to(cfg.MODEL.DEVICE).eval()


def image_folder_loader(root, transform, batch_size, num_classes, images_per_class=0, num_workers=0):
    """``(loader, class names)``: a DataLoader over the ImageFolder ``root`` (one sub-folder of images per
    class, class indices in sorted folder order, as in training), the first ``images_per_class`` images of
    each class (0: all). Raises AnalysisError unless ``root`` holds ``num_classes`` class folders, all with
    images."""
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir()) if os.path.isdir(root) else []
    if not classes:
        raise AnalysisError(f"no ImageFolder at {root!r}: it must hold one sub-folder of images per class.")
    if len(classes) != num_classes:
        raise AnalysisError(f"{root!r} has {len(classes)} class folders but the model has {num_classes} classes: "
                            "give the folder of the classes it was trained on (e.g. the validation set).")
    dataset = datasets.ImageFolder(root, transform, is_valid_file=ImagesWithinPixelLimit(), allow_empty=True)
    labels = set(dataset.targets)
    empty = [c for i, c in enumerate(classes) if i not in labels]
    if empty:
        raise AnalysisError(f"{len(empty)} of the {len(classes)} class folders in {root!r} hold no image "
                            f"({', '.join(IMG_EXTENSIONS)}): {', '.join(map(repr, empty[:5]))}.")
    if images_per_class:
        taken, indices = {}, []
        for i, label in enumerate(dataset.targets):
            if taken.get(label, 0) < images_per_class:
                taken[label] = taken.get(label, 0) + 1
                indices.append(i)
        dataset = torch.utils.data.Subset(dataset, indices)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers), classes


PARTS = ("selectivity", "pruning", "gates")


def ge_blocks(resnet):
    """``{"res4.2": block.ge, ...}``: the GatherExcite of every GE bottleneck of a ResNet, in order."""
    return {f"{stage}.{i}": block.ge for stage in resnet.stage_names for i, block in enumerate(getattr(resnet, stage))
            if isinstance(getattr(block, "ge", None), GatherExcite)}


def _block_names(resnet, stage, indices, what):
    blocks = bottleneck_blocks(resnet, stage)
    names = list(blocks) if indices is None else [f"{stage}.{i}" for i in indices]
    unknown = [n for n in names if n not in blocks]
    if unknown:
        raise AnalysisError(f"{what}: the model has no block {unknown[0]!r}: {stage} has blocks 0-{len(blocks) - 1}.")
    return names


def analyze_features(model, loader, class_names, *, compare=None, stage="res4", blocks=None, prune_blocks=None,
                     prune_ratios=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0), parts=PARTS, bins=50, gate_classes=8,
                     log=print):
    """The Section 4 analyses of ``model`` (a GEClassifier) against ``compare`` (another classifier of the
    same classes, e.g. the same ResNet without GE, or None), over the ``(images, labels)`` batches of
    ``loader`` (labels index ``class_names``). Top-1 is reported only with "pruning" (which needs the
    classifier layers; without it they may be random).

    - "selectivity": ``class_selectivity`` of the outputs of the blocks ``blocks`` (indices, None: all) of
      ``stage``, for both models;
    - "pruning": top-1 (%) against ``prune_ratios`` in each of the GE blocks ``prune_blocks`` (indices in
      ``stage``, None: its last block), channels pruned by gate order "asc" and "des"; for ``compare``
      ratios 0 (the model itself) and 1 (``remove_residual_branch``);
    - "gates": per stage the histogram of the channel gates of all its GE blocks (``bins`` bins on [0, 1]);
      per stage's last GE block the class means of each channel's gate for the first ``gate_classes``
      classes and over all classes.

    Returns a dict of plain lists and numbers (every number the figures show), with ``top1`` per model.
    Raises AnalysisError for analyses the models cannot give (no GE for pruning and gates, no head)."""
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        raise AnalysisError(f"unknown analysis {unknown[0] if unknown else ''!r}: choose from {', '.join(PARTS)}.")
    resnet = model.resnet
    gates_of = ge_blocks(resnet)
    if not gates_of and {"pruning", "gates"} & set(parts):
        raise AnalysisError("the model has no Gather-Excite blocks (MODEL.GE.VARIANT none): the pruning and gates "
                            "analyses need GE; analyse selectivity only, or give the GE model first and this one as "
                            "the comparison.")
    names = _block_names(resnet, stage, blocks, "blocks")
    pruned = _block_names(resnet, stage, prune_blocks, "prune blocks") if prune_blocks is not None else names[-1:]
    if "pruning" in parts:
        without_ge = [n for n in pruned if n not in gates_of]
        if without_ge:
            raise AnalysisError(f"block {without_ge[0]!r} has no Gather-Excite gate to prune by: choose GE blocks "
                                f"({', '.join(gates_of)}).")
        if any(not 0 <= r <= 1 for r in prune_ratios):
            raise AnalysisError(f"prune ratios {list(prune_ratios)} must lie in [0, 1].")
    if compare is not None:
        _block_names(compare.resnet, stage, blocks, "blocks of the comparison model")
        if "pruning" in parts:
            _block_names(compare.resnet, stage, [int(n.split(".")[1]) for n in pruned],
                         "prune blocks of the comparison")
    inner_ratios = [r for r in prune_ratios if 0 < r < 1] if "pruning" in parts else []
    full_ratio = "pruning" in parts and 1 in prune_ratios
    compare_stats = compare is not None and bool({"selectivity", "pruning"} & set(parts))
    passes = (1 + compare_stats + len(pruned) * (2 * len(inner_ratios) + full_ratio)
              + (compare is not None and "pruning" in parts) * len(pruned))
    progress = Progress(passes * len(loader), log)

    gate_modules = gates_of if "gates" in parts else {}
    stats = collect_statistics(model, progress.wrap(loader, "statistics"), len(class_names),
                               {n: bottleneck_blocks(resnet, stage)[n] for n in names}, gate_modules, bins)
    results = {"classes": class_names, "stage": stage}
    if "pruning" in parts:
        results["top1"] = {"model": stats["top1"]}
    if compare_stats:
        compare_stats = collect_statistics(compare, progress.wrap(loader, "statistics of the comparison"),
                                           len(class_names), {n: bottleneck_blocks(compare.resnet, stage)[n]
                                                              for n in names}, {}, bins)
        if "pruning" in parts:
            results["top1"]["compare"] = compare_stats["top1"]
    if "selectivity" in parts:
        results["selectivity"] = {"model": {n: class_selectivity(stats["block_means"][n]).tolist() for n in names}}
        if compare is not None:
            results["selectivity"]["compare"] = {n: class_selectivity(compare_stats["block_means"][n]).tolist()
                                                 for n in names}
    if "pruning" in parts:
        results["pruning"] = {}
        for name in pruned:
            curve = {}
            for order in PRUNE_ORDERS:
                curve[order] = []
                for ratio in prune_ratios:
                    if ratio == 0:
                        curve[order].append(stats["top1"])
                    elif ratio == 1 and order == "des":
                        curve[order].append(curve["asc"][list(prune_ratios).index(ratio)])  # every channel either way
                    else:
                        with prune_by_gate(gates_of[name], ratio, order):
                            curve[order].append(top1_accuracy(model, progress.wrap(
                                loader, f"pruning {name} {order} {ratio:g}")))
            entry = {"ratios": list(prune_ratios), **curve}
            if compare is not None:
                with remove_residual_branch(bottleneck_blocks(compare.resnet, stage)[name]):
                    removed = top1_accuracy(compare, progress.wrap(
                        loader, f"comparison without {name}'s residual branch"))
                entry["compare"] = {"ratios": [0.0, 1.0], "top1": [compare_stats["top1"], removed]}
            results["pruning"][name] = entry
    if "gates" in parts:
        by_stage = {}
        for name in stats["gate_histograms"]:
            by_stage.setdefault(name.split(".")[0], []).append(name)
        shown = stats["classes"][:gate_classes]
        results["gates"] = {"bin_edges": torch.linspace(0, 1, bins + 1).tolist(), "histograms": {}, "class_means": {}}
        for stage_name, block_names in by_stage.items():
            results["gates"]["histograms"][stage_name] = {
                "blocks": block_names, "counts": sum(stats["gate_histograms"][n] for n in block_names).tolist()}
            means = stats["gate_means"][block_names[-1]]
            results["gates"]["class_means"][stage_name] = {
                "block": block_names[-1], "all_classes": means.mean(dim=0).tolist(),
                "per_class": {class_names[c]: means[i].tolist() for i, c in enumerate(shown.tolist())}}
    return results


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _labels(results):
    return results.get("labels", {"model": "model", "compare": "comparison"})


def plot_selectivity(results, path, bins=20):
    """Fig. 3 style: one panel per block, the histogram of the class selectivity indices of its units,
    model and comparison overlaid."""
    plt, labels = _pyplot(), _labels(results)
    selectivity = results["selectivity"]
    names = list(selectivity["model"])
    fig, axes = plt.subplots(1, len(names), figsize=(2.6 * len(names), 2.6), sharey=True, squeeze=False)
    for ax, name in zip(axes[0], names):
        for who, color in (("compare", "tab:gray"), ("model", "tab:red")):
            if who in selectivity:
                ax.hist(selectivity[who][name], bins=bins, range=(0, 1), density=True, histtype="step", linewidth=1.5,
                        color=color, label=labels[who])
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("class selectivity index", fontsize=8)
    axes[0][0].set_ylabel("density of units", fontsize=8)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_pruning(results, path):
    """Fig. 5 style: top-1 against the fraction of a block's residual channels zeroed by gate order, one
    panel per block; the comparison model at ratios 0 and 1 as reference points."""
    plt, labels = _pyplot(), _labels(results)
    pruning = results["pruning"]
    fig, axes = plt.subplots(1, len(pruning), figsize=(3.6 * len(pruning), 3.0), squeeze=False)
    for ax, (name, entry) in zip(axes[0], pruning.items()):
        for order, style, color, meaning in (("asc", "o-", "tab:blue", "least"), ("des", "s-", "tab:red", "most")):
            ax.plot(entry["ratios"], entry[order], style, color=color,
                    label=f"{labels['model']}, {order} ({meaning} important first)")
        if "compare" in entry:
            ax.plot(entry["compare"]["ratios"], entry["compare"]["top1"], "D--", color="tab:gray",
                    label=labels["compare"])
        ax.set_title(f"pruning the residual branch of {name}", fontsize=9)
        ax.set_xlabel("prune ratio", fontsize=8)
        ax.set_ylabel("top-1 (%)", fontsize=8)
        ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_gates(results, path):
    """Top row: per stage, the distribution of the channel gates of its GE blocks. Bottom row: per stage's
    last GE block, the class-mean gate of each channel (columns, sorted by the mean over all classes) for
    the classes shown and over all classes (rows)."""
    plt = _pyplot()
    gates = results["gates"]
    stages = list(gates["histograms"])
    edges = torch.tensor(gates["bin_edges"])
    centers, width = ((edges[1:] + edges[:-1]) / 2).tolist(), (edges[1] - edges[0]).item()
    fig, axes = plt.subplots(2, len(stages), figsize=(2.8 * len(stages), 4.8), squeeze=False, layout="constrained")
    heatmaps = []
    for col, stage in enumerate(stages):
        counts = torch.tensor(gates["histograms"][stage]["counts"])
        axes[0][col].bar(centers, (counts / counts.sum()).tolist(), width=width, color="tab:blue")
        axes[0][col].set_title(f"{stage}: all GE blocks", fontsize=9)
        axes[0][col].set_xlabel("gate", fontsize=8)
        means = gates["class_means"][stage]
        overall = torch.tensor(means["all_classes"])
        rows = torch.stack([torch.tensor(v) for v in means["per_class"].values()] + [overall])
        rows = rows[:, torch.argsort(overall)]
        heatmaps.append(axes[1][col].imshow(rows.numpy(), aspect="auto", interpolation="nearest", cmap="viridis"))
        axes[1][col].set_yticks(range(len(rows)), list(means["per_class"]) + ["all classes"] if col == 0 else [],
                                fontsize=6)
        axes[1][col].set_title(f"{means['block']}: class-mean gates", fontsize=9)
        axes[1][col].set_xlabel("channel (sorted by mean gate)", fontsize=8)
    axes[0][0].set_ylabel("fraction of (image, channel)", fontsize=8)
    low = min(h.get_array().min() for h in heatmaps)
    high = max(h.get_array().max() for h in heatmaps)
    for heatmap in heatmaps:
        heatmap.set_clim(low, high)
    fig.colorbar(heatmaps[-1], ax=axes[1].tolist(), fraction=0.03, label="mean gate")
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _rounded(value):
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def save_results(results, output_dir):
    """Write ``analysis.json`` (``results``, floats to 6 significant digits) and the figures of the analyses
    it holds (``selectivity.png``, ``pruning.png``, ``gates.png``) into ``output_dir``; return the paths."""
    os.makedirs(output_dir, exist_ok=True)
    paths = [os.path.join(output_dir, "analysis.json")]
    with open(paths[0], "w") as f:
        json.dump(_rounded(results), f, indent=1)
    for part, plot in (("selectivity", plot_selectivity), ("pruning", plot_pruning), ("gates", plot_gates)):
        if part in results:
            paths.append(os.path.join(output_dir, f"{part}.png"))
            plot(results, paths[-1])
    return paths
