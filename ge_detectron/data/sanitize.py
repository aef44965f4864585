"""Bad data in detection datasets: annotations with unusable boxes are dropped at load time, and
images that cannot be read are skipped by the training mapper, each with a warning that counts them.
Evaluation skips the images over PIL's pixel limit (``Image.MAX_IMAGE_PIXELS``; opening an image of more
than twice as many pixels raises DecompressionBombError before anything is decoded) the same way, and
evaluates the others."""
import logging
import math
import traceback

from detectron2.data import build_detection_test_loader, get_detection_dataset_dicts
from detectron2.data.detection_utils import SizeMismatchError
from detectron2.structures import BoxMode
from PIL import Image

from .datasets import InvalidDatasetError
from .resumable import build_resumable_train_loader

logger = logging.getLogger(__name__)

# What reading and decoding a broken image file raises: a missing or truncated file and PIL's
# UnidentifiedImageError are OSErrors, broken PNG chunks SyntaxError, broken image data ValueError,
# an image over PIL's pixel limit DecompressionBombError; detectron2's SizeMismatchError (a ValueError)
# is a file whose size is not the one annotated. Every loader here skips an image that raises one of them.
UNREADABLE_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
# What a test mapper marks an image it skipped with (a dict, so that detectron2's MapDataset, which answers
# None with another image, passes it on); the test loader leaves such items out of its batches.
SKIPPED_IMAGE = "skipped_image"


def skipped_image_message(path, reason, count, per_worker=False):
    """The line that reports an unreadable image left out, with the running count (``count``) of them."""
    where = " in this data loader worker" if per_worker else ""
    return f"Skipped unreadable image {path!r} ({reason}); {count} skipped so far{where}."


def _box_is_usable(annotation, width, height):
    x0, y0, x1, y1 = BoxMode.convert(list(annotation["bbox"]), annotation["bbox_mode"], BoxMode.XYXY_ABS)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)) or x1 <= x0 or y1 <= y0:
        return False  # degenerate
    return x1 > 0 and y1 > 0 and x0 < width and y0 < height  # overlaps the image


def drop_unusable_boxes(dataset_dicts, filter_empty=True):
    """Drop annotations whose box is degenerate (empty, inverted, non-finite) or entirely outside the
    image, then (with ``filter_empty``) the images left without annotations. Warns with the counts."""
    kept, dropped_boxes, dropped_images = [], 0, 0
    for record in dataset_dicts:
        annotations = record.get("annotations")
        if annotations is not None:
            usable = [a for a in annotations if _box_is_usable(a, record["width"], record["height"])]
            dropped_boxes += len(annotations) - len(usable)
            record = {**record, "annotations": usable}
            if filter_empty and not usable and annotations:
                dropped_images += 1
                continue
        kept.append(record)
    if dropped_boxes:
        logger.warning(f"Dropped {dropped_boxes} annotations with degenerate or out-of-image boxes "
                       f"({dropped_images} images left without annotations were dropped too).")
    return kept


def load_detection_dataset_dicts(names, filter_empty=True):
    """The records of the datasets ``names`` as detectron2 loads them for training, minus unusable boxes
    (and, with ``filter_empty``, images without annotations); an empty result is an InvalidDatasetError
    that says so. Plain arguments: LazyConfigs use it as ``dataloader.train.dataset``."""
    names = [names] if isinstance(names, str) else list(names)
    try:
        records = get_detection_dataset_dicts(names, filter_empty=filter_empty)
    except AssertionError as e:  # detectron2 asserts on empty datasets
        raise InvalidDatasetError(f"Training dataset(s) {names} contain no usable images ({e}).") from None
    records = drop_unusable_boxes(records, filter_empty)
    if not records:
        raise InvalidDatasetError(f"Training dataset(s) {names} contain no image with a usable box.")
    return records


def load_train_dataset_dicts(cfg):
    """``load_detection_dataset_dicts`` of ``cfg.DATASETS.TRAIN``."""
    return load_detection_dataset_dicts(cfg.DATASETS.TRAIN, cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)


def _raised_reading_an_image(error):
    """Whether ``error``, one of UNREADABLE_IMAGE_ERRORS raised by a dataset mapper, comes from reading
    the image: a ValueError only if it is a SizeMismatchError or PIL raised it (the mapper's other
    ValueErrors are about annotations, and must not pass for an unreadable image)."""
    if not isinstance(error, ValueError) or isinstance(error, SizeMismatchError):
        return True
    return any(frame.f_globals.get("__name__", "").split(".")[0] == "PIL"
               for frame, _ in traceback.walk_tb(error.__traceback__))


class SkipUnreadableImages:
    """Wrap a dataset mapper: an image that cannot be read or decoded (``errors``) makes it return None,
    which detectron2's MapDataset answers by sampling another image, or with ``mark`` ``{SKIPPED_IMAGE:
    file name}``. Counts and warns (per worker)."""

    def __init__(self, mapper, errors=UNREADABLE_IMAGE_ERRORS, mark=False):
        self.mapper, self.errors, self.mark = mapper, errors, mark
        self.skipped = 0

    def __call__(self, dataset_dict):
        try:
            return self.mapper(dataset_dict)
        except self.errors as e:
            if not _raised_reading_an_image(e):
                raise
            self.skipped += 1
            logger.warning(skipped_image_message(dataset_dict.get("file_name"), f"{type(e).__name__}: {e}",
                                                 self.skipped, per_worker=True))
            return {SKIPPED_IMAGE: dataset_dict.get("file_name")} if self.mark else None


def build_sanitized_train_loader(*args, mapper, **kwargs):
    """detectron2's ``build_detection_train_loader`` (same arguments: a cfg, or plain ones as in a
    LazyConfig's ``dataloader.train``) whose mapper skips unreadable images (``SkipUnreadableImages``) and
    whose stream a checkpoint resumes (``build_resumable_train_loader``). Give it the records of
    ``load_detection_dataset_dicts``, which drops unusable boxes."""
    return build_resumable_train_loader(*args, mapper=SkipUnreadableImages(mapper), **kwargs)


class _WithoutSkippedImages:
    """A test data loader whose batches leave out the items its mapper marked SKIPPED_IMAGE (and batches left
    empty); its length and attributes are the loader's."""

    def __init__(self, loader):
        self.loader = loader

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            batch = [item for item in batch if SKIPPED_IMAGE not in item]
            if batch:
                yield batch

    def __getattr__(self, name):
        return getattr(self.loader, name)


def build_sanitized_test_loader(*args, mapper, **kwargs):
    """detectron2's ``build_detection_test_loader`` (same arguments: a cfg and dataset name, or plain ones as
    in a LazyConfig's ``dataloader.test``) that skips the images over PIL's pixel limit with a warning
    naming each and evaluates the others. Other unreadable images stop the evaluation, as in detectron2."""
    skipping = SkipUnreadableImages(mapper, errors=(Image.DecompressionBombError,), mark=True)
    return _WithoutSkippedImages(build_detection_test_loader(*args, mapper=skipping, **kwargs))
