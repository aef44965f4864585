"""What the detection task adapters (``trainer.YAMLDetection``, ``lazy.LazyDetection``) share: the
``--register-coco`` option of the detection tools, the config of a tool's arguments, and the datasets checked
before training (registered, on disk, the demo data generated on first use, as many categories as the
detector has classes)."""
from ..data import check_num_classes, prepare_datasets, register_coco_dataset

__all__ = ["add_register_coco_option", "register_coco_datasets", "DetectionTaskMixin"]


def add_register_coco_option(parser):
    """The detection tools' ``--register-coco NAME JSON IMAGE_ROOT`` option (repeatable) on ``parser``."""
    parser.add_argument("--register-coco", nargs=3, action="append", default=[],
                        metavar=("NAME", "JSON", "IMAGE_ROOT"),
                        help="register a COCO-format instances dataset (annotation JSON, image folder) as NAME, "
                             "to name in the config's datasets; repeatable")
    return parser


def register_coco_datasets(args):
    """Register the datasets that ``args.register_coco`` names."""
    for name, json_file, image_root in args.register_coco:
        register_coco_dataset(name, json_file, image_root)


class DetectionTaskMixin:
    """The shared part of the detection task adapters (mixed into an engine ``TaskAdapter``). A subclass gives
    ``load(config_file, opts)``, ``dataset_names()`` (train, test) and ``num_classes`` ((key, value) or None)."""

    @classmethod
    def add_arguments(cls, parser):
        return add_register_coco_option(parser)

    @classmethod
    def from_args(cls, args):
        register_coco_datasets(args)
        return cls(cls.load(args.config_file, args.opts))

    def check(self, eval_only):
        """The datasets (the test datasets alone for ``--eval-only``) on disk and of the detector's classes."""
        train_names, test_names = self.dataset_names()
        names = ([] if eval_only else train_names) + test_names
        prepare_datasets(names)
        if self.num_classes is not None:
            check_num_classes(names, *self.num_classes)
