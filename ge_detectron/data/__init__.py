from .datasets import DatasetMissingError, prepare_datasets, register_shapes_datasets
from .shapes import CLASSES as SHAPES_CLASSES, ensure_shapes_dataset, generate_shapes_split

register_shapes_datasets()
