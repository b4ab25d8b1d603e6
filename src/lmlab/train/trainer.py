"""`lmlab pretrain`: the training loop, from prepared token shards to a checkpoint.

One loop serves every objective: a step is `loss(model, batch)` under the
chosen precision, gradient accumulation, clipping, AdamW, and the schedule.
Everything that decides the next step (weights, optimizer moments, step
number, RNG) is in the checkpoint and the data samplers are pure functions of
the step, so a run killed at any moment resumes to the same final loss.
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lmlab.config import to_dict
from lmlab.data.shards import EpochSampler, RandomWindowSampler, TokenData
from lmlab.data.tokenizer import Tokenizer
from lmlab.device import pick_device
from lmlab.errors import LmlabError
from lmlab.io import confined, recover_dir
from lmlab.model import autotune
from lmlab.model import checkpoint as ckpt_io
from lmlab.model.config import ModelConfig
from lmlab.model.transformer import Transformer
from lmlab.plan.flops import train_flops_per_token
from lmlab.rundir import PRETRAIN_OUT, locked_run
from lmlab.summary import update_summary
from lmlab.train import distributed
from lmlab.train.hardware import matmul_peak, tune_cpu_allocator
from lmlab.train.metrics import MetricsLog, NullLog, plot_loss
from lmlab.train.objectives import MaskingConfig, causal_lm_loss, corrupt, masked_lm_loss
from lmlab.train.optim import lr_at, make_adamw, param_groups
from lmlab.train.precision import MODES, Precision


@dataclass
class TrainConfig:
    steps: int = 2000
    """Optimizer steps to train for."""
    batch_size: int = 12
    """Sequences per micro-batch."""
    block_size: int | None = None
    """Tokens per sequence (None = model.max_seq_len)."""
    grad_accum: int = 1
    """Micro-batches accumulated into one optimizer step."""
    lr: float = 1e-3
    """Peak learning rate."""
    min_lr: float = 1e-4
    """Learning rate at the end of the cosine decay."""
    warmup_steps: int = 100
    """Linear warmup steps."""
    decay_steps: int | None = None
    """Step at which the cosine reaches min_lr (None = steps)."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay on weight matrices (never norms or biases)."""
    decay_embeddings: bool = True
    """Also decay the embedding tables."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.99
    """AdamW beta2."""
    eps: float = 1e-8
    """AdamW epsilon."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 = no clipping)."""
    moe_aux_weight: float = 0.01
    """Weight of the mixture-of-experts load-balancing loss added to the objective (Switch Transformer: 0.01;
    0 = none); unused by dense models. The logged loss is the objective alone."""
    precision: str = "auto"
    """'auto', 'fp32', 'bf16-autocast' (CUDA default) or 'bf16-master' (bf16 weights, fp32 master; CPU default
    when it has bf16 matrix units)."""
    compile: bool | None = None
    """Wrap the model in torch.compile; None: on CUDA (falling back to eager, with a warning, if the first step
    does not compile), off on CPUs (where lmlab's own kernels do the fusing)."""
    device: str = "auto"
    """'auto' (CUDA if available, else CPU), 'cpu', 'cuda', 'cuda:1', ..."""
    threads: int | None = None
    """CPU threads for torch (None = torch's default)."""
    seed: int = 1337
    """Seed for initialisation, data order and dropout."""
    deterministic: bool = False
    """Use only deterministic kernels (process-wide), so that a CUDA run and its resume after a kill are
    bitwise reproducible; some CUDA kernels (memory-efficient attention backward, index_add) are otherwise
    nondeterministic, and Adam amplifies their rounding noise. CPU runs are deterministic either way."""
    sampler: str = "random"
    """'random' windows (nanoGPT style) or 'epoch' (every window once per epoch, shuffled)."""
    eval_interval: int = 250
    """Evaluate every this many steps (and at the end); 0 = only at the end."""
    eval_batches: int = 20
    """Batches per evaluation (fixed windows, so evaluations are comparable)."""
    ckpt_interval: int = 500
    """Write a checkpoint every this many steps (and at the end); 0 = only at the end."""
    log_interval: int = 10
    """Write a metrics.jsonl line every this many steps."""
    peak_tflops: float | None = None
    """Hardware peak for MFU in TFLOP/s (None = measure a 1024^3 matmul in the compute dtype at start)."""
    progress: bool = True
    """Show a progress bar with ETA."""
    activation_checkpointing: bool = False
    """Recompute each transformer block in backward instead of keeping its activations: about a third more
    compute, a fraction of the memory (what `lmlab size --activation_checkpointing` plans)."""
    parallel: str = "none"
    """Data parallelism under torchrun: 'none' (one process), 'ddp' (DistributedDataParallel: a full copy per
    process) or 'fsdp' (FSDP2: weights, gradients and optimizer state sharded over the processes); gloo on CPUs,
    NCCL on GPUs. Each of K processes trains on batch_size/K rows of every micro-batch, so the global batch,
    and the run, do not depend on K."""
    dist_timeout: float = 300.0
    """Seconds a process waits on the others (a gradient all-reduce, a barrier) before it fails with an error
    saying a peer died or hangs."""

    def __post_init__(self) -> None:
        positive = ("steps", "batch_size", "grad_accum", "eval_batches", "log_interval")
        for name in positive:
            if getattr(self, name) < 1:
                raise LmlabError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or not math.isfinite(self.lr):
            raise LmlabError(f"train.lr must be a positive number, got {self.lr}")
        if self.min_lr < 0 or self.min_lr > self.lr:
            raise LmlabError(f"train.min_lr must be in [0, lr={self.lr}], got {self.min_lr}")
        for name in ("warmup_steps", "eval_interval", "ckpt_interval", "weight_decay", "grad_clip", "moe_aux_weight"):
            if getattr(self, name) < 0:
                raise LmlabError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise LmlabError(f"train.beta1/beta2 must be in [0, 1), got {self.beta1}, {self.beta2}")
        if self.precision not in MODES:
            raise LmlabError(f"train.precision must be one of {MODES}, got {self.precision!r}")
        if self.sampler not in ("random", "epoch"):
            raise LmlabError(f"train.sampler must be 'random' or 'epoch', got {self.sampler!r}")
        if self.block_size is not None and self.block_size < 1:
            raise LmlabError(f"train.block_size must be >= 1, got {self.block_size}")
        if self.parallel not in distributed.MODES:
            raise LmlabError(f"train.parallel must be one of {distributed.MODES}, got {self.parallel!r}")
        if not self.dist_timeout > 0:
            raise LmlabError(f"train.dist_timeout must be > 0 seconds, got {self.dist_timeout}")


@dataclass
class PretrainConfig:
    data: str = "runs/data"
    """Directory of token shards written by `lmlab prepare` (train.bin, val.bin, meta.json)."""
    tokenizer: str | None = None
    """tokenizer.json to store with the checkpoint (None = the one recorded in the shards' meta.json)."""
    out: str = PRETRAIN_OUT
    """Run directory: checkpoint/, metrics.jsonl, loss.png, summary.json."""
    objective: str = "causal"
    """'causal' (next-token prediction with teacher forcing, causal mask) or 'mlm' (masked-token prediction,
    bidirectional attention: the objective sets model.causal)."""
    mlm: MaskingConfig = field(default_factory=MaskingConfig)
    """How the masked objective corrupts its inputs (BERT's recipe by default)."""
    resume: bool = True
    """Continue from out/checkpoint if it exists (a finished run is not retrained); false starts afresh."""
    init: str | None = None
    """Start from this checkpoint's weights instead of a random initialisation (continued pretraining): the
    same architecture and vocabulary, while the objective may differ (a causal model trained on as a masked
    one: the same weights under the other mask and loss). Ignored when resuming."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The architecture (vocab_size is always taken from the tokenizer)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation, precision, evaluation and checkpointing."""

    def __post_init__(self) -> None:
        if self.objective not in ("causal", "mlm"):
            raise LmlabError(f"objective must be 'causal' or 'mlm', got {self.objective!r}")
        self.model.causal = self.objective == "causal"


def data_fingerprint(data_dir: str | Path) -> dict[str, Any]:
    """What a checkpoint was trained on: the tokenizer's hash and the size of each split.

    Resuming on other data would silently mix two runs, so a mismatch is an error.
    """
    meta = TokenData.read_meta(data_dir)
    return {"tokenizer_sha256": meta.get("tokenizer", {}).get("sha256"), "vocab_size": meta.get("vocab_size"),
            "tokens": {k: v.get("n_tokens") for k, v in sorted(meta.get("splits", {}).items())}}


def shards_tokenizer(data: str | Path, meta: dict[str, Any]) -> str | None:
    """The tokenizer copy that `prepare` keeps beside the shards, confined to their directory."""
    info = meta.get("tokenizer")
    name = info.get("copy", "tokenizer.json") if isinstance(info, dict) else "tokenizer.json"
    path = confined(data, name, str(Path(data) / "meta.json"))
    return str(path) if path.is_file() else None


def _note_schedule_change(saved: Any, tc: TrainConfig) -> None:
    """Warn when a resumed run's step count differs from the checkpoint's: the cosine is re-planned."""
    old = saved.get("steps") if isinstance(saved, dict) else None
    if isinstance(old, int) and old != tc.steps and tc.decay_steps is None:
        warnings.warn(f"train.steps is {tc.steps} but the checkpoint was planned for {old}: the learning-rate "
                      f"cosine now decays to step {tc.steps}, so the steps already taken followed another "
                      f"schedule (set train.decay_steps={old} to keep the old one)", stacklevel=3)


class Trainer:
    """Holds the model, optimizer and data for one run; `fit()` trains it."""

    def __init__(self, cfg: PretrainConfig) -> None:
        self.cfg, tc = cfg, cfg.train
        self.out = Path(cfg.out)
        self.ckpt_dir = self.out / "checkpoint"
        ckpt_io.check_target(self.ckpt_dir, [cfg.init] if cfg.init else [], "pretrain")
        if tc.threads:
            torch.set_num_threads(tc.threads)
        self.ranks = distributed.setup(tc.parallel, pick_device(tc.device), tc.dist_timeout)
        self.device = distributed.device_for(self.ranks, pick_device(tc.device))
        if tc.grad_accum % self.ranks.world and tc.batch_size % self.ranks.world:
            raise LmlabError(f"train.grad_accum={tc.grad_accum} or train.batch_size={tc.batch_size} must be "
                             f"divisible by the {self.ranks.world} processes: each trains on an equal share of "
                             f"every step's micro-batches, or of every micro-batch's rows")
        if tc.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what cuBLAS needs to be deterministic
            torch.use_deterministic_algorithms(True)  # an op without a deterministic kernel is an error
        if self.device.type == "cpu":
            tune_cpu_allocator()
        self.train_data = TokenData.open(cfg.data, "train")
        self.val_data = TokenData.open(cfg.data, "val")
        TokenData.check_ids(cfg.data, {"train": self.train_data, "val": self.val_data})  # before any step
        meta = TokenData.read_meta(cfg.data)
        self.tokenizer = cfg.tokenizer or shards_tokenizer(cfg.data, meta)
        if self.tokenizer and not Path(self.tokenizer).is_file():
            raise LmlabError(f"tokenizer file not found: {self.tokenizer} (set tokenizer=PATH)")
        mc = ModelConfig(**{**to_dict(cfg.model), "vocab_size": int(meta["vocab_size"]),
                            "causal": cfg.objective == "causal"})
        if cfg.objective == "mlm":
            self._init_masking()
        self.block = tc.block_size or mc.max_seq_len
        if self.block > mc.max_seq_len:
            raise LmlabError(f"train.block_size={self.block} exceeds model.max_seq_len={mc.max_seq_len}")
        Sampler = RandomWindowSampler if tc.sampler == "random" else EpochSampler
        self.sampler = Sampler(self.train_data, self.block, tc.batch_size, tc.seed)
        self.eval_samplers = {
            "val": RandomWindowSampler(self.val_data, self.block, tc.batch_size, tc.seed + 1),
            "train": RandomWindowSampler(self.train_data, self.block, tc.batch_size, tc.seed + 2),
        }
        self.step, self.state_extra = 0, {}
        self.fingerprint = data_fingerprint(cfg.data)
        resume_from = self._resume_checkpoint(mc)
        torch.manual_seed(tc.seed)
        self.model = Transformer(mc) if resume_from is None else ckpt_io.build_model(resume_from)
        if resume_from is None and cfg.init:
            self._init_from(cfg.init, mc)
        self.model.to(self.device)
        self.model.checkpoint_blocks = tc.activation_checkpointing
        self.model_cfg = mc
        precision = tc.precision
        if tc.parallel == "fsdp":
            precision = distributed.fsdp_precision(precision, self.device)
            distributed.shard(self.model, self.ranks)  # before the optimizer: it must hold the shards
        self.prec = Precision(self.model, precision, self.device)
        named = list(zip([n for n, _ in self.model.named_parameters()], self.prec.master))
        groups = param_groups(named, tc.weight_decay, tc.decay_embeddings, mc.width_mult)
        self.opt = make_adamw(groups, tc.lr, (tc.beta1, tc.beta2), tc.eps, self.device)
        if resume_from is not None:
            st = resume_from.trainer_state
            if distributed.is_sharded(self.model):
                distributed.load_optimizer(self.model, self.opt, st["optimizer"])
            else:
                self.opt.load_state_dict(st["optimizer"])
            self.step = int(st["step"])
            self.state_extra = {k: st[k] for k in ("tokens", "wall_s", "evals") if k in st}
            torch.set_rng_state(st["rng_cpu"])
            if self.device.type == "cuda" and "rng_cuda" in st:
                torch.cuda.set_rng_state(st["rng_cuda"])
        self.wrapped = distributed.wrap(self.model, self.ranks, self.device)
        self.compiled = tc.compile if tc.compile is not None else self.device.type == "cuda"
        self.fwd = torch.compile(self.wrapped) if self.compiled else self.wrapped
        self.first_step = self.step
        self.last_aux = 0.0  # the mixture-of-experts load-balancing loss of the last step
        self.tokens_per_step = tc.batch_size * tc.grad_accum * self.block
        self.flops_per_token = train_flops_per_token(mc, self.block)
        self.decay_steps = tc.decay_steps or tc.steps

    @property
    def eval_fwd(self):
        """What evaluates: under torchrun the model itself, as evaluation needs no gradient all-reduce."""
        return self.model if self.ranks.active else self.fwd

    def _init_masking(self) -> None:
        if not self.tokenizer:
            raise LmlabError("objective=mlm needs the tokenizer (for its mask token); set tokenizer=PATH")
        tok = Tokenizer.load(self.tokenizer)
        if tok.mask_id is None:
            raise LmlabError(f"objective=mlm needs a mask token, and {self.tokenizer} has none "
                             "(lmlab tokenizers have <|mask|>; BERT's have [MASK])")
        self.mask_id = tok.mask_id
        self.protected = torch.tensor(sorted(set(tok.special_ids.values())), dtype=torch.long)

    def loss(self, x: torch.Tensor, y: torch.Tensor, seed: int, rows: slice = slice(None), fwd=None) -> torch.Tensor:
        """The objective's loss on `rows` of one batch; `seed` fixes the masked objective's corruption (drawn
        for the whole batch, so a row is masked alike whatever process trains on it)."""
        fwd = self.fwd if fwd is None else fwd  # not `or`: a compiled module has no truth value
        if self.cfg.objective == "causal":
            return causal_lm_loss(fwd, self._to_device(x[rows]), self._to_device(y[rows]))
        inputs, labels = corrupt(x, self.cfg.mlm, self.mask_id, self.model_cfg.vocab_size, seed, self.protected)
        return masked_lm_loss(fwd, self._to_device(inputs[rows]), self._to_device(labels[rows]))

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        """On a GPU, copy from pinned memory without waiting: the copy overlaps the work already queued."""
        if self.device.type != "cuda":
            return t
        return t.pin_memory().to(self.device, non_blocking=True)

    def _resume_checkpoint(self, mc: ModelConfig) -> ckpt_io.Checkpoint | None:
        if self.ranks.main:
            recover_dir(self.ckpt_dir)  # a kill between a save's two renames left the checkpoint aside
        self.ranks.barrier("waiting for rank 0 to recover the checkpoint directory")
        if not self.cfg.resume or not (self.ckpt_dir / "meta.json").exists():
            return None
        ck = ckpt_io.load_checkpoint(self.ckpt_dir, with_trainer_state=True)
        _note_schedule_change(ck.meta.get("train_config", {}), self.cfg.train)
        saved = ck.meta.get("data_fingerprint")
        if saved is not None and saved != self.fingerprint:
            raise LmlabError(f"{self.ckpt_dir} was trained on different data or a different tokenizer than "
                             f"{self.cfg.data}; use a new out directory or --set resume=false to start afresh")
        if ck.config.to_dict() != mc.to_dict():
            raise LmlabError(f"{self.ckpt_dir} holds a different model config; use a new out directory "
                             f"or --set resume=false to start afresh")
        return ck

    def evaluate(self) -> dict[str, float]:
        """Mean loss on fixed windows of val and train data.

        The eval batches are stacked into larger forward passes (same windows, same
        mean), which is several times faster on CPU than one small batch at a time.
        Under torchrun each process takes its rows of every group, as in training.
        """
        self.model.eval()
        out = {}
        n, group = self.cfg.train.eval_batches, 8
        with torch.no_grad(), self.prec.autocast():
            for k, (split, sampler) in enumerate(self.eval_samplers.items()):
                total = 0.0
                for start in range(0, n, group):
                    batches = [sampler.batch(i) for i in range(start, min(start + group, n))]
                    x = torch.cat([b[0] for b in batches])
                    y = torch.cat([b[1] for b in batches])
                    seed = (self.cfg.train.seed + 10 + k) * 1_000_003 + start  # the same masks at every eval
                    rows = self.ranks.rows(len(x))
                    total += self.loss(x, y, seed, rows, fwd=self.eval_fwd).item() * len(batches)
                out[f"{split}_loss"] = self.ranks.mean(total, "evaluation") / n
        self.model.train()
        return out

    def train_step(self) -> tuple[float, float]:
        """One optimizer step (with accumulation); returns (loss, grad norm before clipping)."""
        tc = self.cfg.train
        total, self.last_aux = 0.0, 0.0
        micros, rows, weight = self.ranks.share(tc.grad_accum, tc.batch_size)
        for k, micro in enumerate(micros):
            index = self.step * tc.grad_accum + micro
            x, y = self.sampler.batch(index)
            with self.ranks.no_sync(self.wrapped, k == len(micros) - 1):
                with self.prec.autocast():
                    loss = self.loss(x, y, tc.seed * 1_000_003 + index, rows) * weight
                objective = loss
                aux = self.model.moe_aux_loss() if self.model_cfg.moe else None
                if aux is not None:
                    self.last_aux += aux.item() / tc.grad_accum
                    loss = loss + tc.moe_aux_weight * aux * weight
                loss.backward()
            self.prec.grads_to_master()
            total += objective.item()
        # Each process's weight makes the average over processes (DDP, FSDP) the one-process gradient.
        total = self.ranks.mean(total, "averaging the step's loss")
        lr = lr_at(self.step, tc.lr, tc.min_lr, tc.warmup_steps, self.decay_steps)
        norm = self.prec.step(self.opt, tc.grad_clip, lr)
        self.step += 1
        return total, norm

    def moe_stats(self) -> dict[str, float]:
        """The load-balancing loss of the last step, and the busiest expert's share of the routing slots in
        the last forward pass (averaged over layers) next to the uniform share 1/n_experts it should approach."""
        loads = torch.stack([b.mlp.load.float() for b in self.model.blocks])
        busiest = (loads.max(dim=1).values / loads.sum(dim=1)).mean().item()
        return {"moe_aux_loss": self.last_aux, "moe_max_expert_share": busiest,
                "moe_uniform_share": 1 / self.model_cfg.n_experts}

    def save(self, evals: list[dict[str, Any]], tokens: int, wall: float) -> None:
        """Rank 0 writes the checkpoint; under FSDP every process calls this, to gather the full state."""
        if distributed.is_sharded(self.model):
            weights, opt_state = distributed.full_state(self.model, self.opt)
            if not self.ranks.main:
                return
        else:
            weights = {n: t.detach().float().cpu().contiguous() for n, t in self.prec.named_master()}
            weights.update({k: v for k, v in ckpt_io.model_state(self.model).items() if k not in weights})
            opt_state = self.opt.state_dict()
        state = {"step": self.step, "optimizer": opt_state, "rng_cpu": torch.get_rng_state(),
                 "tokens": tokens, "wall_s": wall, "evals": evals}
        if self.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state()
        meta = {"step": self.step, "stage": "pretrain", "objective": self.cfg.objective,
                "train_config": to_dict(self.cfg.train), "data": self.cfg.data,
                "data_fingerprint": self.fingerprint}
        ckpt_io.save_checkpoint(self.ckpt_dir, weights, self.model_cfg, self.tokenizer, state, meta, verb="pretrain")

    def _init_from(self, path: str, mc: ModelConfig) -> None:
        init = ckpt_io.load_checkpoint(path)
        theirs, ours = to_dict(init.config), to_dict(mc)
        differ = sorted(k for k in ours if k != "causal" and theirs.get(k) != ours[k])
        if differ:
            raise LmlabError(f"init={path}: its model differs from this run's in {', '.join(differ)} "
                             f"({', '.join(f'{k}={theirs.get(k)!r} vs {ours[k]!r}' for k in differ[:3])})")
        with torch.no_grad():
            for name, p in ckpt_io.build_model(init).state_dict().items():
                self.model.state_dict()[name].copy_(p)

    def fit(self) -> dict[str, Any]:
        """Train to `train.steps`, logging, evaluating and checkpointing; return the summary."""
        tc = self.cfg.train
        evals: list[dict[str, Any]] = list(self.state_extra.get("evals", []))
        tokens = int(self.state_extra.get("tokens", 0))
        wall_before = float(self.state_extra.get("wall_s", 0.0))
        main = self.ranks.main  # only rank 0 writes: the log, the progress bar, checkpoints, the summary
        log = MetricsLog(self.out / "metrics.jsonl", self.step) if main else NullLog()
        autotune.reset()  # count this run's op paths alone
        peak = (tc.peak_tflops * 1e12 if tc.peak_tflops
                else matmul_peak(self.prec.compute_dtype, self.device))
        peak = peak * self.ranks.world if peak else peak  # the peak of all the processes' devices
        params = self.model.count_params()
        bar = None
        if tc.progress and self.step < tc.steps and main:
            from tqdm import tqdm
            bar = tqdm(total=tc.steps, initial=self.step, desc="pretrain", unit="step",
                       dynamic_ncols=True, file=sys.stderr, mininterval=0.5)
        start, window_t, window_tokens = time.perf_counter(), time.perf_counter(), 0
        resumed = self.step
        try:
            while self.step < tc.steps:
                loss, gnorm = self._step_or_explain()
                if not math.isfinite(loss):
                    raise LmlabError(f"loss became {loss} at step {self.step}; lower train.lr "
                                     f"(now {tc.lr}) or check the data")
                tokens += self.tokens_per_step
                window_tokens += self.tokens_per_step
                last = self.step == tc.steps
                if self.step % tc.log_interval == 0 or last:
                    now = time.perf_counter()
                    tps = window_tokens / max(now - window_t, 1e-9)
                    row = {"step": self.step, "loss": loss, "lr": self.opt.param_groups[0]["lr"],
                           "grad_norm": gnorm, "tokens": tokens, "tokens_per_s": tps,
                           "mfu": tps * self.flops_per_token / peak if peak else None,
                           "elapsed_s": wall_before + now - start}
                    if self.model_cfg.moe:
                        row.update(self.moe_stats())
                    log.write(row)
                    window_t, window_tokens = now, 0
                    if bar is not None:
                        bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tps:,.0f}")
                if (tc.eval_interval and self.step % tc.eval_interval == 0) or last:
                    t_eval = time.perf_counter()
                    ev = {"step": self.step, **self.evaluate()}
                    evals.append(ev)
                    log.write({**ev, "eval": True, "elapsed_s": wall_before + time.perf_counter() - start})
                    window_t += time.perf_counter() - t_eval  # keep eval time out of tokens/s
                if (tc.ckpt_interval and self.step % tc.ckpt_interval == 0) or last:
                    if main or distributed.is_sharded(self.model):
                        self.save(evals, tokens, wall_before + time.perf_counter() - start)
                    self.ranks.barrier(f"waiting for rank 0 to write the step-{self.step} checkpoint")
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
            log.close()
        wall = wall_before + time.perf_counter() - start
        if not evals:
            evals.append({"step": self.step, **self.evaluate()})
        trained = self.step - resumed
        summary = {
            "val_loss": evals[-1]["val_loss"], "train_loss": evals[-1]["train_loss"],
            "steps": self.step, "train_tokens": tokens, "wall_s": round(wall, 3),
            "tokens_per_s": round(tokens / wall, 1) if wall > 0 else None,
            "params": params["total"], "params_non_embedding": params["non_embedding"],
            "params_active": params["active"],
            "objective": self.cfg.objective, "precision": self.prec.mode, "device": str(self.device),
            "train_flops": self.flops_per_token * tokens, "peak_flops": peak,
            "mfu": (self.flops_per_token * tokens / wall / peak) if wall > 0 and peak else None,
            "ops": autotune.calls(), "ops_measured": autotune.measured(),
            "resumed_from_step": resumed if resumed else None, "steps_this_run": trained,
            "parallel": tc.parallel if self.ranks.active else "none", "processes": self.ranks.world,
        }
        if self.model_cfg.moe and self.model.blocks[0].mlp.load is not None:
            summary.update(self.moe_stats())
        if main:
            update_summary(self.out / "summary.json", "pretrain", summary)
        return summary

    def _step_or_explain(self) -> tuple[float, float]:
        """`train_step`, where a collective that failed inside backward (a peer died) is named as such, and a
        model that torch.compile, switched on by default, cannot compile trains eagerly instead."""
        if self.compiled and self.cfg.train.compile is None and self.step == self.first_step:
            try:
                return self._step_in_group()
            except Exception as e:  # noqa: BLE001 -- any compiler failure: no triton, no C compiler, an op
                warnings.warn(f"torch.compile failed on the first step ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); training without it "
                              "(set train.compile=false to skip the attempt)", stacklevel=2)
                self.prec.zero_grad()
                self.fwd, self.compiled = self.wrapped, False
        return self._step_in_group()

    def _step_in_group(self) -> tuple[float, float]:
        if not self.ranks.active:
            return self.train_step()
        return distributed.collective(self.ranks, f"step {self.step + 1}'s gradient all-reduce", self.train_step)


@locked_run
def pretrain(cfg: PretrainConfig) -> dict[str, Any]:
    """Train (or resume) and plot the loss curve; returns the `pretrain` summary."""
    trainer = Trainer(cfg)
    try:
        summary = trainer.fit()
    except BaseException:
        trainer.ranks.close(clean=False)
        raise
    trainer.ranks.close()
    if trainer.ranks.main:
        plot_loss(Path(cfg.out) / "metrics.jsonl", Path(cfg.out) / "loss.png")
    return summary
