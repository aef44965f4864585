#!/usr/bin/env python
"""Train or evaluate a Gather-Excite detector from a LazyConfig (a Python config, configs/**/*.py), as
detectron2's tools/lazyconfig_train_net.py does, with the fault handling of tools/train_net.py.

    python tools/lazyconfig_train_net.py --config-file configs/faster_rcnn_ge_r50.py --num-gpus 8
    python tools/lazyconfig_train_net.py --config-file configs/faster_rcnn_ge_r50.py --eval-only \\
        train.init_checkpoint=output/lazy/faster_rcnn_ge_r50/model_final.pth
    python tools/lazyconfig_train_net.py --config-file ... --resume            # from train.output_dir/last_checkpoint
    torchrun --nproc_per_node 8 tools/lazyconfig_train_net.py --config-file configs/new_baselines/mask_rcnn_ge_r50_fpn_100ep_LSJ.py
    python tools/lazyconfig_train_net.py --config-file ... --register-coco my_train my/train.json my/images \\
        dataloader.train.dataset.names=my_train model.roi_heads.num_classes=3

Trailing ``key=value`` pairs override the config (``+key=value`` adds a key). The flow lives in
ge_detectron.cli.train.
"""
from ge_detectron.cli.train import run_lazyconfig_train_net

if __name__ == "__main__":
    run_lazyconfig_train_net()
