"""The classifier in the shape detectron2's training loop and evaluator expect of a model."""
import torch.nn.functional as F
from detectron2.utils.events import get_event_storage
from torch import nn


class ClassificationTask(nn.Module):
    """Wraps a classifier for detectron2's SimpleTrainer / AMPTrainer and ``inference_on_dataset``.

    A batch is ``(images, labels)``. In training mode returns ``{"loss_cls": cross-entropy}`` and
    records the batch's top-1 accuracy (%) as ``train/top1`` in the EventStorage; in eval mode
    returns the logits.
    """

    def __init__(self, classifier, label_smoothing=0.0):
        super().__init__()
        self.classifier = classifier
        self.label_smoothing = label_smoothing

    def forward(self, batch):
        images, labels = batch
        logits = self.classifier(images)
        if not self.training:
            return logits
        labels = labels.to(logits.device, non_blocking=True)
        get_event_storage().put_scalar("train/top1", 100.0 * (logits.argmax(dim=1) == labels).float().mean().item())
        return {"loss_cls": F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)}
