"""`lmlab.plan.size`: parameter counts against the real model and published numbers, memory and compute
formulas against hand arithmetic, config.json parsing and its errors, and the no-torch import."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmlab.config import field_docs
from lmlab.errors import LmlabError
from lmlab.model.config import PRESETS, ModelConfig, preset
from lmlab.model.hf_config import config_from_hf, published_from_hf
from lmlab.model.transformer import Transformer
from lmlab.plan.flops import forward_flops_per_token
from lmlab.plan.load import load_model
from lmlab.plan.memory import korthikanti_layer_bytes, kv_bytes_per_token, rule_of_thumb_gb, weight_bytes
from lmlab.plan.params import param_counts, pos_table
from lmlab.plan.presets import HF_PRESETS
from lmlab.plan.size import SizeConfig, format_table, size


def total(name: str) -> int:
    return param_counts(load_model(name).cfg)["total"]


def on_meta(cfg: ModelConfig) -> dict[str, int]:
    """The real model's count_params(), built without allocating (exact shapes, no memory)."""
    with torch.device("meta"):
        return Transformer(cfg).count_params()


# ---- parameters: the lmlab Transformer, exactly --------------------------------------------------------

@pytest.mark.parametrize("name", list(PRESETS))
def test_lmlab_presets_match_transformer_count_params(name):
    cfg = preset(name)
    real = on_meta(cfg)
    counts = param_counts(cfg)
    assert counts["total"] == real["total"]
    assert counts["non_embedding"] == real["non_embedding"]
    parts = ("embedding", "attention", "mlp", "router", "norms", "head")
    assert sum(counts[k] for k in parts) == counts["total"]


ODD = {
    "qkv_bias_only": dict(mlp="swiglu", norm="rmsnorm", positions="rope", bias=False, qkv_bias=True, n_kv_heads=2),
    "qkv_bias_off_with_bias": dict(bias=True, qkv_bias=False),
    "untied_gpt": dict(bias=True, tie_embeddings=False),
    "rope_gqa_untied": dict(mlp="swiglu", norm="rmsnorm", positions="rope", n_kv_heads=1, d_ff=40,
                            tie_embeddings=False),
    "swiglu_with_bias": dict(mlp="swiglu", bias=True),
    "gelu_tanh": dict(mlp="gelu_tanh", bias=True),
    "bert_like": dict(norm_position="post", embed_norm=True, type_vocab_size=2, bias=True, head_transform=True,
                      causal=False),
    "bert_without_bias": dict(norm_position="post", embed_norm=True, type_vocab_size=3, bias=False,
                              head_transform=True, tie_embeddings=False, causal=False),
    "post_norm_rms": dict(norm="rmsnorm", norm_position="post", embed_norm=True, positions="rope"),
}


@pytest.mark.parametrize("name", list(ODD))
def test_odd_configs_match_transformer_exactly(name):
    cfg = ModelConfig(vocab_size=97, d_model=32, n_layers=2, n_heads=4, max_seq_len=24, **ODD[name])
    real = Transformer(cfg)
    assert param_counts(cfg)["total"] == sum(p.numel() for p in real.parameters())
    assert param_counts(cfg)["total"] == real.count_params()["total"]


def test_gpt2_124m_tied_head():
    for name in ("gpt2-small", "gpt2"):  # lmlab's preset and the published config
        counts = param_counts(load_model(name).cfg)
        assert counts["total"] == 124_439_808
        assert counts["head"] == 0  # tied: the output head is the token embedding, counted once
    assert size(SizeConfig("gpt2"))["params"]["total"] == 124_439_808


# Totals of the published configs as transformers 5.24 counts them (the *ForCausalLM / BertForMaskedLM
# model built from each config on the meta device), which also agree with the sizes the model cards state.
PUBLISHED = {
    "gpt2": 124_439_808, "gpt2-medium": 354_823_168, "gpt2-large": 774_030_080, "gpt2-xl": 1_557_611_200,
    "llama-2-7b": 6_738_415_616, "llama-2-13b": 13_015_864_320, "llama-2-70b": 68_976_648_192,
    "llama-3-8b": 8_030_261_248, "llama-3-70b": 70_553_706_496, "llama-3.1-8b": 8_030_261_248,
    "llama-3.1-70b": 70_553_706_496, "llama-3.2-1b": 1_235_814_400, "mistral-7b": 7_241_732_096,
    "mixtral-8x7b": 46_702_792_704,
    "qwen2.5-0.5b": 494_032_768, "qwen2.5-7b": 7_615_616_512, "bert-base-uncased": 109_514_298,
    "bert-large-uncased": 335_174_458,
}


@pytest.mark.parametrize("name", list(HF_PRESETS))
def test_published_presets_totals(name):
    assert total(name) == PUBLISHED[name]


def test_known_answers_from_the_issue():
    assert total("llama-3-8b") == pytest.approx(8.03e9, rel=0.005)
    mixtral = param_counts(load_model("mixtral-8x7b").cfg)
    assert mixtral["total"] == pytest.approx(46.7e9, rel=0.01)
    assert mixtral["active_per_token"] == pytest.approx(12.9e9, rel=0.01)


@pytest.mark.parametrize("name", ["gpt2", "gpt2-xl", "llama-2-7b", "llama-2-70b", "mistral-7b", "qwen2.5-0.5b",
                                  "qwen2.5-7b", "bert-base-uncased"])
def test_hf_parser_agrees_with_lmlab_import(name):
    """`lmlab size` and lmlab's importer read a config.json with one parser: the importer's ModelConfig is
    the published one with no extras set, and its count is the real model's."""
    cfg = config_from_hf(HF_PRESETS[name], max_seq_len=HF_PRESETS[name].get("n_positions", 512)
                         if HF_PRESETS[name]["model_type"] in ("gpt2", "bert") else 64)
    real = on_meta(cfg)["total"]
    published = published_from_hf(HF_PRESETS[name])
    if pos_table(published):  # learned position tables shrink with max_seq_len; RoPE models have none
        assert pos_table(published) == cfg.max_seq_len
    assert param_counts(published)["total"] == real
    shared = {f.name: getattr(published, f.name) for f in dataclasses.fields(ModelConfig)}
    assert shared == {**cfg.to_dict(), "max_seq_len": published.max_seq_len}
    assert (published.d_head, published.out_bias, published.mlp_bias) == (None, None, None)


def test_moe_counts():
    a = load_model("mixtral-8x7b").cfg
    c = param_counts(a)
    assert (a.n_experts, a.experts_per_token) == (8, 2)
    assert c["per_expert_per_layer"] == 3 * 4096 * 14336
    assert c["mlp"] == 32 * 8 * c["per_expert_per_layer"]
    assert c["router"] == 32 * 4096 * 8
    assert c["active_per_token"] == c["total"] - 32 * 6 * c["per_expert_per_layer"]
    r = size(SizeConfig("mixtral-8x7b", context=4096))
    assert r["moe"]["total_params"] == c["total"] and r["moe"]["active_params"] == c["active_per_token"]
    assert size(SizeConfig("llama-3-8b"))["moe"] is None


SMALL_LLAMA = {"model_type": "llama", "hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2,
               "num_hidden_layers": 2, "intermediate_size": 48, "vocab_size": 99, "max_position_embeddings": 64}


def test_hf_head_dim_biases_and_tying():
    base = SMALL_LLAMA
    plain = param_counts(published_from_hf(base))["total"]
    # head_dim 16 instead of 8: q/k/v go from 32+16+16 to 64+32+32 outputs, o from 32 to 64 inputs
    wide = param_counts(published_from_hf({**base, "head_dim": 16}))["total"]
    assert wide - plain == 2 * (32 * (128 - 64) + (64 - 32) * 32)
    biased = param_counts(published_from_hf({**base, "attention_bias": True, "mlp_bias": True}))["total"]
    assert biased - plain == 2 * ((32 + 16 + 16) + 32 + (2 * 48 + 32))
    qwen = param_counts(published_from_hf({**base, "model_type": "qwen2"}))["total"]
    assert qwen - plain == 2 * (32 + 16 + 16)  # q/k/v biases only
    tied = param_counts(published_from_hf({**base, "tie_word_embeddings": True}))["total"]
    assert plain - tied == 99 * 32


@pytest.mark.parametrize("extra, match", [
    ({"head_dim": 16}, "head_dim=16 differs"), ({"attention_bias": True}, "attention_bias"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "RoPE scaling 'llama3'"),
    ({"model_type": "mixtral", "num_local_experts": 4, "num_experts_per_tok": 2}, "model_type='mixtral'"),
])
def test_importer_refuses_what_only_sizing_reads(extra, match):
    """Published configs the Transformer cannot compute exactly are sized, but not imported."""
    hf = {**SMALL_LLAMA, **extra}
    assert param_counts(published_from_hf(hf))["total"] > 0
    with pytest.raises(LmlabError, match=match):
        config_from_hf(hf)


# ---- config.json files and errors ---------------------------------------------------------------------

def test_hf_config_json_file_and_directory(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**HF_PRESETS["qwen2.5-0.5b"], "torch_dtype": "bfloat16"}))
    for where in (tmp_path, tmp_path / "config.json"):
        r = size(SizeConfig(str(where), context=128))
        assert r["params"]["total"] == PUBLISHED["qwen2.5-0.5b"]
        assert r["model"]["source"] == "Hugging Face config.json"


def test_lmlab_checkpoint_config(tmp_path):
    cfg = preset("llama-mini", vocab_size=300)
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    r = size(SizeConfig(str(tmp_path)))
    assert r["params"]["total"] == on_meta(cfg)["total"]
    assert r["model"]["source"] == "lmlab checkpoint"


def test_unknown_preset_suggests_nearest():
    with pytest.raises(LmlabError, match="llama-3-8b"):
        size(SizeConfig("llama3-8b"))
    with pytest.raises(LmlabError, match="mixtral-8x7b"):
        load_model("mixtral8x7b")


@pytest.mark.parametrize("key", ["hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size"])
def test_missing_key_is_named(tmp_path, key):
    hf = dict(HF_PRESETS["llama-3-8b"])
    del hf[key]
    (tmp_path / "config.json").write_text(json.dumps(hf))
    with pytest.raises(LmlabError, match=f"lacks required key '{key}'"):
        size(SizeConfig(str(tmp_path)))


def test_mixtral_needs_expert_keys():
    hf = dict(HF_PRESETS["mixtral-8x7b"])
    del hf["num_local_experts"]
    with pytest.raises(LmlabError, match="num_local_experts"):
        published_from_hf(hf)
    with pytest.raises(LmlabError, match="num_experts_per_tok=9 exceeds num_local_experts=8"):
        published_from_hf({**HF_PRESETS["mixtral-8x7b"], "num_experts_per_tok": 9})


def test_impossible_shapes():
    with pytest.raises(LmlabError, match="num_attention_heads=5 does not divide hidden_size=4096"):
        published_from_hf({**HF_PRESETS["llama-3-8b"], "num_attention_heads": 5, "num_key_value_heads": 5})
    with pytest.raises(LmlabError, match="n_head=7 does not divide n_embd=768"):
        published_from_hf({**HF_PRESETS["gpt2"], "n_head": 7})
    with pytest.raises(LmlabError, match="num_key_value_heads=3 must divide num_attention_heads=32"):
        published_from_hf({**HF_PRESETS["llama-3-8b"], "num_key_value_heads": 3})
    with pytest.raises(LmlabError, match="hidden_size must be a positive integer"):
        published_from_hf({**HF_PRESETS["llama-3-8b"], "hidden_size": "4096"})
    # an explicit head_dim makes a width that heads do not divide legal (q is heads x head_dim wide)
    assert published_from_hf({**HF_PRESETS["llama-3-8b"], "num_attention_heads": 40, "num_key_value_heads": 8,
                         "head_dim": 128}).head_dim == 128


def test_bad_files(tmp_path):
    with pytest.raises(LmlabError, match="no config.json"):
        size(SizeConfig(str(tmp_path)))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(LmlabError, match="not a readable JSON"):
        size(SizeConfig(str(tmp_path)))
    (tmp_path / "config.json").write_text(json.dumps({**HF_PRESETS["gpt2"], "model_type": "t5"}))
    with pytest.raises(LmlabError, match="model_type 't5' is not supported"):
        size(SizeConfig(str(tmp_path)))
    hf = dict(HF_PRESETS["gpt2"])
    del hf["model_type"]
    (tmp_path / "config.json").write_text(json.dumps(hf))
    with pytest.raises(LmlabError, match="no 'model_type' key.*unknown keys"):
        size(SizeConfig(str(tmp_path)))
    (tmp_path / "config.json").write_text(json.dumps({"d_model": 100, "n_heads": 3}))
    with pytest.raises(LmlabError, match="n_heads=3 does not divide model.d_model=100"):
        size(SizeConfig(str(tmp_path)))


@pytest.mark.parametrize("kw, match", [
    (dict(precision="int3"), "precision must be one of"), (dict(kv_precision="q4"), "kv_precision"),
    (dict(optimizer="lion"), "optimizer must be one of"), (dict(batch=0), "batch"), (dict(context=0), "context"),
    (dict(mfu=1.5), "mfu"), (dict(peak_tflops=0), "peak_tflops"), (dict(train_tokens=-1.0), "train_tokens"),
    (dict(model=""), "model"),
])
def test_size_config_validation(kw, match):
    with pytest.raises(LmlabError, match=match):
        SizeConfig(**kw)


def test_context_beyond_model_maximum():
    with pytest.raises(LmlabError, match="context=2048 exceeds the model's maximum context of 1024"):
        size(SizeConfig("gpt2", context=2048))


def test_size_config_is_a_documented_cli_config():
    docs = field_docs(SizeConfig)
    assert {f.name for f in dataclasses.fields(SizeConfig)} <= set(docs)
    assert SizeConfig.POSITIONAL == ("model",)
    assert "H100" in docs["peak_tflops"]


# ---- memory -----------------------------------------------------------------------------------------

def test_rule_of_thumb():
    assert rule_of_thumb_gb(8.0e9, 16) == pytest.approx(19.2)
    assert rule_of_thumb_gb(8.0e9, 4) == pytest.approx(4.8)
    r = size(SizeConfig("llama-3-8b", context=1024))
    assert r["inference"]["rule_of_thumb_gb"] == pytest.approx(8_030_261_248 / 1e9 * 2 * 1.2)


def test_kv_cache_llama31_8b():
    a = load_model("llama-3.1-8b").cfg
    assert kv_bytes_per_token(a, "bf16") == 131_072
    r = size(SizeConfig("llama-3.1-8b", context=1000, batch=3))
    assert r["inference"]["kv_cache_bytes_per_token"] == 131_072
    assert r["inference"]["kv_cache_bytes"] == 3 * 1000 * 131_072
    # quantized weights keep a bf16 cache unless told otherwise
    assert size(SizeConfig("llama-3.1-8b", context=8, precision="int4"))["inference"]["kv_precision"] == "bf16"
    fp8 = size(SizeConfig("llama-3.1-8b", context=8, kv_precision="fp8"))["inference"]
    assert fp8["kv_cache_bytes_per_token"] == 65_536
    assert size(SizeConfig("llama-3.1-8b", context=8, precision="fp32"))["inference"]["kv_cache_bytes_per_token"] \
        == 262_144
    assert size(SizeConfig("bert-base-uncased"))["inference"]["kv_cache_bytes"] == 0  # an encoder keeps no cache


def test_weight_bytes_by_precision():
    a = load_model("llama-3-8b").cfg
    n = param_counts(a)["total"]
    b = {p: weight_bytes(a, p)["weights"] for p in ("int4", "int8", "fp8", "bf16", "fp16", "fp32")}
    assert b["int4"] < b["int8"] < b["bf16"] < b["fp32"]
    assert b["fp8"] < b["int8"]  # same width, int8 adds per-row scales
    assert b["bf16"] == b["fp16"] == 2 * n and b["fp32"] == 4 * n


def test_quantization_scales_by_hand():
    """gpt-tiny, untied copy so every matrix is explicit: 128 columns everywhere except mlp.down (512)."""
    cfg = preset("gpt-tiny", tie_embeddings=False)
    a = cfg
    rows = {"tok": 1024, "pos": 128, "qkv": 4 * 384, "proj": 4 * 128, "up": 4 * 512, "down": 4 * 128, "head": 1024}
    in_mats = 1024 * 128 * 2 + 128 * 128 + 4 * (384 * 128 + 128 * 128 + 512 * 128 + 128 * 512)
    vectors = param_counts(a)["total"] - in_mats  # norm weights (bias=False in gpt-tiny): 9 x 128
    assert vectors == 9 * 128
    assert weight_bytes(a, "int8") == {"weights": in_mats + 2 * vectors + 2 * sum(rows.values()),
                                       "scales": 2.0 * sum(rows.values())}
    groups = sum(rows.values()) + 3 * rows["down"]  # one group per 128-wide row; down rows are 512 wide
    assert weight_bytes(a, "int4") == {"weights": in_mats / 2 + 2 * vectors + 2 * groups, "scales": 2.0 * groups}


def test_inference_activations_formula():
    r = size(SizeConfig("llama-3-8b", context=100, batch=2))
    # SwiGLU: gate+up, silu(gate), the product; attention: q/k/v (32 + 16) x 128, rotated q and k, k and v
    # repeated to 32 heads, output and copy: 10240 + 5120 + 8192 + 8192 = 31744 < 4 x 14336
    widest = 4 * 14336
    assert r["inference"]["activations_bytes"] == 2 * 100 * (2 * 4096 + widest) * 2 + 2 * 128256 * 4
    inf = r["inference"]
    assert inf["total_bytes"] == inf["weights_bytes"] + inf["kv_cache_bytes"] + inf["activations_bytes"]


def test_training_memory():
    r = size(SizeConfig("gpt2", context=1024))
    tr, n = r["training"], r["params"]["total"]
    assert tr["total_bytes"] > r["inference"]["total_bytes"]
    # bf16 mixed-precision AdamW: 2 (weights) + 2 (grads) + 4 (fp32 master) + 8 (m, v) bytes per parameter
    assert tr["static_bytes_per_param"] == 16
    assert (tr["weights_bytes"], tr["gradients_bytes"], tr["master_weights_bytes"], tr["optimizer_states_bytes"]) \
        == (2 * n, 2 * n, 4 * n, 8 * n)
    # Korthikanti et al.: s*b*h*(34 + 5*a*s/h) bytes per layer, 12 layers
    per_layer = 1024 * 768 * (34 + 5 * 12 * 1024 / 768)
    assert korthikanti_layer_bytes(load_model("gpt2").cfg, 1, 1024) == pytest.approx(per_layer)
    assert tr["activations_bytes"] == pytest.approx(12 * per_layer)
    assert tr["total_bytes"] == pytest.approx(16 * n + 12 * per_layer + 1024 * 50257 * 4)
    assert tr["ratio_to_inference"] == pytest.approx(tr["total_bytes"] / r["inference"]["total_bytes"])
    assert "3-4x" in tr["rule"]


def test_activation_checkpointing_lowers_training_memory():
    plain = size(SizeConfig("llama-2-7b", context=4096))["training"]
    ckpt = size(SizeConfig("llama-2-7b", context=4096, activation_checkpointing=True))["training"]
    assert ckpt["total_bytes"] < plain["total_bytes"]
    per_layer = korthikanti_layer_bytes(load_model("llama-2-7b").cfg, 1, 4096)
    assert ckpt["activations_bytes"] == pytest.approx(32 * 2 * 4096 * 4096 + per_layer)
    assert plain["activations_bytes"] == pytest.approx(32 * per_layer)


def test_optimizer_and_precision_choices():
    def static(**kw):
        return size(SizeConfig("gpt2", context=64, **kw))["training"]["static_bytes_per_param"]

    assert static(optimizer="adamw") > static(optimizer="sgd") > static(optimizer="adam8bit")
    assert static(optimizer="sgd") == 2 + 2 + 4 + 4
    assert static(optimizer="adam8bit") == pytest.approx(2 + 2 + 4 + 2 * (1 + 4 / 2048))
    assert static(mixed_precision=False) == 2 + 2 + 8  # pure bf16: no master copy
    assert static(precision="fp32") == 4 + 4 + 8  # fp32 weights are the master copy
    assert static(precision="int4") == 16  # quantized formats are for serving; training is sized in bf16


# ---- compute ----------------------------------------------------------------------------------------

def test_compute_section():
    r = size(SizeConfig("llama-3-8b", context=2048, peak_tflops=500.0, mfu=0.5))
    c, n = r["compute"], r["params"]["total"]
    assert c["training_flops_per_token"] == 3 * c["forward_flops_per_token"]
    assert c["chinchilla_tokens"] == 20 * n and c["train_tokens"] == 20 * n
    assert c["training_flops"] == pytest.approx(c["training_flops_per_token"] * 20 * n)
    assert c["time_s"] == pytest.approx(c["training_flops"] / (500e12 * 0.5))
    # close to the 6ND rule: matmul weights are most parameters; attention at 2k context adds a little
    assert c["training_flops"] == pytest.approx(6 * n * 20 * n, rel=0.1)
    given = size(SizeConfig("llama-3-8b", context=2048, train_tokens=1e12))["compute"]
    assert given["train_tokens"] == 1e12 and given["training_flops"] == pytest.approx(
        given["training_flops_per_token"] * 1e12)


def test_moe_compute_uses_active_params():
    a = load_model("mixtral-8x7b").cfg
    counts = param_counts(a)
    fwd = forward_flops_per_token(a, 4096)
    assert fwd == pytest.approx(2 * counts["active_per_token"] + 4 * 32 * 4096 * 4096, rel=0.01)
    assert fwd < 2 * counts["total"] / 3
    c = size(SizeConfig("mixtral-8x7b", context=4096))["compute"]
    assert c["chinchilla_tokens"] == 20 * counts["total"]  # Chinchilla tokens count all parameters


# ---- the verb ---------------------------------------------------------------------------------------

def test_size_formats_a_table_and_returns_a_json_able_dict():
    r = size(SizeConfig("llama-3.1-8b", context=8192))
    out = format_table(r)
    for text in ("parameters", "8,030,261,248", "131,072 bytes/token", "19.27 GB", "inference", "training",
                 "3-4x", "compute", "Chinchilla"):
        assert text in out
    assert json.loads(json.dumps(r)) == r
    moe = format_table(size(SizeConfig("mixtral-8x7b", context=512)))
    assert "active per token" in moe and "2 of 8" in moe


def test_import_does_not_pull_in_torch():
    plan = Path(__file__).resolve().parents[1] / "src" / "lmlab" / "plan"
    modules = ", ".join(f"lmlab.plan.{p.stem}" for p in sorted(plan.glob("*.py")) if p.stem != "__init__")
    code = f"import sys, lmlab.model.hf_config, {modules}; assert 'torch' not in sys.modules, 'torch imported'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_lmlab_yaml_recipes_are_sized_from_their_model_section(tmp_path):
    configs = Path(__file__).resolve().parents[1] / "configs"
    r = size(SizeConfig(str(configs / "llama_tiny_world.yaml"), precision="fp32"))
    cfg = ModelConfig(d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, max_seq_len=128, norm="rmsnorm",
                      positions="rope", mlp="swiglu", tie_embeddings=False)
    assert r["params"]["total"] == param_counts(cfg)["total"]
    assert "default" in r["model"]["source"]
    q = size(SizeConfig(str(configs / "quickstart.yaml")))  # model under pretrain:, vocab from tokenizer:
    assert q["model"]["vocab"] == 1024 and "tokenizer section" in q["model"]["source"]
    bad = tmp_path / "r.yaml"
    bad.write_text("train:\n  steps: 3\n")
    with pytest.raises(LmlabError, match="needs a 'model:' section"):
        size(SizeConfig(str(bad)))
    bad.write_text("model:\n  d_model: 100\n  n_heads: 3\n")
    with pytest.raises(LmlabError, match="n_heads=3 does not divide"):
        size(SizeConfig(str(bad)))
