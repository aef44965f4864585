#!/usr/bin/env python
"""Pretrain a GE-ResNet classifier on ImageNet (or any ImageFolder) with detectron2's training loop.

    python tools/pretrain_net.py --config-file configs/pretrain/r50_theta.yaml --num-gpus 8
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_endpoint HOST:29500 tools/pretrain_net.py --config-file ...
    torchrun --nproc_per_node 2 tools/pretrain_net.py --config-file ...     # several CPU processes (gloo)
    python tools/pretrain_net.py --config-file ... --resume                 # continue from OUTPUT_DIR/last_checkpoint
    python tools/pretrain_net.py --config-file ... --eval-only MODEL.WEIGHTS out/model_final.pth

Trailing ``KEY VALUE`` pairs override the config. Then hand the weights to a detector with
tools/convert_weights.py (docs/pretraining.md). The flow lives in ge_detectron.cli.train.
"""
from ge_detectron.cli.train import run_pretrain_net

if __name__ == "__main__":
    run_pretrain_net()
