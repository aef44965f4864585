"""Top-1 / top-5 accuracy as a detectron2 DatasetEvaluator, summed over all processes."""
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm


class ClassificationEvaluator(DatasetEvaluator):
    """Counts hits of ``(images, labels)`` batches against their logits. ``evaluate`` returns
    ``{"classification": {"top1": %, "top5": %}}`` on every process (top-5 is top-k with k = the
    number of classes when there are fewer than 5), and keeps the number of images it counted over all
    processes in ``count``."""

    def reset(self):
        self._top1 = self._top5 = self._count = 0

    def process(self, inputs, outputs):
        labels = inputs[1].to(outputs.device)
        hits = outputs.topk(min(5, outputs.shape[1]), dim=1).indices == labels[:, None]
        self._top1 += int(hits[:, 0].sum())
        self._top5 += int(hits.any(dim=1).sum())
        self._count += len(labels)

    def evaluate(self):
        top1, top5, count = (sum(parts) for parts in zip(*comm.all_gather((self._top1, self._top5, self._count))))
        self.count = count
        if count == 0:
            raise RuntimeError("ClassificationEvaluator saw no images: PRETRAIN.VAL_DIR is empty or none of its "
                               "images could be read.")
        return {"classification": {"top1": 100.0 * top1 / count, "top5": 100.0 * top5 / count}}
