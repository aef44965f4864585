"""The analyses as tools/analyze_features.py runs them: the classifier and its weights from a pretraining
config (``load_classifier``), the ImageFolder (``image_folder_loader``), the orchestration of the statistics
and pruning passes (``analyze_features``) and the output folder (``save_results``)."""
import json
import os
import pickle
import re

import torch
from detectron2.modeling.backbone import BottleneckBlock
from torchvision import datasets
from torchvision.datasets.folder import IMG_EXTENSIONS

from ..checkpoint import load_weights, weights_mismatch
from ..data.classification import ImagesWithinPixelLimit
from ..layers import GatherExcite
from ..modeling.classifier import build_ge_classifier
from ..pretrain.convert import detect_format, load_state_dict, torchvision_to_detectron2
from ..pretrain.task import ClassificationTask
from ..safe_load import UnsafeFileError
from .figures import plot_gates, plot_pruning, plot_selectivity
from .metrics import class_selectivity, collect_statistics, top1_accuracy
from .progress import Progress
from .pruning import PRUNE_ORDERS, prune_by_gate, remove_residual_branch


class AnalysisError(ValueError):
    """Input the analyses cannot use (weights, data, a model without GE); the message says what to do."""


def bottleneck_blocks(resnet, stage):
    """``{"res4.0": block, ...}``: the bottleneck blocks of ``stage`` of a detectron2 ResNet, in order."""
    stage_module = getattr(resnet, stage, None)
    if stage_module is None:
        raise AnalysisError(f"the model has no stage {stage!r}: use one of {', '.join(resnet.stage_names)}.")
    return {f"{stage}.{i}": block for i, block in enumerate(stage_module) if isinstance(block, BottleneckBlock)}


def _torchvision_as_pretraining_weights(path):
    """``path``, or for a torchvision ResNet state_dict that state dict under our classifier's names."""
    try:
        state_dict = load_state_dict(path) if path.endswith(".pth") and os.path.isfile(path) else {}
    except pickle.UnpicklingError:  # not tensors only (e.g. a pretraining checkpoint with its trainer state)
        state_dict = {}
    if detect_format(state_dict) != "torchvision":
        return path
    renamed = torchvision_to_detectron2({re.sub(r"^module\.", "", k): v for k, v in state_dict.items()})
    return {f"classifier.resnet.{k}": v for k, v in renamed.items()}


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
        incompatible = load_weights(task, _torchvision_as_pretraining_weights(weights))
    except UnsafeFileError as e:  # it says what the file refers to
        raise AnalysisError(str(e)) from None
    except Exception as e:  # torch.load / pickle errors of a file that is not a checkpoint
        raise AnalysisError(f"the weights {weights!r} cannot be read as a checkpoint ({type(e).__name__}): give a "
                            "tools/pretrain_net.py checkpoint, a torchvision state_dict or a converted .pkl.") from e
    head = "classifier.resnet.linear."
    mismatch = weights_mismatch(incompatible, allowed_missing=[head] if allow_missing_head else [])
    if mismatch:
        advice = ("the classifier layer is needed for top-1 (pruning): use a tools/pretrain_net.py checkpoint"
                  if all(k.startswith(head) for k in incompatible.missing_keys) and not incompatible.incorrect_shapes
                  and not incompatible.unexpected_keys else
                  "use the config the weights were trained or converted with (MODEL.RESNETS, MODEL.GE)")
        raise AnalysisError(f"the weights {weights!r} do not fit the config's model: {mismatch}; {advice}.")
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
