"""What every post-training stage shares: its optimisation settings, the policy it starts from, and one
optimizer step with lmlab's precision modes, schedule, logging and checkpoints."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmlab.data.chat import END_OF_TURN, ROLES
from lmlab.data.tokenizer import Tokenizer
from lmlab.device import pick_device
from lmlab.errors import LmlabError
from lmlab.model import autotune
from lmlab.model import checkpoint as ckpt_io
from lmlab.model.transformer import Transformer
from lmlab.train import distributed
from lmlab.train.metrics import MetricsLog, NullLog
from lmlab.train.optim import lr_at, make_adamw, param_groups
from lmlab.train.precision import Precision


@dataclass
class PostTrainConfig:
    steps: int = 300
    """Optimizer steps."""
    batch_size: int = 16
    """Examples (conversations, or preference pairs) per step."""
    lr: float = 3e-4
    """Peak learning rate (lower than pretraining's: the model already knows the language)."""
    min_lr: float = 3e-5
    """Learning rate at the end of the cosine decay."""
    warmup_steps: int = 20
    """Linear warmup steps."""
    weight_decay: float = 0.0
    """AdamW weight decay on matrices."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 = no clipping)."""
    precision: str = "fp32"
    """'auto', 'fp32', 'bf16-autocast' or 'bf16-master' (see lmlab pretrain)."""
    device: str = "auto"
    """'auto' (CUDA if available, else CPU), 'cpu', 'cuda', ..."""
    threads: int | None = None
    """CPU threads for torch (None = torch's default)."""
    seed: int = 1337
    """Seed for data order and sampling."""
    eval_interval: int = 100
    """Evaluate held-out loss every this many steps (and at the end); 0 = only at the end."""
    log_interval: int = 10
    """Write a metrics.jsonl line every this many steps."""
    parallel: str = "none"
    """Under torchrun: 'ddp' (each process its share of every batch's examples, its loss weighted by its
    share of the batch's response tokens (sft) or pairs (rm, dpo): the one-process run), 'fsdp' (the same
    split, with weights, gradients and optimizer state sharded over the processes; rank 0 evaluates a gathered
    copy), or 'none'."""
    dist_timeout: float = 300.0
    """Seconds a process waits on the others before it fails with an error saying a peer died or hangs."""

    def __post_init__(self) -> None:
        if self.parallel not in distributed.MODES:
            raise LmlabError(f"train.parallel must be one of {', '.join(distributed.MODES)}, got {self.parallel!r}")
        for key in ("steps", "batch_size", "log_interval"):
            if getattr(self, key) < 1:
                raise LmlabError(f"train.{key} must be >= 1, got {getattr(self, key)}")
        if not self.lr > 0 or not 0 <= self.min_lr <= self.lr:
            raise LmlabError(f"train.lr must be positive and train.min_lr in [0, lr], got {self.lr}, {self.min_lr}")
        for key in ("warmup_steps", "weight_decay", "grad_clip", "eval_interval"):
            if getattr(self, key) < 0:
                raise LmlabError(f"train.{key} must be >= 0, got {getattr(self, key)}")


def require_causal(cfg: Any, path: str | Path, what: str = "post-training") -> None:
    """Refuse a masked (bidirectional) LM where `what` samples or trains replies left to right: it would run,
    but every token it wrote would come from a model that never learnt to predict the next one."""
    if not cfg.causal:
        raise LmlabError(f"{path} is a masked (bidirectional) LM; {what} needs a causal model")


def load_policy(path: str | Path, device: torch.device) -> tuple[Transformer, ckpt_io.Checkpoint]:
    """The model a stage starts from (any lmlab checkpoint, pretrained, imported or post-trained)."""
    ck = ckpt_io.load_checkpoint(path)
    require_causal(ck.config, path)
    if ck.tokenizer_path is None:
        raise LmlabError(f"{path} has no tokenizer.json; post-training needs the model's tokenizer")
    return ckpt_io.build_model(ck, device), ck


def tokenizer_of(ck: ckpt_io.Checkpoint):
    """The checkpoint's tokenizer and the id to pad batches with."""
    tok = Tokenizer.load(ck.tokenizer_path)
    return tok, tok.pad_id if tok.pad_id is not None else 0


def add_chat_tokens(model: Transformer, tok, out: Path):
    """Give a model whose tokenizer lacks lmlab's chat markers (e.g. one imported from Hugging Face) those
    tokens, growing its embedding if needed; returns the tokenizer and the path of its saved tokenizer.json
    (None if nothing changed)."""
    tok, added = tok.with_tokens([*ROLES.values(), END_OF_TURN])
    if not added:
        return tok, None
    model.resize_vocab(max(model.cfg.vocab_size, tok.vocab_size))
    print(f"added the chat tokens {', '.join(added)} to the tokenizer (ids from {tok.vocab_size - len(added)}); "
          f"model vocabulary now {model.cfg.vocab_size}")
    return tok, tok.save(out / "tokenizer.json")


def shuffled_batches(n: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """Endless batches of indices into n examples: every example once per pass, each pass reshuffled."""
    rng = random.Random(seed)
    order: list[int] = []
    while True:
        if len(order) < batch_size:
            more = list(range(n))
            rng.shuffle(more)
            order += more
        yield order[:batch_size]
        del order[:batch_size]


def stage_output(cfg: Any, verb: str) -> Path:
    """The stage's run directory, its checkpoint's place checked now, before any work (never the init's own)."""
    out = Path(cfg.out)
    ckpt_io.check_target(out / "checkpoint", [cfg.init], verb)
    return out


class Optimizer:
    """AdamW over a model's parameters through lmlab's precision modes, with warmup + cosine decay."""

    def __init__(self, model: torch.nn.Module, tc: PostTrainConfig, device: torch.device) -> None:
        self.tc, self.step = tc, 0
        sharded = distributed.is_sharded(model)
        self.prec = Precision(model, distributed.fsdp_precision(tc.precision, device) if sharded else tc.precision,
                              device)
        named = list(zip([n for n, p in model.named_parameters() if p.requires_grad], self.prec.master))
        self.opt = make_adamw(param_groups(named, tc.weight_decay, False), tc.lr, (0.9, 0.95), 1e-8, device)

    def autocast(self):
        return self.prec.autocast()

    def apply(self) -> tuple[float, float]:
        """After loss.backward(): clip, step, zero; returns (lr used, grad norm before clipping)."""
        tc = self.tc
        lr = lr_at(self.step, tc.lr, tc.min_lr, tc.warmup_steps, tc.steps)
        self.prec.grads_to_master()
        norm = self.prec.step(self.opt, tc.grad_clip, lr)
        self.step += 1
        return lr, norm

    def weights(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """fp32 weights for a checkpoint (the masters under bf16-master). A sharded model's are gathered: every
        process must call this, and rank 0 alone gets them."""
        if distributed.is_sharded(model):
            return distributed.full_weights(model)
        out = {n: t.detach().float().cpu().contiguous() for n, t in self.prec.named_master()}
        out.update({k: v for k, v in ckpt_io.model_state(model).items() if k not in out})
        return out


def setup(tc: PostTrainConfig) -> torch.device:
    if tc.threads:
        torch.set_num_threads(tc.threads)
    torch.manual_seed(tc.seed)
    return pick_device(tc.device)


@contextlib.contextmanager
def stage_processes(tc: PostTrainConfig, split_batch: bool = True
                    ) -> Iterator[tuple[distributed.Ranks, torch.device]]:
    """The stage's place under torchrun and its device (set up as `setup` does); the group is closed after.
    `split_batch`: each step splits train.batch_size examples over the processes (rl splits its prompts, and
    checks them itself)."""
    ranks, device = stage_ranks(tc, setup(tc), split_batch)
    try:
        yield ranks, device
    except BaseException:
        ranks.close(clean=False)
        raise
    ranks.close()


def stage_ranks(tc: PostTrainConfig, device: torch.device, split_batch: bool = True
                ) -> tuple[distributed.Ranks, torch.device]:
    """This process's place under torchrun (alone: rank 0 of 1) and the device it trains on."""
    ranks = distributed.setup(tc.parallel, device, tc.dist_timeout)
    if split_batch and tc.batch_size < ranks.world:
        raise LmlabError(f"train.batch_size={tc.batch_size} is smaller than the {ranks.world} processes: each "
                         f"needs at least one example per step")
    return ranks, distributed.device_for(ranks, device)


def shared_means(metrics: dict[str, float], count: int, total: float, ranks: distributed.Ranks) -> dict[str, float]:
    """Per-process means over `count` examples made means over all `total` (what one process would log)."""
    if not ranks.active:
        return metrics
    return {k: ranks.sum(v * count, "averaging metrics") / total for k, v in metrics.items()}


def token_weight(count: int, ranks: distributed.Ranks) -> tuple[float, float]:
    """(weight of this process's mean loss, the tokens of all processes) for a loss that is a mean over
    tokens: weighted so, the gradient averaged over the processes is the mean over all of them."""
    total = ranks.sum(count, "counting the step's tokens")
    return (ranks.world * count / total if total else 0.0), total


class Log(MetricsLog):
    """A stage's metrics.jsonl, written afresh; its last line says which implementation each op took, how
    often and why (`ops`)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        autotune.reset()

    def close(self) -> None:
        if not self.f.closed:
            self.write({"ops": autotune.calls()})
        super().close()


def stage_loop(model: torch.nn.Module, tc: PostTrainConfig, device: torch.device, out: Path,
               n_examples: int, ranks: distributed.Ranks) -> tuple[Optimizer, Log | NullLog, Iterator[list[int]]]:
    """What a stage's training loop runs on: the optimizer (over the model sharded first, under FSDP), the
    metrics log (rank 0's alone under torchrun), the endless shuffled batches."""
    if tc.parallel == "fsdp":
        distributed.shard(model, ranks)
    return (Optimizer(model, tc, device), Log(out / "metrics.jsonl") if ranks.main else NullLog(),
            shuffled_batches(n_examples, tc.batch_size, tc.seed + 1))


def final_weights(model: torch.nn.Module, opt: Optimizer, ranks: distributed.Ranks) -> dict[str, torch.Tensor]:
    """The trained weights rank 0 writes (gathered from every process under FSDP; other ranks get {})."""
    return opt.weights(model) if ranks.main or distributed.is_sharded(model) else {}


def whole_model(model: torch.nn.Module, weights: dict[str, torch.Tensor], build: Callable[[dict], torch.nn.Module],
                device: torch.device) -> torch.nn.Module:
    """What rank 0 evaluates: the model itself, or under FSDP a plain copy that `build` makes from the gathered
    `weights` (generation and evaluation then need no other process)."""
    if not distributed.is_sharded(model):
        return model
    return build(weights).to(device).eval()


def model_for_rank0(model: torch.nn.Module, opt: Optimizer, ranks: distributed.Ranks,
                    build: Callable[[dict], torch.nn.Module], device: torch.device) -> torch.nn.Module | None:
    """Mid-training, the model rank 0 evaluates (`whole_model`); every process must call this under FSDP, where
    it gathers the weights. Other ranks get None."""
    weights = opt.weights(model) if distributed.is_sharded(model) else {}
    return whole_model(model, weights, build, device) if ranks.main else None


def policy_from(cfg: Any) -> Callable[[dict], Transformer]:
    """`whole_model`'s builder for a plain policy of config `cfg`."""
    return lambda weights: ckpt_io.model_from_state(cfg, weights, "the gathered weights")
