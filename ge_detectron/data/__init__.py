from .datasets import (DatasetMissingError, NumClassesMismatchError, check_num_classes, dataset_categories,
                       prepare_datasets, register_coco_dataset, register_shapes_datasets)
from .shapes import CLASSES as SHAPES_CLASSES, ensure_shapes_dataset, generate_shapes_split

register_shapes_datasets()
