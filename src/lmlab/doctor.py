"""`lmlab doctor`: what this machine is, which native paths lmlab built, and which it chose.

A speed figure means little without the machine behind it, and lmlab's fused kernels run only where they
were measured faster than PyTorch's ops on the CPU at hand. This verb gathers both: the CPU (model and
the instruction-set flags that matter), threads, the C compiler, the torch build, whether each native
library built (and for which target), the measured matmul peaks (bf16 only on a CPU with bf16 units),
and the choice between the fused kernels and PyTorch's ops at a reference model's training shapes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from lmlab import cbuild
from lmlab.infer import native as native_decode
from lmlab.model import autotune, cpu_kernels
from lmlab.model.config import ModelConfig
from lmlab.model.transformer import Transformer
from lmlab.train.hardware import cached_peak, cpu_has_fast_bf16
from lmlab.train.objectives import causal_lm_loss
from lmlab.train.optim import make_adamw, param_groups
from lmlab.train.precision import Precision


@dataclass
class DoctorConfig:
    measure: bool = True
    """Measure the kernel choices at the reference shapes (nanoGPT's CPU Shakespeare model: 4 layers, width
    128, batch 12 x 64 tokens; fp32, and bf16 where the CPU has bf16 units). Cached per CPU: fast after once."""
    peaks: bool = True
    """Show the fp32 (and, with bf16 units, bf16) matmul peaks that MFU divides by: measured once per machine
    (a few seconds), then read from $LMLAB_CACHE/native/peaks-<cpu>.json."""
    remeasure_peaks: bool = False
    """Measure the peaks afresh and replace the cached ones (after a hardware or power-setting change)."""
    threads: int | None = None
    """Torch threads (None = torch's default)."""


def _torch_build() -> dict[str, Any]:
    return {"version": torch.__version__, "cpu_capability": autotune.torch_capability(),
            "threads": torch.get_num_threads(),
            "openmp": torch.backends.openmp.is_available(), "mkldnn": torch.backends.mkldnn.is_available(),
            "cuda": torch.cuda.is_available()}


def _reference_step(dtype: torch.dtype) -> None:
    """One training step of the reference model: the op calls that trigger (or read) the measurements."""
    cfg = ModelConfig(d_model=128, n_layers=4, n_heads=4, max_seq_len=64, vocab_size=65, bias=False)
    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        model = Transformer(cfg)
    prec = Precision(model, "fp32" if dtype == torch.float32 else "bf16-master", torch.device("cpu"))
    named = list(zip([n for n, _ in model.named_parameters()], prec.master))
    opt = make_adamw(param_groups(named, 0.1, True), 1e-3, (0.9, 0.99), 1e-8, torch.device("cpu"))
    x = torch.randint(65, (12, 64), generator=g)
    causal_lm_loss(model, x, x).backward()
    prec.grads_to_master()
    prec.step(opt, 1.0)


def _peaks(fast_bf16: bool, remeasure: bool) -> dict[str, Any]:
    """The matmul peaks training divides by for MFU: the cached ones (what a run on this machine uses), and
    where and when they were measured."""
    cpu = torch.device("cpu")
    got = {"fp32": cached_peak(torch.float32, cpu, remeasure=remeasure)}
    if fast_bf16:
        got["bf16"] = cached_peak(torch.bfloat16, cpu, remeasure=remeasure)
    return {"peaks_gflops": {"fp32": round(got["fp32"]["flops"] / 1e9, 1),
                             "bf16": round(got["bf16"]["flops"] / 1e9, 1) if fast_bf16 else None},
            "peaks_cache": {"file": got["fp32"]["cache"],
                            **{k: {"key": v["key"], "measured_at": v.get("measured_at")} for k, v in got.items()}}}


def doctor(cfg: DoctorConfig) -> dict[str, Any]:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    fast_bf16 = cpu_has_fast_bf16()
    out: dict[str, Any] = {
        "cpu": {**cbuild.cpu_info(), "key": cbuild.cpu_key(), "bf16_units": fast_bf16},
        "compiler": {"path": cbuild.compiler(), "version": cbuild.compiler_version()},
        "torch": _torch_build(),
        "native": {"mode": autotune.mode(), "LMLAB_NATIVE": os.environ.get("LMLAB_NATIVE"),
                   "kernels": cpu_kernels.build_info(),
                   "decode_step": {"built": native_decode.load() is not None, "error": native_decode.load_error()}},
    }
    if cfg.peaks:
        out.update(_peaks(fast_bf16, cfg.remeasure_peaks))
    if cfg.measure:
        autotune.reset()
        for dtype in (torch.float32, torch.bfloat16) if fast_bf16 else (torch.float32,):
            _reference_step(dtype)
        out["choices"] = autotune.measured()
        out["calls"] = autotune.calls()
    return out
