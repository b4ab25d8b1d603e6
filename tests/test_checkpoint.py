"""Checkpoints (`lmlab.model.checkpoint`) and the atomic writes they rely on (`lmlab.io`)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmlab import io as lio
from lmlab.errors import LmlabError
from lmlab.model import ModelConfig, Transformer
from lmlab.model import checkpoint as ck

LLAMA = dict(norm="rmsnorm", positions="rope", mlp="swiglu", n_kv_heads=2, tie_embeddings=False)


def tiny_model(seed: int = 0, **kw) -> Transformer:
    torch.manual_seed(seed)
    base = dict(vocab_size=53, d_model=32, n_layers=2, n_heads=4, max_seq_len=16, bias=True)
    base.update(kw)
    return Transformer(ModelConfig(**base)).eval()


def save(path: Path, model: Transformer, **kw) -> Path:
    return ck.save_checkpoint(path, ck.model_state(model), model.cfg, **kw)


def trainer_state() -> dict:
    return {
        "step": 42,
        "loss": 1.25,
        "rng": torch.random.get_rng_state(),
        "optimizer": {"state": {0: {"exp_avg": torch.arange(6.0).view(2, 3), "step": torch.tensor(3.0)}},
                      "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.99), "params": [0, 1]}]},
        "history": [[1, 2.5], [2, 2.0, [3, 4]]],
        "name": "run",
    }


def assert_same_state(a, b):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same_state(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_state(x, y)
    else:
        assert type(a) is type(b) and a == b


def leftovers(parent: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name not in keep)


# --- round trip ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kw", [{}, LLAMA], ids=["gpt2", "llama"])
def test_roundtrip_weights_and_logits(tmp_path, kw):
    model = tiny_model(**kw)
    path = save(tmp_path / "ckpt", model, meta={"step": 7})
    loaded = ck.load_checkpoint(path)
    assert loaded.config == model.cfg
    assert loaded.meta["format"] == ck.FORMAT and loaded.meta["step"] == 7
    assert loaded.trainer_state is None and loaded.tokenizer_path is None
    original = ck.model_state(model)
    assert loaded.weights.keys() == original.keys()
    for name, t in original.items():
        assert loaded.weights[name].dtype == torch.float32
        assert torch.equal(loaded.weights[name], t), name

    rebuilt = ck.load_model(path)
    assert not rebuilt.training
    x = torch.randint(0, 53, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


def test_tied_head_is_stored_once(tmp_path):
    model = tiny_model(tie_embeddings=True)
    path = save(tmp_path / "ckpt", model)
    stored = load_file(str(path / "model.safetensors"))
    assert "head.weight" not in stored
    assert set(stored) == {n for n, _ in model.named_parameters()}
    rebuilt = ck.load_model(path)
    assert rebuilt.head.weight is rebuilt.tok_emb.weight
    assert torch.equal(rebuilt.head.weight, model.tok_emb.weight)

    untied = tiny_model(tie_embeddings=False)
    stored_untied = load_file(str(save(tmp_path / "untied", untied) / "model.safetensors"))
    assert "head.weight" in stored_untied
    size = lambda d: (d / "model.safetensors").stat().st_size
    extra = size(tmp_path / "untied") - size(path)
    # one more fp32 vocab x d_model table, plus its header entry
    assert 53 * 32 * 4 <= extra < 53 * 32 * 4 + 256


def test_model_state_is_fp32_contiguous_and_skips_rope_buffers():
    model = tiny_model(**LLAMA).to(torch.bfloat16)
    state = ck.model_state(model)
    assert all(t.dtype == torch.float32 and t.is_contiguous() for t in state.values())
    assert not any("rope" in n for n in state)


def test_meta_lists_every_file_with_size_and_hash(tmp_path):
    tok = tmp_path / "tok.json"
    tok.write_text('{"fake": "tokenizer"}')
    path = save(tmp_path / "ckpt", tiny_model(), tokenizer=tok, trainer_state=trainer_state())
    meta = json.loads((path / "meta.json").read_text())
    assert set(meta["files"]) == {"model.safetensors", "config.json", "tokenizer.json", "trainer_state.pt"}
    for name, info in meta["files"].items():
        assert info["bytes"] == (path / name).stat().st_size
        assert info["sha256"] == lio.sha256_file(path / name)
    loaded = ck.load_checkpoint(path)
    assert loaded.tokenizer_path == path / "tokenizer.json"
    assert loaded.tokenizer_path.read_text() == tok.read_text()


def test_trainer_state_roundtrip_with_weights_only(tmp_path):
    state = trainer_state()
    path = save(tmp_path / "ckpt", tiny_model(), trainer_state=state)
    loaded = ck.load_checkpoint(path, with_trainer_state=True)
    assert_same_state(state, loaded.trainer_state)
    # the file really is loadable with weights_only=True (nothing that needs unpickling code)
    torch.load(path / "trainer_state.pt", weights_only=True)


def test_missing_trainer_state_is_an_error_only_when_asked(tmp_path):
    path = save(tmp_path / "ckpt", tiny_model())
    assert ck.load_checkpoint(path).trainer_state is None
    with pytest.raises(LmlabError, match="trainer_state.pt"):
        ck.load_checkpoint(path, with_trainer_state=True)


class NotATensor:
    """A class whose instances could only be restored by running pickle code."""

    def __init__(self) -> None:
        self.x = 1


def test_trainer_state_with_arbitrary_objects_is_refused(tmp_path):
    path = save(tmp_path / "ckpt", tiny_model(), trainer_state={"step": 1, "obj": NotATensor()})
    with pytest.raises(LmlabError, match="trainer_state.pt is unreadable"):
        ck.load_checkpoint(path, with_trainer_state=True)


# --- corruption is reported by file name ----------------------------------------------------------


def test_truncated_weights_are_reported(tmp_path):
    path = save(tmp_path / "ckpt", tiny_model())
    f = path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(LmlabError, match="model.safetensors") as e:
        ck.load_checkpoint(path)
    assert "truncated" in str(e.value)
    with pytest.raises(LmlabError, match="model.safetensors"):
        ck.load_model(path)


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "trainer_state.pt"])
def test_flipped_byte_is_reported(tmp_path, name):
    path = save(tmp_path / "ckpt", tiny_model(), trainer_state=trainer_state())
    f = path / name
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))
    with pytest.raises(LmlabError, match=name) as e:
        ck.load_checkpoint(path, with_trainer_state=True)
    assert "sha256" in str(e.value)


def test_deleted_meta_is_reported(tmp_path):
    path = save(tmp_path / "ckpt", tiny_model())
    (path / "meta.json").unlink()
    with pytest.raises(LmlabError, match="meta.json"):
        ck.load_checkpoint(path)


def test_corrupted_meta_is_reported(tmp_path):
    path = save(tmp_path / "ckpt", tiny_model())
    (path / "meta.json").write_text("{not json")
    with pytest.raises(LmlabError, match="meta.json"):
        ck.load_checkpoint(path)


def test_deleted_listed_file_is_reported(tmp_path):
    path = save(tmp_path / "ckpt", tiny_model(), trainer_state=trainer_state())
    (path / "trainer_state.pt").unlink()
    with pytest.raises(LmlabError, match="missing trainer_state.pt"):
        ck.load_checkpoint(path)


def rewrite_meta(path: Path) -> None:
    """Make meta.json agree with whatever is on disk now (to get past the hash check)."""
    meta = json.loads((path / "meta.json").read_text())
    meta["files"] = {n: {"bytes": (path / n).stat().st_size, "sha256": lio.sha256_file(path / n)}
                     for n in meta["files"]}
    (path / "meta.json").write_text(json.dumps(meta))


def test_unreadable_trainer_state_with_matching_hash_is_reported(tmp_path):
    path = save(tmp_path / "ckpt", tiny_model(), trainer_state=trainer_state())
    (path / "trainer_state.pt").write_bytes(b"this is not a torch file")
    rewrite_meta(path)
    with pytest.raises(LmlabError, match="trainer_state.pt is unreadable"):
        ck.load_checkpoint(path, with_trainer_state=True)


def test_unreadable_safetensors_with_matching_hash_is_reported(tmp_path):
    path = save(tmp_path / "ckpt", tiny_model())
    (path / "model.safetensors").write_bytes(b"\x00" * 64)
    rewrite_meta(path)
    with pytest.raises(LmlabError, match="model.safetensors is unreadable"):
        ck.load_checkpoint(path)


def test_weights_not_matching_config_are_reported(tmp_path):
    tied = tiny_model(tie_embeddings=True)
    cfg = ModelConfig(**{**tied.cfg.to_dict(), "tie_embeddings": False})
    path = ck.save_checkpoint(tmp_path / "ckpt", ck.model_state(tied), cfg)
    with pytest.raises(LmlabError, match="head.weight"):
        ck.load_model(path)


def test_missing_checkpoint_directory(tmp_path):
    with pytest.raises(LmlabError, match="checkpoint not found"):
        ck.load_checkpoint(tmp_path / "nope")


# --- failed saves leave the previous checkpoint intact ---------------------------------------------


def boom(*args, **kwargs):
    raise RuntimeError("disk full (simulated)")


@pytest.mark.parametrize("where", ["safetensors", "torch.save"])
def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch, where):
    old = tiny_model(seed=1)
    path = save(tmp_path / "ckpt", old, trainer_state={"step": 1}, meta={"step": 1})
    before = {p.name: p.read_bytes() for p in path.iterdir()}

    if where == "safetensors":
        monkeypatch.setattr(ck, "save_file", boom)
    else:
        monkeypatch.setattr(ck.torch, "save", boom)
    new = tiny_model(seed=2)
    with pytest.raises(RuntimeError, match="simulated"):
        save(path, new, trainer_state={"step": 2}, meta={"step": 2})
    monkeypatch.undo()

    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert leftovers(tmp_path, {"ckpt"}) == []  # no temporary directories left behind
    loaded = ck.load_checkpoint(path, with_trainer_state=True)
    assert loaded.meta["step"] == 1 and loaded.trainer_state == {"step": 1}
    for name, t in ck.model_state(old).items():
        assert torch.equal(loaded.weights[name], t)


def test_successful_save_replaces_previous_checkpoint_completely(tmp_path):
    tok = tmp_path / "tok.json"
    tok.write_text("{}")
    path = save(tmp_path / "ckpt", tiny_model(seed=1), tokenizer=tok, trainer_state={"step": 1})
    new = tiny_model(seed=2)
    save(path, new)
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "meta.json", "model.safetensors"]
    assert leftovers(tmp_path, {"ckpt", "tok.json"}) == []
    loaded = ck.load_checkpoint(path)
    for name, t in ck.model_state(new).items():
        assert torch.equal(loaded.weights[name], t)


# --- lmlab.io: atomic writes -----------------------------------------------------------------------


def umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def test_atomic_write_replaces_content_without_temp_files(tmp_path):
    target = tmp_path / "sub" / "f.json"
    lio.write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    lio.write_text(target, "second")
    assert target.read_text() == "second"
    lio.write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    lio.write_jsonl(target, [{"a": 1}, {"b": "é"}])
    assert target.read_text(encoding="utf-8") == '{"a": 1}\n{"b": "é"}\n'
    assert leftovers(target.parent, {"f.json"}) == []


def test_atomic_file_has_normal_permissions(tmp_path):
    target = tmp_path / "f.txt"
    lio.write_text(target, "x")
    mode = stat.S_IMODE(target.stat().st_mode)
    assert mode == 0o666 & ~umask()  # not mkstemp's 0600
    if not umask() & 0o044:
        assert mode & 0o044  # group/others can read, as with a plain open()


def test_atomic_path_exception_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(ValueError, match="midway"):
        with lio.atomic_path(target) as tmp:
            tmp.write_text("half-written new")
            assert target.read_text() == "old"  # not visible before success
            raise ValueError("midway")
    assert target.read_text() == "old"
    assert leftovers(tmp_path, {"f.txt"}) == []


def test_atomic_path_exception_without_old_file_creates_nothing(tmp_path):
    with pytest.raises(ValueError):
        with lio.atomic_path(tmp_path / "new.txt") as tmp:
            tmp.write_text("partial")
            raise ValueError
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_directory_as_a_whole(tmp_path):
    target = tmp_path / "d"
    with lio.atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("1")
        (tmp / "nested").mkdir()
        (tmp / "nested" / "b.txt").write_text("2")
        assert not target.exists()
    assert (target / "nested" / "b.txt").read_text() == "2"
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~umask()
    with lio.atomic_dir(target) as tmp:
        (tmp / "c.txt").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["c.txt"]
    assert leftovers(tmp_path, {"d"}) == []


def test_atomic_dir_exception_leaves_old_dir_and_no_temp(tmp_path):
    target = tmp_path / "d"
    target.mkdir()
    (target / "keep.txt").write_text("old")
    with pytest.raises(KeyError):
        with lio.atomic_dir(target) as tmp:
            (tmp / "keep.txt").write_text("new")
            (tmp / "extra.txt").write_text("new")
            raise KeyError("midway")
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]
    assert (target / "keep.txt").read_text() == "old"
    assert leftovers(tmp_path, {"d"}) == []


def test_atomic_dir_failed_final_rename_keeps_old_dir_at_path(tmp_path, monkeypatch):
    target = tmp_path / "d"
    target.mkdir()
    (target / "keep.txt").write_text("old")
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst) == target:  # the rename of the finished temp dir onto `path`
            raise OSError("rename failed (simulated)")
        return real_replace(src, dst)

    monkeypatch.setattr(lio.os, "replace", replace)
    with pytest.raises(OSError, match="simulated"):
        with lio.atomic_dir(target) as tmp:
            (tmp / "keep.txt").write_text("new")
    monkeypatch.undo()
    # Every rename onto `path` failed here (the undo too), as after a crash between the two
    # renames: the next writer or reader (atomic_dir, load_checkpoint) recovers the old version.
    lio.recover_dir(target)
    assert (target / "keep.txt").read_text() == "old"
