"""The feature analyses of the GE paper's Section 4 on a GE-ResNet classifier (tools/analyze_features.py,
docs/analysis.md), one module per concern:

- ``metrics``: class selectivity (Fig. 3), ``class_selectivity`` of the class-conditional means
  (``ClassMeans``) of each block's output, and top-1 with the statistics pass (``collect_statistics``);
- ``recording``: forward hooks that record the block outputs (after their ReLU, spatially averaged) and the
  excite gates (``record_block_outputs``, ``record_gates``);
- ``pruning``: feature importance (Fig. 5), ``prune_by_gate`` zeroes, per image, a fraction of a block's
  residual-branch channels in the order of their excite gates; ``remove_residual_branch`` is its ratio-1
  reference for any bottleneck, GE or not;
- ``figures``: the plots; ``progress``: the progress and ETA log of the passes;
- ``run``: what the tool runs, ``load_classifier`` and ``image_folder_loader`` (the model and the data from a
  pretraining config and an ImageFolder), ``analyze_features`` and ``save_results``.

(``ge_detectron.pretrain.complexity`` is another thing: parameter and FLOP counts.)
"""
from .figures import plot_gates, plot_pruning, plot_selectivity
from .metrics import ClassMeans, class_selectivity, collect_statistics, top1_accuracy
from .progress import Progress
from .pruning import PRUNE_ORDERS, prune_by_gate, pruned_channels, remove_residual_branch
from .recording import channel_gates, gate_logits_module, record_block_outputs, record_gates
from .run import (PARTS, AnalysisError, analyze_features, bottleneck_blocks, ge_blocks, image_folder_loader,
                  load_classifier, save_results)

__all__ = ["AnalysisError", "class_selectivity", "ClassMeans", "channel_gates", "gate_logits_module",
           "record_block_outputs", "record_gates", "pruned_channels", "prune_by_gate", "remove_residual_branch",
           "bottleneck_blocks",
           "Progress", "top1_accuracy", "collect_statistics", "load_classifier", "image_folder_loader",
           "PRUNE_ORDERS", "PARTS", "ge_blocks", "analyze_features", "plot_selectivity", "plot_pruning",
           "plot_gates", "save_results"]
