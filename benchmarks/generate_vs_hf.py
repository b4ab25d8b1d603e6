"""Generation speed: lmlab's KV-cache engine against Hugging Face transformers' `generate`.

Both run the same GPT-2-shaped model with the same weights (a random GPT-2 from
transformers, its weights copied into lmlab's Transformer; exact GELU in both)
on the same prompts, in this one process, after a warm-up; each figure is the
best of `--repeats` runs. Cases (from the inference issue):

  a) tiny shape (4 layers, width 128, vocab 65), batch 1, 200 new tokens, greedy
  b) the same, batch 16, sampling (temperature 1)
  c) GPT-2 124M shape, batch 1, 100 new tokens, greedy (fp32; bf16 and int8 also timed, their
     change in outputs measured against fp32)

lmlab decodes through its native C step wherever the engine's 'auto' backend picks it
(each row says which); cases a) and b) also time lmlab's PyTorch decode path. It also
checks that greedy tokens agree between the two implementations, and reports lmlab's
per-token decode latency early vs late in a long generation.
Needs the optional `transformers` package (`pip install -e .[bench]`). Ends
with one JSON line of figures including each `ratio` (lmlab tokens/s / HF's).
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def copy_gpt2_weights(hf, model) -> None:
    """HF GPT2LMHeadModel -> lmlab Transformer (GPT-2 stores linear weights transposed, as Conv1D)."""
    sd = hf.state_dict()
    ours = {"tok_emb.weight": sd["transformer.wte.weight"], "pos_emb.weight": sd["transformer.wpe.weight"],
            "norm_f.weight": sd["transformer.ln_f.weight"], "norm_f.bias": sd["transformer.ln_f.bias"]}
    names = {"ln_1": "norm1", "ln_2": "norm2", "attn.c_attn": "attn.qkv", "attn.c_proj": "attn.proj",
             "mlp.c_fc": "mlp.up", "mlp.c_proj": "mlp.down"}
    for i in range(model.cfg.n_layers):
        for theirs, mine in names.items():
            w = sd[f"transformer.h.{i}.{theirs}.weight"]
            ours[f"blocks.{i}.{mine}.weight"] = w.t() if w.dim() == 2 else w
            ours[f"blocks.{i}.{mine}.bias"] = sd[f"transformer.h.{i}.{theirs}.bias"]
    missing, unexpected = model.load_state_dict(ours, strict=False)
    assert not unexpected and set(missing) <= {"head.weight"}, (missing, unexpected)


def build(n_layer: int, n_embd: int, n_head: int, vocab: int, ctx: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    from lmlab.model.config import ModelConfig
    from lmlab.model.transformer import Transformer

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, vocab_size=vocab,
                                    n_positions=ctx, activation_function="gelu", resid_pdrop=0.0,
                                    embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None)).eval()
    cfg = ModelConfig(vocab_size=vocab, d_model=n_embd, n_layers=n_layer, n_heads=n_head, max_seq_len=ctx,
                      bias=True, norm="layernorm", positions="learned", mlp="gelu", tie_embeddings=True)
    model = Transformer(cfg)
    copy_gpt2_weights(hf, model)
    return hf, model.eval()


class _Tok:
    """A stand-in tokenizer for random token ids: the engine needs decode() and the special ids."""

    eos_id = None
    bos_id = None

    def decode(self, ids, skip_special=False):
        return "".join(chr(0x4E00 + int(i)) for i in ids)

    def encode(self, text):
        return [ord(c) - 0x4E00 for c in text]

    def token_to_id(self, t):
        return None


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        _sync()
        t = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t)
    return min(times)


def case(name, hf, engine, batch, new, sample, repeats, prompt_len=8, torch_engine=None):
    """Time HF and lmlab (and, if given, lmlab's PyTorch decode path) on the same prompts."""
    from lmlab.infer.sampling import SamplingParams

    g = torch.Generator().manual_seed(1)
    prompts = torch.randint(0, hf.config.vocab_size, (batch, prompt_len), generator=g).to(hf.device)
    kw = dict(max_new_tokens=new, min_new_tokens=new, pad_token_id=0)
    kw.update(do_sample=True, temperature=1.0, top_k=0) if sample else kw.update(do_sample=False)
    with torch.inference_mode():
        t_hf = best_of(lambda: hf.generate(prompts, attention_mask=torch.ones_like(prompts), **kw), repeats)
    params = SamplingParams(temperature=1.0 if sample else 0.0, max_new_tokens=new, seed=0, ignore_eos=True)
    plist = [p.tolist() for p in prompts]
    t_lm = best_of(lambda: engine.generate(plist, params), repeats)
    tok = batch * new
    backend = "native" if engine._native(batch) is not None else "torch"
    row = {"case": name, "batch": batch, "new_tokens": new, "backend": backend, "hf_tokens_per_s": round(tok / t_hf, 1),
           "lmlab_tokens_per_s": round(tok / t_lm, 1), "ratio": round(t_hf / t_lm, 3)}
    if torch_engine is not None:
        t_torch = best_of(lambda: torch_engine.generate(plist, params), repeats)
        row["lmlab_torch_path_tokens_per_s"] = round(tok / t_torch, 1)
        row["torch_path_ratio"] = round(t_hf / t_torch, 3)
    if not sample:
        with torch.inference_mode():
            ref = hf.generate(prompts, attention_mask=torch.ones_like(prompts), **kw)[:, prompt_len:].tolist()
        ours = [o.completions[0].token_ids for o in engine.generate(plist, params)]
        row["greedy_tokens_equal"] = ref == ours
    print(f"{name:28s} HF {row['hf_tokens_per_s']:9.1f} tok/s   lmlab ({backend}) "
          f"{row['lmlab_tokens_per_s']:9.1f} tok/s   "
          f"ratio {row['ratio']:.2f}" + (f"   greedy equal: {row['greedy_tokens_equal']}" if not sample else "")
          + (f"   (torch path {row['lmlab_torch_path_tokens_per_s']:.1f} tok/s, ratio {row['torch_path_ratio']:.2f})"
             if torch_engine is not None else ""))
    return row


def decode_logprobs(engine, x: torch.Tensor) -> torch.Tensor:
    """(N, T, V) next-token log-probs computed the way the engine decodes: one token at a time through the
    native step when the engine uses it (its numerics differ from the model's forward), else the forward."""
    from lmlab.model.kv_cache import KVCache

    decoder = engine._native(1)  # as the engine decodes the timed batch-1 case
    with torch.no_grad():
        if decoder is None:
            return torch.log_softmax(engine.model(x).float(), -1)
        cache = KVCache.for_model(engine.cfg, x.shape[0], dtype=torch.float32, device=engine.device)
        steps = [engine.model(x[:, :1], cache=cache)[:, -1].float()]
        cache.advance(1)
        for t in range(1, x.shape[1]):
            steps.append(decoder.step(x[:, t], cache))
            cache.advance(1)
    return torch.log_softmax(torch.stack(steps, 1), -1)


def output_change(ref, other, n_prompts: int = 8, length: int = 32) -> dict:
    """How much reduced-precision weights change the next-token distribution, on random prompts (each
    engine computing the way it decodes)."""
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, ref.cfg.vocab_size, (n_prompts, length), generator=g).to(ref.device)
    with torch.no_grad():
        a = decode_logprobs(ref, x)
        b = decode_logprobs(other, x)
    kl = (a.exp() * (a - b)).sum(-1)
    return {"output_change": {"top1_agreement": round(float((a.argmax(-1) == b.argmax(-1)).float().mean()), 4),
                              "mean_kl_nats": round(float(kl.mean()), 6),
                              "max_abs_logprob_diff": round(float((a - b).abs().max()), 4)}}


def decode_latency(engine, new: int = 200) -> dict:
    """Milliseconds per token over the first and the last 50 tokens of one long greedy generation."""
    from lmlab.infer.sampling import SamplingParams

    stamps = []
    for _ in engine.stream([[1, 2, 3]], SamplingParams(temperature=0, max_new_tokens=new, ignore_eos=True)):
        stamps.append(time.perf_counter())
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    early, late = sorted(gaps[:50])[25] * 1000, sorted(gaps[-50:])[25] * 1000
    return {"ms_per_token_first50": round(early, 3), "ms_per_token_last50": round(late, 3),
            "late_over_early": round(late / early, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (both implementations, fp32 unless stated)")
    ap.add_argument("--skip-124m", action="store_true", help="skip the GPT-2 124M case (it takes minutes)")
    args = ap.parse_args()
    import transformers

    from lmlab.infer.engine import Engine

    torch.set_num_threads(torch.get_num_threads())
    rows = []
    hf, model = build(4, 128, 4, 65, 256)
    hf = hf.to(args.device)
    engine = Engine(model, _Tok(), args.device)
    torch_path = Engine(model, _Tok(), args.device, backend="torch")
    rows.append(case("a) tiny, batch 1, greedy", hf, engine, 1, 200, False, args.repeats, torch_engine=torch_path))
    rows.append(case("b) tiny, batch 16, sampling", hf, engine, 16, 200, True, args.repeats, torch_engine=torch_path))
    latency = decode_latency(engine)
    print(f"tiny decode latency: {latency}")
    if not args.skip_124m:
        hf, model = build(12, 768, 12, 50257, 1024)
        hf = hf.to(args.device)
        engine = Engine(model, _Tok(), args.device)
        rows.append(case("c) GPT-2 124M, batch 1, greedy", hf, engine, 1, 100, False, max(1, args.repeats - 1)))
        for weights in ("bf16", "int8"):
            import copy

            if weights == "int8" and args.device != "cpu":
                continue  # PyTorch's int8 weight-only kernel is a CPU kernel
            eng = Engine(copy.deepcopy(model), _Tok(), args.device, weights=weights)
            row = case(f"c') GPT-2 124M {weights} (lmlab)", hf, eng, 1, 100, False, max(1, args.repeats - 1))
            row["note"] = f"HF in fp32; greedy_tokens_equal compares lmlab {weights} weights with HF fp32"
            row.update(output_change(engine, eng))
            print(f"    output change vs fp32: {row['output_change']}")
            rows.append(row)
    print(json.dumps({"benchmark": "generate_vs_hf", "device": args.device, "transformers": transformers.__version__,
                      "torch": torch.__version__, "threads": torch.get_num_threads(), "cases": rows,
                      "decode_latency": latency}))


if __name__ == "__main__":
    main()
