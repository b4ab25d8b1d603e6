"""Measure what `lmlab size` predicts, on a real model: memory of a training step and of a prefill, and
forward FLOPs. The checks behind `benchmarks/size_vs_measured.py` and the tests.

Memory on CPU comes from PyTorch's profiler, which records every allocation and free of the CPU
allocator: replaying them in order gives the bytes alive at each moment and so the peak. Tensors that
exist before (weights, optimizer states, KV cache) are counted from their storages. On CUDA,
`torch.cuda.max_memory_allocated` gives the same peak directly. Both count tensor bytes, not the
allocator's cached-but-free blocks or the process's code and libraries. Measure in a fresh process (as
the benchmark does): late in a long pytest session the profiler was seen to record almost none of a
step's allocations, so the tests run their measurements in a subprocess.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from lmlab.model.kv_cache import KVCache
from lmlab.model.transformer import Transformer
from lmlab.train.optim import make_adamw


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind `tensors` (a tied weight counted once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        if torch.is_tensor(t):
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
    return sum(seen.values())


def peak_extra_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """The most bytes `fn` has allocated at any moment beyond what was allocated when it started."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        live += e.nbytes()
        peak = max(peak, live)
    return peak


def training_step_peak(model: Transformer, batch: int, context: int, steps: int = 2) -> dict[str, int]:
    """Peak bytes of a training step (causal LM loss, backward, fused AdamW, grads set to None), measured on
    the last of `steps` steps, when the optimizer states exist: persistent tensors + the step's own peak."""
    device = next(model.parameters()).device
    opt = make_adamw([{"params": list(model.parameters())}], 1e-4, (0.9, 0.99), 1e-8, device)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, model.cfg.vocab_size, (batch, context), generator=g).to(device)

    def step() -> None:
        logits = model(x)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), x.view(-1))
        del logits
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    model.train()
    for _ in range(steps - 1):
        step()
    states = [t for st in opt.state.values() for t in st.values()]
    static = storage_bytes([*model.parameters(), *model.buffers(), *states])
    extra = peak_extra_bytes(step, device)
    return {"static_bytes": static, "step_extra_bytes": extra, "peak_bytes": static + extra}


def prefill_memory(model: Transformer, batch: int, context: int) -> dict[str, int]:
    """A prefill of batch x context tokens into a KV cache of `context` positions, as the engine runs it
    (no gradients; logits of the last position only): the resident bytes (weights, buffers and cache) and
    the peak while the prefill runs."""
    device = next(model.parameters()).device
    model.eval()
    cache = KVCache.for_model(model.cfg, batch, context, dtype=next(model.parameters()).dtype, device=device) \
        if model.cfg.causal else None
    x = torch.randint(0, model.cfg.vocab_size, (batch, context), generator=torch.Generator().manual_seed(0)).to(device)

    def prefill() -> None:
        with torch.no_grad():
            hidden = model(x, cache=cache, return_hidden=True)
            model.logits(hidden[:, -1] if model.cfg.causal else hidden).float()

    resident = storage_bytes([*model.parameters(), *model.buffers()] + ([cache.k, cache.v] if cache else []))
    weights = storage_bytes(model.parameters())
    extra = peak_extra_bytes(prefill, device)
    return {"weights_bytes": weights, "resident_bytes": resident, "prefill_extra_bytes": extra,
            "peak_bytes": resident + extra}


def forward_flops(model: Transformer, context: int) -> int:
    """FLOPs of one forward pass over `context` tokens counted by `torch.utils.flop_counter` (attention through
    SDPA's math backend, which the counter sees as plain matmuls)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    x = torch.randint(0, model.cfg.vocab_size, (1, context), generator=torch.Generator().manual_seed(0)).to(device)
    model.eval()
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops()
