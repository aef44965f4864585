"""Console progress of pretraining: detectron2's CommonMetricPrinter shows only losses, so this one
adds the epoch, the training top-1 and the throughput in images/s."""
import datetime
import logging

import torch
from detectron2.utils.events import EventWriter, get_event_storage


class PretrainMetricPrinter(EventWriter):
    """Logs ETA, iteration, epoch, loss, training top-1, lr, images/s, iteration and data times and
    max GPU memory; also puts ``images_per_sec`` in the EventStorage, so that the writers after it
    (JSONWriter, TensorboardXWriter) record it."""

    def __init__(self, max_iter, ims_per_batch, images_per_epoch, window_size=20):
        self.logger = logging.getLogger(__name__)
        self._max_iter, self._ims_per_batch, self._images_per_epoch = max_iter, ims_per_batch, images_per_epoch
        self._window_size = window_size

    def write(self):
        storage = get_event_storage()
        iteration, histories = storage.iter, storage.histories()
        if iteration >= self._max_iter:  # nothing left to report on after the last step
            return
        fields = []
        if "time" in histories:  # IterationTimer skips the first iterations
            seconds = histories["time"].median(self._window_size)
            eta = histories["time"].median(1000) * (self._max_iter - iteration - 1)
            fields.append(f"eta: {datetime.timedelta(seconds=int(eta))}")
            storage.put_scalar("images_per_sec", self._ims_per_batch / seconds, smoothing_hint=False)
        fields += [f"iter: {iteration}", f"epoch: {(iteration + 1) * self._ims_per_batch / self._images_per_epoch:.2f}"]
        fields += [f"{k}: {histories[k].median(self._window_size):.4g}"
                   for k in ("total_loss", "train/top1") if k in histories]
        if "lr" in histories:
            fields.append(f"lr: {histories['lr'].latest():.5g}")
        if "time" in histories:
            fields.append(f"images/s: {self._ims_per_batch / seconds:.1f}  time: {seconds:.4f}")
        if "data_time" in histories:
            fields.append(f"data_time: {histories['data_time'].median(self._window_size):.4f}")
        if torch.cuda.is_available():
            fields.append(f"max_mem: {torch.cuda.max_memory_allocated() / 2 ** 20:.0f}M")
        self.logger.info("  ".join(fields))
