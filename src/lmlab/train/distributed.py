"""Data parallelism under torchrun: one process per device, each training on its share of every batch.

`torchrun --nproc_per_node=K -m lmlab.cli pretrain --set train.parallel=ddp ...`

The samplers stay the single-process ones: micro-batch `i` is the same
`batch_size` windows whatever K is, and rank r trains on rows
[r*b/K, (r+1)*b/K) of it. DDP averages the gradients over the ranks, so a
step's update is the one process's update on the same global batch: the mean
loss over b rows is the mean of K means over b/K rows each (exactly so for
the causal loss, whose rows all have `block` tokens). Resuming at another K is
resuming: the checkpoint does not know K. Only rank 0 logs, evaluates into
the log, draws plots and writes checkpoints.

The process group has a timeout (`train.dist_timeout`): a rank whose peer died
or hangs gets an error naming it instead of waiting forever.
"""

from __future__ import annotations

import datetime
import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from lmlab.errors import LmlabError

MODES = ("none", "ddp")


@dataclass
class Ranks:
    """Where this process stands in the run: its rank among `world` processes (world 1: no torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    timeout_s: float = 300.0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def rows(self, batch_size: int) -> slice:
        """This rank's rows of a `batch_size` micro-batch."""
        share = batch_size // self.world
        return slice(self.rank * share, (self.rank + 1) * share)

    def barrier(self, what: str) -> None:
        if self.active:
            collective(self, what, dist.barrier)

    def mean(self, value: float, what: str) -> float:
        """The mean of a number over the ranks (a logged loss)."""
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        collective(self, what, dist.all_reduce, t, op=dist.ReduceOp.SUM)
        return float(t[0]) / self.world

    def no_sync(self, model: Any, last: bool) -> AbstractContextManager:
        """Skip DDP's gradient all-reduce on all but the last micro-batch of a step."""
        return model.no_sync() if self.active and not last and hasattr(model, "no_sync") else nullcontext()

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()


def collective(ranks: Ranks, what: str, fn, *args, **kwargs) -> Any:
    """Run a collective; a peer that died or hangs is an error that says so, not a hang."""
    try:
        return fn(*args, **kwargs)
    except (RuntimeError, dist.DistError) as e:  # gloo: connection closed or timed out; NCCL: watchdog
        raise LmlabError(f"rank {ranks.rank} of {ranks.world}: {what} failed: another rank died or did not answer "
                         f"within train.dist_timeout={ranks.timeout_s:g} s ({str(e).splitlines()[0]})") from None


def setup(parallel: str, device: torch.device, timeout_s: float) -> Ranks:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, ...), or run alone."""
    if parallel not in MODES:
        raise LmlabError(f"train.parallel must be one of {MODES}, got {parallel!r}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks(timeout_s=timeout_s)
    if parallel == "none":
        raise LmlabError(f"started by torchrun with {world} processes but train.parallel is 'none': set "
                         f"train.parallel=ddp (or run one process)")
    ranks = Ranks(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")), timeout_s)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return ranks


def device_for(ranks: Ranks, device: torch.device) -> torch.device:
    """Each process on a GPU machine takes the GPU of its local rank."""
    if device.type == "cuda" and ranks.active:
        torch.cuda.set_device(ranks.local_rank)
        return torch.device("cuda", ranks.local_rank)
    return device


def wrap(model: torch.nn.Module, ranks: Ranks, device: torch.device) -> torch.nn.Module:
    """The model DDP trains: gradients averaged over the ranks during backward; rank 0's weights to all."""
    if not ranks.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)
