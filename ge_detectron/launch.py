"""Start the processes of a (possibly multi-machine) run, for tools/train_net.py and tools/pretrain_net.py:
under torchrun, or with detectron2's launch.

detectron2's ``launch`` spawns one process per GPU and hard-codes CUDA and NCCL. torchrun starts the
processes itself and describes them in environment variables (env:// rendezvous); this module then
initialises the process group, NCCL on GPUs and gloo on the CPU, and the per-machine group that
detectron2's ``comm.get_local_rank()`` needs, in a store namespace of its own (``group_store``), so that the
group torchrun restarts after a worker died comes up. Every process of either waits for its peers at most
the config's process group timeout (``TaskAdapter.dist_timeout``).
"""
import datetime
import os
import sys

import torch
import torch.distributed as dist
from detectron2.engine import launch
from detectron2.utils import comm

__all__ = ["under_torchrun", "check_device", "check_launch_args", "group_store", "init_torchrun_process_group",
           "launch_from_args"]

GENERATION_KEY = "ge_detectron/process_group_generation"


def under_torchrun():
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def check_device(device, device_key="MODEL.DEVICE"):
    """Raise ValueError naming ``device_key`` if ``device`` is a CUDA device and no GPU is visible."""
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"{device_key} is {device!r} but no CUDA GPU is visible: set {device_key} to cpu.")


def check_launch_args(args, device, total_batch_size, device_key="MODEL.DEVICE", batch_key="SOLVER.IMS_PER_BATCH",
                      timeout=None, timeout_key="GE_DIST.TIMEOUT"):
    """Raise ValueError, with what to do instead, for a process layout that cannot run on ``device`` with
    ``total_batch_size`` images per step, or a process group ``timeout`` (seconds; None: not checked) that is
    not positive (``device_key``, ``batch_key`` and ``timeout_key`` name the config keys holding them)."""
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise ValueError(f"{timeout_key} = {timeout!r} is invalid: the seconds a process waits for the others, > 0.")
    if under_torchrun() and "LOCAL_WORLD_SIZE" not in os.environ:
        raise ValueError("RANK, WORLD_SIZE and LOCAL_RANK are set but LOCAL_WORLD_SIZE is not: start the "
                         "processes with torchrun, which sets all four.")
    check_device(device, device_key)
    world = int(os.environ["WORLD_SIZE"]) if under_torchrun() else args.num_gpus * args.num_machines
    if not under_torchrun() and world > 1 and not str(device).startswith("cuda"):
        raise ValueError(f"--num-gpus {args.num_gpus} --num-machines {args.num_machines} needs GPUs ({device_key} "
                         f"is {device!r}); for several CPU processes use torchrun, e.g. `torchrun "
                         f"--nproc_per_node 2 {sys.argv[0]} --config-file ...`.")
    if total_batch_size % world:
        raise ValueError(f"{batch_key} = {total_batch_size} (the total batch) is not divisible by "
                         f"the number of processes ({world}).")


def group_store(store):
    """``store`` (the one torchrun's env:// rendezvous reaches) under a prefix that no earlier process group of
    the run used.

    torchrun keeps one store for the whole run (the agent's TCPStore at MASTER_PORT, or the c10d rendezvous
    store) and restarts the workers against it. gloo publishes each process's address under fixed keys and
    reads its peers' with a get that returns at once when the key exists, so the processes of a restarted
    group read the addresses that the dead group left: a refused connection or a hang. The generation is
    read from the store before the group forms and raised once it has formed (or failed to), so every
    process of a group reads the same one, and a restarted group a new one. TORCHELASTIC_RESTART_COUNT
    cannot serve: each machine's agent counts its own restarts, and not the restarts another machine's
    failure caused."""
    return dist.PrefixStore(f"ge_detectron/group{store.add(GENERATION_KEY, 0)}/", store)


def init_torchrun_process_group(device, timeout):
    """Join the process group torchrun describes; ``device`` ("cpu" or "cuda...") picks the backend;
    collectives and the group's forming give up after ``timeout`` seconds."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank, local_size = int(os.environ["LOCAL_RANK"]), int(os.environ["LOCAL_WORLD_SIZE"])
    on_cuda = device.startswith("cuda")
    if on_cuda:
        torch.cuda.set_device(local_rank)
    timeout = datetime.timedelta(seconds=timeout)
    store = next(dist.rendezvous("env://", timeout=timeout))[0]
    try:
        dist.init_process_group(backend="nccl" if on_cuda else "gloo", store=group_store(store), rank=rank,
                                world_size=world, timeout=timeout)
        if hasattr(comm, "create_local_process_group"):  # detectron2 after 0.6
            comm.create_local_process_group(local_size)
        else:  # detectron2 0.6 has no function for it: what its launch() does itself
            for first in range(0, world, local_size):  # every process must create every group
                group = dist.new_group(list(range(first, first + local_size)))
                if first <= rank < first + local_size:
                    comm._LOCAL_PROCESS_GROUP = group
        comm.synchronize()
    except Exception:  # this group will not form: the next one (a restart) starts on fresh keys
        store.add(GENERATION_KEY, 1)
        raise
    if rank == 0:  # every process has formed the group and so read the generation
        store.add(GENERATION_KEY, 1)


def launch_from_args(main_func, args, device, timeout):
    """Run ``main_func(args)`` in every process of the run described by torchrun's environment or by
    ``args`` (detectron2's ``--num-gpus``, ``--num-machines``, ``--machine-rank``, ``--dist-url``); the
    process group's collectives give up after ``timeout`` seconds."""
    if under_torchrun():
        init_torchrun_process_group(device, timeout)
        result = main_func(args)
        dist.destroy_process_group()
        return result
    return launch(main_func, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
                  dist_url=args.dist_url, args=(args,), timeout=datetime.timedelta(seconds=timeout))
