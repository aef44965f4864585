"""The data of the GE LazyConfigs: detectron2's COCO dataloader (its model zoo's common/data/coco.py), with
the bad-data handling of tools/train_net.py (unusable boxes dropped, unreadable images skipped in training
and images over PIL's pixel limit in evaluation, each counted in a warning; ge_detectron.data.sanitize) and
the evaluator of ge_detectron.evaluation (COCO box AP, and mask AP for a detector that predicts masks)."""
from detectron2.config import LazyCall as L
from detectron2.model_zoo import get_config

from ge_detectron.data.sanitize import (build_sanitized_test_loader, build_sanitized_train_loader,
                                       load_detection_dataset_dicts)
from ge_detectron.evaluation import coco_evaluator


def with_ge_data_handling(dataloader):
    """``dataloader`` (detectron2's ``dataloader`` config: ``train``, ``test``) with the bad-data handling
    on its training and test data and ge_detectron's COCO evaluator on its test data (results in
    ``train.output_dir``/inference). The dataset names and the mappers stay as they are."""
    dataloader.train._target_ = build_sanitized_train_loader
    dataloader.train.dataset = L(load_detection_dataset_dicts)(names=dataloader.train.dataset.names)
    dataloader.test._target_ = build_sanitized_test_loader
    dataloader.evaluator = L(coco_evaluator)(dataset_name="${..test.dataset.names}",
                                             output_dir="${train.output_dir}/inference")
    return dataloader


# COCO 2014 train / val (the paper's split); multi-scale training at 640-800 px, testing at 800 px.
dataloader = with_ge_data_handling(get_config("common/data/coco.py").dataloader)
dataloader.train.dataset.names = "coco_2014_train"
dataloader.test.dataset.names = "coco_2014_val"
