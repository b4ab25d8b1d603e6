"""The CUDA paths: training precisions, exact resume, the engine and checkpoints across devices.

Skipped on machines without a GPU (CI has none); run on a GPU machine with
`benchmarks/gpu_check.sh`, which also runs the rest of the suite there.
"""

from __future__ import annotations

import pytest
import torch

from lmlab.config import from_dict
from lmlab.train.trainer import PretrainConfig, pretrain

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def cfg(data, out, **train) -> PretrainConfig:
    t = dict(steps=40, batch_size=8, block_size=32, lr=3e-3, min_lr=3e-4, warmup_steps=5, eval_interval=20,
             eval_batches=2, ckpt_interval=20, log_interval=5, precision="fp32", progress=False, device="cuda")
    t.update(train)
    return from_dict(PretrainConfig, {"data": str(data), "out": str(out),
                                      "model": {"d_model": 64, "n_layers": 2, "n_heads": 2, "max_seq_len": 32},
                                      "train": t})


def test_auto_precision_on_cuda_is_bf16_autocast_and_tracks_fp32(tiny_data, tmp_path):
    a = pretrain(cfg(tiny_data, tmp_path / "fp32", steps=80))
    b = pretrain(cfg(tiny_data, tmp_path / "auto", steps=80, precision="auto"))
    assert b["precision"] == "bf16-autocast"
    assert b["val_loss"] < 4.5 and abs(a["val_loss"] - b["val_loss"]) < 0.1


def test_cuda_and_cpu_training_agree(tiny_data, tmp_path):
    """Same seed, same data, fp32: the two devices follow the same trajectory up to rounding."""
    torch.backends.cuda.matmul.allow_tf32 = False
    g = pretrain(cfg(tiny_data, tmp_path / "gpu", steps=30))
    c = pretrain(cfg(tiny_data, tmp_path / "cpu", steps=30, device="cpu"))
    assert abs(g["val_loss"] - c["val_loss"]) < 2e-3


@pytest.fixture
def deterministic_after():
    yield
    torch.use_deterministic_algorithms(False)


def test_resume_on_cuda_matches_uninterrupted_run(tiny_data, tmp_path, deterministic_after):
    """With train.deterministic, a resumed CUDA run ends exactly where an uninterrupted one ends.

    The first leg stops at step 20 with the schedule of the 40-step run (decay_steps=40), as a run
    killed at step 20 would."""
    kw = dict(decay_steps=40, deterministic=True)
    ref = pretrain(cfg(tiny_data, tmp_path / "ref", steps=40, **kw))
    pretrain(cfg(tiny_data, tmp_path / "split", steps=20, **kw))
    resumed = pretrain(cfg(tiny_data, tmp_path / "split", steps=40, **kw))
    assert resumed["resumed_from_step"] == 20
    assert abs(resumed["val_loss"] - ref["val_loss"]) < 1e-6
    assert abs(resumed["train_loss"] - ref["train_loss"]) < 1e-6


def test_checkpoint_trained_on_cuda_loads_on_cpu_and_engine_runs_on_cuda(tiny_data, tmp_path):
    from lmlab.infer.engine import Engine
    from lmlab.infer.sampling import SamplingParams

    pretrain(cfg(tiny_data, tmp_path / "run", steps=20))
    cpu = Engine.from_checkpoint(tmp_path / "run" / "checkpoint", device="cpu")
    gpu = Engine.from_checkpoint(tmp_path / "run" / "checkpoint", device="cuda")
    prompt = "Question: Where was"
    assert torch.allclose(cpu.next_token_logits(prompt), gpu.next_token_logits(prompt).cpu(), atol=1e-4)
    params = SamplingParams(temperature=0, max_new_tokens=12, ignore_eos=True)
    a = gpu.generate(["A", prompt], params)
    b = [gpu.generate(p, params)[0] for p in ("A", prompt)]
    assert [o.completions[0].token_ids for o in a] == [o.completions[0].token_ids for o in b]
    lp = gpu.score([prompt], [" Paris"])[0]
    assert lp["total"] <= 0 and len(lp["token_logprobs"]) >= 1


def test_kv_cache_on_cuda_equals_recomputation():
    from lmlab.model.config import ModelConfig
    from lmlab.model.kv_cache import KVCache
    from lmlab.model.transformer import Transformer

    torch.manual_seed(0)
    mc = ModelConfig(vocab_size=61, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=40,
                     norm="rmsnorm", positions="rope", mlp="swiglu")
    model = Transformer(mc).cuda().eval()
    seq = torch.randint(0, 61, (1, 20), device="cuda")
    cache = KVCache.for_model(mc, batch=1, device=torch.device("cuda"))
    with torch.no_grad():
        model(seq[:, :10], cache=cache)
        cache.advance(10)
        for t in range(10, 20):
            step = model(seq[:, t: t + 1], cache=cache)[0, -1]
            cache.advance(1)
            full = model(seq[:, : t + 1])[0, -1]
            assert torch.allclose(step, full, atol=1e-4), (t, (step - full).abs().max())


def test_seeded_sampling_on_cuda_is_reproducible_and_batch_invariant(tiny_data):
    from lmlab.data.tokenizer import Tokenizer
    from lmlab.infer.engine import Engine
    from lmlab.infer.sampling import SamplingParams
    from lmlab.model.config import ModelConfig
    from lmlab.model.transformer import Transformer

    tok = Tokenizer.load(tiny_data / "tokenizer.json")
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=2, max_seq_len=64))
    engine = Engine(model, tok, "cuda")
    p = SamplingParams(temperature=1.0, top_p=0.9, top_k=50, max_new_tokens=16, seed=7, ignore_eos=True,
                       logprobs=True)
    alone = engine.generate("The answer is", p)[0].completions[0]
    again = engine.generate("The answer is", p)[0].completions[0]
    batched = engine.generate(["A", "The answer is", "Question:"], p)[1].completions[0]
    assert alone.token_ids == again.token_ids == batched.token_ids
    assert len(alone.token_ids) == 16
