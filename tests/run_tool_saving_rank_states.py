"""Run a tool (the first argument, e.g. tools/train_net.py; the rest are its arguments) with one more
training hook for tests/test_distributed.py: after training, every process saves its model's final
parameters and buffers (unwrapped from DDP, on the CPU) to ``$RANK_STATE_DIR/rank{RANK}.pth``, so the
test can check that data-parallel processes ended with the same weights. The hook is appended to the
hooks every detectron2 trainer registers (``TrainerBase.register_hooks``), after the tools' own."""
import os
import runpy
import sys

import ge_detectron  # noqa: F401  (detectron2's compatibility fixes before detectron2 is imported)
import torch
from detectron2.engine import HookBase, TrainerBase
from detectron2.utils import comm


class SaveRankState(HookBase):
    def __init__(self, directory):
        self.directory = directory

    def after_train(self):
        model = self.trainer.model
        model = getattr(model, "module", model)
        state = {"iteration": self.trainer.iter,
                 "parameters": {k: v.detach().cpu() for k, v in model.named_parameters()},
                 "buffers": {k: v.detach().cpu() for k, v in model.named_buffers()}}
        os.makedirs(self.directory, exist_ok=True)
        torch.save(state, os.path.join(self.directory, f"rank{comm.get_rank()}.pth"))


def with_rank_state_saved(register_hooks, directory):
    def register(trainer, hooks):
        register_hooks(trainer, [*hooks, SaveRankState(directory)])
    return register


if __name__ == "__main__":
    TrainerBase.register_hooks = with_rank_state_saved(TrainerBase.register_hooks, os.environ["RANK_STATE_DIR"])
    tool = sys.argv.pop(1)
    sys.argv[0] = tool
    runpy.run_path(tool, run_name="__main__")
