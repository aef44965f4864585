"""A training data stream that a checkpoint resumes where it stopped.

detectron2's TrainingSampler yields one infinite stream of dataset indices: shuffled epochs drawn from
a seed shared by all processes, each process taking its shard. A checkpoint records the seed and how
many images of its shard a process has trained on (``ge_detectron.engine.resume.ExactResumeState``); the
resumed run skips that many indices, without loading their images, and goes on with the next one.
That is the uninterrupted stream whenever the loader yields images in sampler order: one aspect-ratio
group (e.g. square images) or DATALOADER.ASPECT_RATIO_GROUPING off, and no unreadable image replaced.
"""
import itertools

import torch
from detectron2.data import build_detection_train_loader
from detectron2.data.samplers import TrainingSampler
from detectron2.utils import comm


class ResumableTrainingSampler(TrainingSampler):
    """detectron2's TrainingSampler (same stream for the same seed) that starts ``start`` indices into
    this process's shard; ``resume`` sets both before iteration begins."""

    def __init__(self, size, shuffle=True, seed=None):
        seed = comm.shared_random_seed() if seed is None else int(seed)
        super().__init__(size, shuffle=shuffle, seed=seed)
        self.size, self.shuffle, self.seed, self.start = size, shuffle, seed, 0

    def resume(self, seed, start):
        TrainingSampler.__init__(self, self.size, shuffle=self.shuffle, seed=seed)
        self.seed, self.start = seed, start

    def __iter__(self):
        yield from itertools.islice(super().__iter__(), self.start, None)


class ResumableLoader:
    """A training data loader with the ResumableTrainingSampler it draws from (attributes such as
    ``dataset`` are the loader's).

    The loader's iterator is created on the first batch: detectron2 0.6's SimpleTrainer calls ``iter()``
    when it is constructed, before ``resume`` (a checkpoint load) positions the sampler, and a loader's
    worker processes copy the sampler when its iterator is created. The torch DataLoader (the loader,
    or the one inside detectron2's AspectRatioGroupedDataset) gets a generator of its own, seeded with
    the sampler's seed: otherwise creating its iterator draws from torch's global generator, whose state
    a resumed run restores (ExactResumeState) and the uninterrupted run did not draw from at that point.
    """

    def __init__(self, loader, sampler):
        self.loader, self.sampler = loader, sampler
        self._iterator = None
        for candidate in (loader, getattr(loader, "dataset", None)):
            if isinstance(candidate, torch.utils.data.DataLoader) and candidate.generator is None:
                candidate.generator = torch.Generator().manual_seed(sampler.seed)

    def resume(self, seed, start):
        self.sampler.resume(seed, start)

    def __iter__(self):
        if self._iterator is None:
            self._iterator = iter(self.loader)
        yield from self._iterator

    def __getattr__(self, name):
        if name == "loader":  # not constructed (e.g. being unpickled)
            raise AttributeError(name)
        return getattr(self.loader, name)


def build_resumable_train_loader(cfg=None, *, dataset, mapper, sampler=None, **kwargs):
    """detectron2's ``build_detection_train_loader`` (the same arguments: a cfg, or plain ones as in a
    LazyConfig's ``dataloader.train``) whose stream a checkpoint resumes: a ResumableLoader drawing from a
    ResumableTrainingSampler (seeded with SEED when a cfg sets it >= 0, else with detectron2's shared random
    seed) where detectron2 would use its TrainingSampler; its own loader, resumed from the start, for a
    given ``sampler``, another DATALOADER.SAMPLER_TRAIN or an iterable dataset."""
    args = () if cfg is None else (cfg,)
    if sampler is not None or isinstance(dataset, torch.utils.data.IterableDataset) or \
            (cfg is not None and cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler"):
        return build_detection_train_loader(*args, dataset=dataset, mapper=mapper, sampler=sampler, **kwargs)
    sampler = ResumableTrainingSampler(len(dataset), seed=cfg.SEED if cfg is not None and cfg.SEED >= 0 else None)
    return ResumableLoader(build_detection_train_loader(*args, dataset=dataset, mapper=mapper, sampler=sampler, **kwargs),
                           sampler)
