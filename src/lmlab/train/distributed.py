"""Data parallelism under torchrun: one process per device, each training on its share of every batch.

`torchrun --nproc_per_node=K -m lmlab.cli pretrain --set train.parallel=ddp ...` (or `fsdp`)

DDP keeps a whole copy of the model, its gradients and optimizer state on every
process; FSDP2 (`fully_shard`, per transformer block and then the root) keeps
1/K of each and gathers a block's weights just before it runs, which is what
lets a model K times larger fit.

The samplers stay the single-process ones: micro-batch `i` is the same
`batch_size` windows whatever K is. When `grad_accum` is divisible by K, rank
r trains on micro-batches r, r+K, ... whole (a GPU's batch stays `batch_size`
and each accumulates grad_accum/K of them); otherwise it trains on rows
[r*b/K, (r+1)*b/K) of every micro-batch. DDP and FSDP average the gradients
over the ranks, and each rank weighs its losses so that the average is the one
process's gradient on the same global batch (exactly so for the causal loss,
whose rows all have `block` tokens). Resuming at another K is
resuming: the checkpoint does not know K. Only rank 0 logs, evaluates into
the log, draws plots and writes checkpoints.

Checkpoints stay one full, single-process checkpoint whatever the mode and K:
under FSDP the processes gather the full weights and optimizer state (with
`torch.distributed.checkpoint.state_dict`) and rank 0 writes them, instead of
writing sharded files with `torch.distributed.checkpoint`. That keeps a
checkpoint readable by every lmlab tool and resumable at any K; its cost is
that rank 0 must hold the full state in CPU memory, which is fine up to a few
billion parameters (sharded saving is the way beyond).

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
from lmlab.model.checkpoint import model_state_keys
from lmlab.model.transformer import Block

MODES = ("none", "ddp", "fsdp")


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

    def share(self, grad_accum: int, batch_size: int) -> tuple[list[int], slice, float]:
        """This process's part of one step: (its micro-batches, its rows of each, the weight of each loss).

        With grad_accum divisible by K, each process takes every K-th micro-batch whole (so a GPU's batch does
        not shrink as K grows); otherwise it takes its rows of every micro-batch. Either way the gradients
        averaged over the processes are the one-process gradient: mean over micro-batches of the mean loss."""
        if self.world > 1 and grad_accum % self.world == 0:
            return list(range(self.rank, grad_accum, self.world)), slice(None), self.world / grad_accum
        return list(range(grad_accum)), self.rows(batch_size), 1.0 / grad_accum

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
        return self.sum(value, what) / self.world

    def sum(self, value: float, what: str) -> float:
        """The sum of a number over the ranks (token counts, loss sums)."""
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        collective(self, what, dist.all_reduce, t, op=dist.ReduceOp.SUM)
        return float(t[0])

    def no_sync(self, model: Any, last: bool) -> AbstractContextManager:
        """Skip the gradient all-reduce (DDP) or reduce-scatter (FSDP) on all but a step's last micro-batch."""
        if not self.active:
            return nullcontext()
        if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
            model.set_requires_gradient_sync(last)
            return nullcontext()
        return model.no_sync() if not last and hasattr(model, "no_sync") else nullcontext()

    def close(self, clean: bool = True) -> None:
        """Leave the process group. After a clean run the processes first wait for each other, so that none
        tears the group down while another still uses it (gloo aborts a process that does); after an error
        they do not wait (a peer may be dead)."""
        if not (self.active and dist.is_initialized()):
            return
        if clean:
            try:
                dist.barrier()
            except (RuntimeError, dist.DistError):
                pass
        dist.destroy_process_group()


_peer_lost = False


def peer_lost() -> bool:
    """Whether a collective of this process failed because another process died or hung. Such a process should
    leave with os._exit once it has said why: at interpreter exit, the destructors of a process group whose
    peer is gone can abort ('terminate called without an active exception'), turning a clean error into a
    crash."""
    return _peer_lost


def collective(ranks: Ranks, what: str, fn, *args, **kwargs) -> Any:
    """Run a collective; a peer that died or hangs is an error that says so, not a hang."""
    global _peer_lost
    try:
        return fn(*args, **kwargs)
    except (RuntimeError, dist.DistError) as e:  # gloo: connection closed or timed out; NCCL: watchdog
        _peer_lost = True
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
                         f"train.parallel=ddp or fsdp (or run one process)")
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


def wrap(model: torch.nn.Module, ranks: Ranks, device: torch.device, unused: bool | None = None) -> torch.nn.Module:
    """The model DDP trains: gradients averaged over the ranks during backward; rank 0's weights to all.
    (An FSDP model was sharded in place by `shard` and is returned as it is.) `unused`: some parameters may
    get no gradient in a step (default: a mixture of experts, whose unrouted experts get none)."""
    if not ranks.active or is_sharded(model):
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    if unused is None:
        unused = bool(model.cfg.moe)
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=unused)


def _fully_shard():
    try:
        from torch.distributed.fsdp import fully_shard  # torch >= 2.6
    except ImportError:  # torch 2.4-2.5
        from torch.distributed._composable.fsdp import fully_shard
    return fully_shard


def shard(model: torch.nn.Module, ranks: Ranks) -> None:
    """FSDP2 in place: each transformer block is one unit (its weights gathered just before it runs, freed after),
    and the root holds the rest (embeddings, final norm, head, and a wrapper's own heads: a reward model's value
    head). Before the optimizer is made: it must see the sharded parameters."""
    if not ranks.active:
        return
    fully_shard = _fully_shard()
    for block in [m for m in model.modules() if isinstance(m, Block)]:
        fully_shard(block)
    fully_shard(model)


def fsdp_precision(mode: str, device: torch.device) -> str:
    """The precision mode a sharded model trains in: FSDP keeps its own sharded fp32 weights, so bf16 comes
    through autocast, never as bf16 weights with fp32 masters ('auto': bf16 autocast where the GPU has bf16)."""
    if mode == "bf16-master":
        raise LmlabError("train.parallel=fsdp needs train.precision fp32 or bf16-autocast (FSDP shards fp32 "
                         "weights itself); bf16-master is for one process or ddp")
    if mode == "auto":
        return "bf16-autocast" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return mode


def is_sharded(model: torch.nn.Module) -> bool:
    return hasattr(model, "set_requires_gradient_sync")


def optimizer_names(model: torch.nn.Module, opt: torch.optim.Optimizer) -> list[str]:
    """The parameter name behind each of the optimizer's parameter indices (its state dict's keys)."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for g in opt.param_groups for p in g["params"]]


def load_optimizer(model: torch.nn.Module, opt: torch.optim.Optimizer, state: dict) -> None:
    """Load a single-process optimizer state (keyed by index) into a sharded model's optimizer."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = optimizer_names(model, opt)
    by_name = {"state": {names[i]: v for i, v in state["state"].items()},
               "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]}
    set_optimizer_state_dict(model, opt, by_name, options=StateDictOptions(full_state_dict=True))


def full_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A sharded model's full weights as a checkpoint holds them (fp32 on rank 0's CPU, a tied head once,
    persistent buffers); every process must call this (it gathers), and the others get an empty dict."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    keys = model_state_keys(model)
    return {n: (t.detach().float() if t.is_floating_point() else t).cpu().contiguous()
            for n, t in full.items() if n in keys}


def full_state(model: torch.nn.Module, opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    """A sharded model's full weights (as `full_weights`) and optimizer state (index-keyed, as one process saves
    it), on rank 0's CPU; every process must call this (it gathers), and the others get empty dicts."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    weights = full_weights(model)
    by_name = get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not by_name:
        return weights, by_name
    index = {n: i for i, n in enumerate(optimizer_names(model, opt))}
    state = {"state": {index[n]: v for n, v in by_name["state"].items()},
             "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in by_name["param_groups"]]}
    return weights, state
