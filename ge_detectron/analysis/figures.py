"""The figures of the analyses (matplotlib, Agg), drawn from the results dict that ``analyze_features``
returns (or its analysis.json)."""
import torch


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
