"""The Transformer and ModelConfig: masking, parameter counts, validation, RoPE, GQA, init."""

from __future__ import annotations

import math

import pytest
import torch

from lmlab.errors import LmlabError
from lmlab.model import ModelConfig, Transformer, preset
from lmlab.model.config import PRESETS
from lmlab.model.transformer import apply_rope, rope_tables

V, D, L, H, T = 61, 32, 2, 4, 12

GPT2 = dict(norm="layernorm", positions="learned", mlp="gelu", bias=True, tie_embeddings=True)
LLAMA = dict(norm="rmsnorm", positions="rope", mlp="swiglu", bias=False, tie_embeddings=False, n_kv_heads=2)
STYLES = {"gpt2": GPT2, "llama": LLAMA}


def tiny_cfg(**kw) -> ModelConfig:
    base = dict(vocab_size=V, d_model=D, n_layers=L, n_heads=H, max_seq_len=16)
    # A larger init makes the bidirectional counter-test's differences far above float noise.
    base.update(init_std=0.2)
    base.update(kw)
    return ModelConfig(**base)


def build(seed: int = 0, **kw) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(tiny_cfg(**kw)).eval()


def tokens(seed: int, n: int = T, batch: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (batch, n), generator=g)


# --- causal masking (acceptance test) -----------------------------------------------------------


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("t", [0, 5, T - 2])
def test_future_tokens_do_not_change_past_logits(style, t):
    model = build(**STYLES[style])
    x = tokens(1)
    y = x.clone()
    y[:, t + 1:] = (x[:, t + 1:] + 1 + tokens(2)[:, t + 1:] % (V - 1)) % V  # every later token differs
    assert (y[:, t + 1:] != x[:, t + 1:]).all()
    with torch.no_grad():
        lx, ly = model(x), model(y)
    torch.testing.assert_close(lx[:, : t + 1], ly[:, : t + 1], rtol=0, atol=1e-5)
    # and the later positions do see the change (the test can fail)
    assert (lx[:, t + 1:] - ly[:, t + 1:]).abs().max() > 1e-2


@pytest.mark.parametrize("style", STYLES)
def test_prefix_logits_equal_full_sequence_logits(style):
    model = build(**STYLES[style])
    x = tokens(3)
    with torch.no_grad():
        full = model(x)
        for n in (1, 4, T - 1):
            torch.testing.assert_close(model(x[:, :n]), full[:, :n], rtol=0, atol=1e-5)


@pytest.mark.parametrize("style", STYLES)
def test_bidirectional_model_sees_later_tokens(style):
    model = build(causal=False, **STYLES[style])
    x = tokens(4)
    y = x.clone()
    y[:, -1] = (x[:, -1] + 1) % V
    with torch.no_grad():
        lx, ly = model(x), model(y)
    # every earlier position changes when only the last token changes
    per_pos = (lx[:, :-1] - ly[:, :-1]).abs().amax(dim=-1)
    assert (per_pos > 1e-4).all()


def test_causal_and_bidirectional_agree_on_the_last_position():
    # In a one-layer model the last position attends to the same keys and values under both masks,
    # so with equal weights its logits agree (with more layers the earlier hidden states differ).
    causal = build(seed=5, n_layers=1, **GPT2)
    bidir = build(seed=5, n_layers=1, causal=False, **GPT2)
    x = tokens(6)
    with torch.no_grad():
        torch.testing.assert_close(causal(x)[:, -1], bidir(x)[:, -1], rtol=1e-5, atol=1e-5)
        assert (causal(x)[:, 0] - bidir(x)[:, 0]).abs().max() > 1e-3


def test_output_shapes_and_hidden():
    model = build(**LLAMA)
    x = tokens(7, n=9, batch=3)
    with torch.no_grad():
        assert model(x).shape == (3, 9, V)
        hidden = model(x, return_hidden=True)
    assert hidden.shape == (3, 9, D)
    torch.testing.assert_close(model.head(hidden), model(x))


def test_max_seq_len_exceeded_raises():
    model = build(max_seq_len=8)
    model(tokens(0, n=8))  # exactly max_seq_len is fine
    with pytest.raises(ValueError, match="max_seq_len"):
        model(tokens(0, n=9))


# --- parameter counts ---------------------------------------------------------------------------


def unique_param_count(model: torch.nn.Module) -> int:
    seen = {}
    for m in model.modules():
        for p in m.parameters(recurse=False):
            seen[id(p)] = p.numel()
    return sum(seen.values())


def expected_params(cfg: ModelConfig) -> dict[str, int]:
    d, hd, kv = cfg.d_model, cfg.head_dim, cfg.kv_heads
    norm = d * (2 if cfg.norm == "layernorm" and cfg.bias else 1)
    b = 1 if cfg.bias else 0
    qkv_out = (cfg.n_heads + 2 * kv) * hd
    attn = d * qkv_out + b * qkv_out + d * d + b * d
    up = cfg.ff_dim * (2 if cfg.mlp == "swiglu" else 1)
    mlp = d * up + b * up + cfg.ff_dim * d + b * d
    non_emb = cfg.n_layers * (2 * norm + attn + mlp) + norm
    emb = cfg.vocab_size * d + (cfg.max_seq_len * d if cfg.positions == "learned" else 0)
    if not cfg.tie_embeddings:
        emb += cfg.vocab_size * d
    return {"total": emb + non_emb, "embedding": emb, "non_embedding": non_emb, "active": emb + non_emb}


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("tie", [True, False])
def test_count_params_matches_unique_parameters_and_formula(style, tie):
    kw = dict(STYLES[style], tie_embeddings=tie)
    model = build(**kw)
    counts = model.count_params()
    assert counts["total"] == unique_param_count(model)
    assert counts == expected_params(model.cfg)
    assert counts["embedding"] + counts["non_embedding"] == counts["total"]


def test_untied_head_adds_vocab_times_width():
    tied = build(**dict(GPT2, tie_embeddings=True)).count_params()
    untied = build(**dict(GPT2, tie_embeddings=False)).count_params()
    assert untied["total"] - tied["total"] == V * D
    assert untied["embedding"] - tied["embedding"] == V * D
    assert untied["non_embedding"] == tied["non_embedding"]


def test_tied_head_shares_the_embedding_tensor():
    model = build(**GPT2)
    assert model.head.weight is model.tok_emb.weight
    model = build(**LLAMA)
    assert model.head.weight is not model.tok_emb.weight


def test_gpt2_small_preset_has_124m_parameters():
    cfg = preset("gpt2-small")
    shape = (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.vocab_size, cfg.max_seq_len)
    assert shape == (12, 768, 12, 50257, 1024)
    torch.manual_seed(0)
    model = Transformer(cfg)
    assert model.count_params()["total"] == 124_439_808
    assert unique_param_count(model) == 124_439_808


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_a_valid_config(name):
    cfg = preset(name)
    assert cfg.d_model % cfg.n_heads == 0
    assert preset(name, n_layers=1).n_layers == 1


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        (dict(d_model=30, n_heads=4), "model.n_heads"),
        (dict(n_heads=4, n_kv_heads=3), "model.n_kv_heads"),
        (dict(n_heads=4, n_kv_heads=0), "model.n_kv_heads"),
        (dict(norm="batchnorm"), "model.norm"),
        (dict(positions="alibi"), "model.positions"),
        (dict(mlp="relu"), "model.mlp"),
        (dict(d_model=12, n_heads=4, positions="rope"), "d_model/n_heads=3"),
        (dict(vocab_size=0), "model.vocab_size"),
        (dict(n_layers=0), "model.n_layers"),
        (dict(max_seq_len=0), "model.max_seq_len"),
        (dict(dropout=1.0), "model.dropout"),
        (dict(d_ff=0), "model.d_ff"),
    ],
)
def test_invalid_model_config_raises_naming_the_field(kw, needle):
    with pytest.raises(LmlabError) as e:
        ModelConfig(**kw)
    assert needle in str(e.value)


def test_odd_head_dim_is_fine_with_learned_positions():
    assert ModelConfig(d_model=12, n_heads=4, positions="learned").head_dim == 3


def test_unknown_preset_suggests_close_names():
    with pytest.raises(LmlabError) as e:
        preset("gpt2-smal")
    msg = str(e.value)
    assert "'gpt2-smal'" in msg
    assert "did you mean" in msg and "gpt2-small" in msg


def test_unknown_preset_without_close_match_lists_known():
    with pytest.raises(LmlabError) as e:
        preset("zzzz")
    for name in PRESETS:
        assert name in str(e.value)


def test_model_config_from_dict_roundtrip_and_unknown_keys():
    cfg = tiny_cfg(**LLAMA)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(LmlabError, match="d_modle"):
        ModelConfig.from_dict({"d_modle": 3})


def test_ff_dim_defaults():
    assert ModelConfig(d_model=96, mlp="gelu").ff_dim == 384
    # 8/3 * 96 = 256 (already a multiple of 32); 8/3 * 100 = 266.67 -> 288
    assert ModelConfig(d_model=96, n_heads=4, mlp="swiglu").ff_dim == 256
    assert ModelConfig(d_model=100, n_heads=4, mlp="swiglu").ff_dim == 288
    assert ModelConfig(d_model=96, mlp="swiglu", d_ff=50).ff_dim == 50


# --- RoPE ---------------------------------------------------------------------------------------


def test_apply_rope_preserves_norm_of_each_pair():
    hd, n = 16, 20
    cos, sin = rope_tables(hd, n, 10000.0)
    x = torch.randn(2, 3, n, hd, generator=torch.Generator().manual_seed(0))
    y = apply_rope(x, cos, sin)
    half = hd // 2
    pair_norm = lambda z: z[..., :half] ** 2 + z[..., half:] ** 2
    torch.testing.assert_close(pair_norm(y), pair_norm(x), rtol=1e-5, atol=1e-6)
    # position 0 is the identity rotation; later positions really rotate
    torch.testing.assert_close(y[:, :, 0], x[:, :, 0])
    assert (y[:, :, 1:] - x[:, :, 1:]).abs().max() > 0.1


def test_rope_score_depends_only_on_relative_position():
    hd, n = 16, 40
    cos, sin = rope_tables(hd, n, 10000.0)
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(hd, generator=g), torch.randn(hd, generator=g)
    qr = apply_rope(q.expand(1, 1, n, hd), cos, sin)[0, 0]
    kr = apply_rope(k.expand(1, 1, n, hd), cos, sin)[0, 0]
    score = lambda m, j: float(qr[m] @ kr[j])
    for m, j in [(5, 2), (10, 10), (3, 9), (0, 7)]:
        for shift in (1, 13, 25):
            assert score(m + shift, j + shift) == pytest.approx(score(m, j), abs=1e-4)
    # ... and it does depend on the relative offset
    assert abs(score(5, 2) - score(5, 4)) > 1e-2


def test_rope_tables_values():
    cos, sin = rope_tables(8, 5, 100.0)
    assert cos.shape == sin.shape == (5, 4)
    inv = torch.tensor([100.0 ** (-i / 8) for i in range(0, 8, 2)])
    torch.testing.assert_close(cos[3], torch.cos(3 * inv))
    torch.testing.assert_close(sin[3], torch.sin(3 * inv))


# --- grouped-query attention --------------------------------------------------------------------


def test_gqa_shapes_and_qkv_parameter_count():
    model = build(n_heads=4, n_kv_heads=2, positions="rope", norm="rmsnorm", mlp="swiglu")
    hd = D // 4
    qkv = model.blocks[0].attn.qkv
    assert qkv.weight.shape == ((4 + 2 * 2) * hd, D)
    assert qkv.weight.numel() == (4 + 2 * 2) * hd * D
    assert model.blocks[0].attn.proj.weight.shape == (D, 4 * hd)
    assert model(tokens(0)).shape == (2, T, V)


@pytest.mark.parametrize("positions", ["rope", "learned"])
def test_gqa_equals_mha_with_repeated_kv_heads(positions):
    kw = dict(positions=positions, norm="rmsnorm", mlp="swiglu", tie_embeddings=False)
    gqa = build(seed=11, n_heads=4, n_kv_heads=2, **kw)
    mha = build(seed=12, n_heads=4, n_kv_heads=None, **kw)
    hd, nkv, rep = D // 4, 2, 2
    state = {}
    for name, tensor in gqa.state_dict().items():
        if name.endswith("attn.qkv.weight"):
            q, k, v = tensor.split([4 * hd, nkv * hd, nkv * hd], dim=0)
            # query head h uses kv head h // rep
            k = k.view(nkv, hd, D).repeat_interleave(rep, dim=0).reshape(4 * hd, D)
            v = v.view(nkv, hd, D).repeat_interleave(rep, dim=0).reshape(4 * hd, D)
            tensor = torch.cat([q, k, v], dim=0)
        state[name] = tensor
    mha.load_state_dict(state)
    x = tokens(13)
    with torch.no_grad():
        out_gqa, out_mha = gqa(x), mha(x)
    torch.testing.assert_close(out_gqa, out_mha, rtol=1e-5, atol=1e-5)
    # a wrong head grouping (tile instead of repeat_interleave) gives a different model
    state2 = dict(state)
    for name, tensor in gqa.state_dict().items():
        if name.endswith("attn.qkv.weight"):
            q, k, v = tensor.split([4 * hd, nkv * hd, nkv * hd], dim=0)
            state2[name] = torch.cat([q, k.repeat(rep, 1), v.repeat(rep, 1)], dim=0)
    mha.load_state_dict(state2)
    with torch.no_grad():
        assert (mha(x) - out_gqa).abs().max() > 1e-3


# --- initialisation -----------------------------------------------------------------------------


def test_init_stds_and_residual_projection_scaling():
    torch.manual_seed(0)
    n_layers = 4
    cfg = ModelConfig(vocab_size=256, d_model=128, n_layers=n_layers, n_heads=4, bias=True, max_seq_len=64)
    model = Transformer(cfg)
    residual_std = 0.02 / math.sqrt(2 * n_layers)
    seen = set()
    for name, p in model.named_parameters():
        seen.add(name)
        if name.endswith(("attn.proj.weight", "mlp.down.weight")):
            assert p.std().item() == pytest.approx(residual_std, rel=0.05), name
            assert abs(p.mean().item()) < residual_std / 10
        elif p.dim() == 2:
            assert p.std().item() == pytest.approx(0.02, rel=0.05), name
        elif name.endswith("bias"):
            assert torch.all(p == 0), name
        else:
            assert torch.all(p == 1), name
    assert "blocks.3.attn.proj.weight" in seen and "blocks.0.mlp.down.weight" in seen


def test_init_is_deterministic_under_seed():
    a, b = build(seed=3, **LLAMA), build(seed=3, **LLAMA)
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb and torch.equal(pa, pb)


def test_activation_checkpointing_recomputes_blocks_and_changes_nothing():
    """Recomputing each block in backward gives the same loss and gradients (fp32), with each block run twice."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=61, d_model=32, n_layers=3, n_heads=4, max_seq_len=16)
    model = Transformer(cfg)
    x = torch.randint(0, 61, (3, 16))
    calls = []
    for block in model.blocks:
        block.register_forward_pre_hook(lambda *a: calls.append(1))  # recompute may stop early: count starts

    def grads(recompute: bool):
        model.zero_grad()
        model.checkpoint_blocks = recompute
        calls.clear()
        loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), x.flatten())
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters()], len(calls)

    plain_loss, plain, n_plain = grads(False)
    ckpt_loss, ckpt, n_ckpt = grads(True)
    assert ckpt_loss == plain_loss and (n_plain, n_ckpt) == (3, 6)
    for a, b in zip(plain, ckpt):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    model.eval()  # never at inference
    calls.clear()
    with torch.no_grad():
        model(x)
    assert len(calls) == 3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_compile_traces_the_model_once(dtype):
    """Training under torch.compile makes one graph and keeps it: nothing the model calls (the op counters, the
    native kernels' lazy loading) may split the graph or make the compiler guard on a value that changes between
    calls, which would compile again at every step until the compiler gave up and ran eagerly."""
    import torch._dynamo

    graphs = []

    def count(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    model = build().to(dtype)
    step = torch.compile(lambda x: model(x).float().square().mean(), backend=count)
    for seed in range(4):
        step(tokens(seed)).backward()
    assert len(graphs) == 1
