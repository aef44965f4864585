"""Progress and ETA of the analysis passes over a data loader."""
import time


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
