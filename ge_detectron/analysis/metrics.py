"""Class selectivity (Morcos et al., 2018) of class-conditional mean activities, and top-1 accuracy with the
block outputs and gates recorded on the way (the statistics pass of the analyses)."""
import torch

from .recording import record_block_outputs, record_gates


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
