"""Checkpoints: one directory, written atomically, verified on load, never unpickled.

Layout: `model.safetensors` (fp32 weights), `config.json` (the ModelConfig),
`tokenizer.json` (when known), `trainer_state.pt` (optimizer, step, RNG;
tensors and plain containers only, read with `weights_only=True`) and
`meta.json` (sizes and sha256 of every file, so truncation or corruption is
reported by name instead of surfacing as a confusing tensor error).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lmlab.errors import LmlabError
from lmlab.io import recover_dir, sha256_file
from lmlab.model.config import ModelConfig
from lmlab.model.transformer import Transformer
from lmlab.rundir import check_output, output_dir

FORMAT = "lmlab-checkpoint-1"
FILES = ("model.safetensors", "config.json", "tokenizer.json", "trainer_state.pt", "meta.json")
"""Every file a checkpoint may hold. meta.json, written last, lists the others with their hashes."""
REQUIRED = ("model.safetensors", "config.json")


def model_state_keys(model: torch.nn.Module) -> set[str]:
    """The names `model_state` saves: parameters (a tied head once) and persistent buffers."""
    persistent = set(model.state_dict().keys())
    return {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers() if n in persistent}


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters (a tied head once) and persistent buffers, as contiguous fp32 CPU tensors."""
    state = {n: p.detach() for n, p in model.named_parameters()}
    persistent = set(model.state_dict().keys())
    state.update({n: b.detach() for n, b in model.named_buffers() if n in persistent})
    return {n: t.float().cpu().contiguous() if t.is_floating_point() else t.cpu().contiguous()
            for n, t in state.items()}


def save_checkpoint(path: str | Path, weights: dict[str, torch.Tensor], model_cfg: ModelConfig,
                    tokenizer: str | Path | None = None, trainer_state: dict[str, Any] | None = None,
                    meta: dict[str, Any] | None = None, reads: Iterable[str | Path] = (),
                    force: bool = False, verb: str = "checkpoint") -> Path:
    """Write a checkpoint directory; an existing one is replaced only once the new one is complete.

    A directory holding anything but checkpoint files is refused (or, with `force`, left alone beside the
    new files), and so is one among `reads`, the inputs of the verb that writes it.
    """
    path = Path(path)
    with output_dir(path, verb, FILES, reads, force, FORMAT) as tmp:
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(model_cfg.to_dict(), indent=2) + "\n")
        if tokenizer is not None:
            shutil.copyfile(tokenizer, tmp / "tokenizer.json")
        if trainer_state is not None:
            torch.save(trainer_state, tmp / "trainer_state.pt")
        files = {p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in sorted(tmp.iterdir())}
        info = {"format": FORMAT, **(meta or {}), "files": files}
        (tmp / "meta.json").write_text(json.dumps(info, indent=2) + "\n")
    return path


def check_target(path: str | Path, reads: Iterable[str | Path] = (), verb: str = "checkpoint") -> None:
    """Fail now, before any training, where `save_checkpoint(path, reads=reads)` would fail at the end."""
    check_output(Path(path), verb, FILES, reads, header_format=FORMAT)


@dataclass
class Checkpoint:
    path: Path
    config: ModelConfig
    weights: dict[str, torch.Tensor]
    meta: dict[str, Any]
    trainer_state: dict[str, Any] | None = None
    tokenizer_path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _read_meta(path: Path) -> dict[str, Any]:
    meta_file = path / "meta.json"
    if meta_file.is_symlink() or not meta_file.is_file():
        raise LmlabError(f"checkpoint {path} has no meta.json: incomplete or not an lmlab checkpoint")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise LmlabError(f"checkpoint {path}: meta.json is corrupted (not valid JSON)") from None
    if not isinstance(meta, dict):
        raise LmlabError(f"checkpoint {path}: meta.json is not a JSON object")
    files = meta.get("files")
    if not isinstance(files, dict) or any(name not in files for name in REQUIRED):
        raise LmlabError(f"checkpoint {path}: meta.json does not list {' and '.join(REQUIRED)} under 'files', "
                         f"so they cannot be verified; the file was edited or is not an lmlab checkpoint")
    return meta


def _check_entry(path: Path, name: str, info: Any) -> None:
    """One file of meta.json's list: a checkpoint file by name, a regular file, its size and hash as listed."""
    if name not in FILES[:-1]:
        raise LmlabError(f"checkpoint {path}: meta.json lists {name!r}, which is not a checkpoint file "
                         f"({', '.join(FILES[:-1])})")
    if not (isinstance(info, dict) and isinstance(info.get("bytes"), int) and isinstance(info.get("sha256"), str)):
        raise LmlabError(f"checkpoint {path}: meta.json's entry for {name} needs 'bytes' and 'sha256'")
    f = path / name
    if f.is_symlink():
        raise LmlabError(f"checkpoint file {f} is a symbolic link; a checkpoint holds only regular files")
    if not f.is_file():
        raise LmlabError(f"checkpoint {path} is missing {name}")
    if f.stat().st_size != info["bytes"]:
        raise LmlabError(f"checkpoint file {f} is truncated or altered: {f.stat().st_size} bytes, "
                         f"expected {info['bytes']}")
    if sha256_file(f) != info["sha256"]:
        raise LmlabError(f"checkpoint file {f} is corrupted (sha256 mismatch)")


def verify(path: str | Path) -> dict[str, Any]:
    """Check that every file the loader reads is listed in meta.json, present, complete and unchanged."""
    path = Path(path)
    recover_dir(path)
    if not path.is_dir():
        raise LmlabError(f"checkpoint not found: {path} (expected a directory with model.safetensors)")
    meta = _read_meta(path)
    for name, info in meta["files"].items():
        _check_entry(path, name, info)
    unlisted = [n for n in FILES[:-1] if n not in meta["files"] and (path / n).exists()]
    if unlisted:
        raise LmlabError(f"checkpoint {path} holds {', '.join(unlisted)} but meta.json does not list it, "
                         f"so it cannot be verified")
    return meta


def load_checkpoint(path: str | Path, with_trainer_state: bool = False) -> Checkpoint:
    path = Path(path)
    meta = verify(path)
    try:
        cfg = ModelConfig.from_dict(json.loads((path / "config.json").read_text(encoding="utf-8")))
    except (OSError, ValueError) as e:  # ValueError covers bad JSON and bad UTF-8
        raise LmlabError(f"checkpoint {path}: cannot read config.json ({e})") from None
    except LmlabError as e:
        raise LmlabError(f"checkpoint {path}: config.json: {e}") from None
    try:
        weights = load_file(str(path / "model.safetensors"))
    except (SafetensorError, OSError) as e:
        raise LmlabError(f"checkpoint {path}: model.safetensors is unreadable ({e})") from None
    state = None
    if with_trainer_state:
        f = path / "trainer_state.pt"
        if "trainer_state.pt" not in meta["files"]:
            raise LmlabError(f"checkpoint {path} has no trainer_state.pt, so training cannot resume from it")
        try:
            state = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
            raise LmlabError(f"checkpoint {path}: trainer_state.pt is unreadable ({e})") from None
    tok = path / "tokenizer.json"
    return Checkpoint(path, cfg, weights, meta, state, tok if tok.is_file() else None)


def _memory_bytes() -> int | None:
    """This machine's physical memory, where the OS says (POSIX); None elsewhere."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def model_from_state(cfg: ModelConfig, weights: dict[str, torch.Tensor], where: str | Path) -> Transformer:
    """A `Transformer` holding `weights` (strict, except a tied head), checked before anything is allocated.

    The model is first laid out on the meta device, which costs no memory: a config that does not fit its
    weights, or that would allocate more than the machine has (a max_seq_len of 1e9 asks for its position
    tables), is an error naming the cause instead of a crash or a swap storm.
    """
    cfg.validate()
    with torch.device("meta"):
        skeleton = Transformer(cfg)
    expected = skeleton.state_dict()
    missing = [k for k in expected if k not in weights and not (k == "head.weight" and cfg.tie_embeddings)]
    unexpected = [k for k in weights if k not in expected]
    wrong = [f"{k} {tuple(weights[k].shape)} (config: {tuple(v.shape)})" for k, v in expected.items()
             if k in weights and weights[k].shape != v.shape]
    if missing or unexpected or wrong:
        raise LmlabError(f"{where}: weights do not match config.json (missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}, wrong shape {wrong[:3]})")
    need = sum(t.numel() * t.element_size() for t in (*skeleton.parameters(), *skeleton.buffers()))
    have = _memory_bytes()
    if have is not None and need > have:
        raise LmlabError(f"{where}: this model needs {need / 1e9:.1f} GB to build (max_seq_len={cfg.max_seq_len}, "
                         f"vocab_size={cfg.vocab_size}, d_model={cfg.d_model}), more than this machine's "
                         f"{have / 1e9:.1f} GB")
    model = Transformer(cfg)
    model.load_state_dict(weights, strict=False)
    return model


def build_model(ckpt: Checkpoint, device: str | torch.device = "cpu") -> Transformer:
    """A `Transformer` with the checkpoint's weights (strict, except a tied head)."""
    return model_from_state(ckpt.config, ckpt.weights, f"checkpoint {ckpt.path}").to(device)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> Transformer:
    model = build_model(load_checkpoint(path), device)
    model.eval()
    return model
