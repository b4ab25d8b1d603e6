"""Checkpoints: one directory, written atomically, verified on load, never unpickled.

Layout: `model.safetensors` (fp32 weights), `config.json` (the ModelConfig),
`tokenizer.json` (when known), `trainer_state.pt` (optimizer, step, RNG;
tensors and plain containers only, read with `weights_only=True`) and
`meta.json` (sizes and sha256 of every file, so truncation or corruption is
reported by name instead of surfacing as a confusing tensor error).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lmlab.errors import LmlabError
from lmlab.io import atomic_dir, recover_dir, sha256_file
from lmlab.model.config import ModelConfig
from lmlab.model.transformer import Transformer

FORMAT = "lmlab-checkpoint-1"


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters (a tied head once) and persistent buffers, as contiguous fp32 CPU tensors."""
    state = {n: p.detach() for n, p in model.named_parameters()}
    persistent = set(model.state_dict().keys())
    state.update({n: b.detach() for n, b in model.named_buffers() if n in persistent})
    return {n: t.float().cpu().contiguous() if t.is_floating_point() else t.cpu().contiguous()
            for n, t in state.items()}


def save_checkpoint(path: str | Path, weights: dict[str, torch.Tensor], model_cfg: ModelConfig,
                    tokenizer: str | Path | None = None, trainer_state: dict[str, Any] | None = None,
                    meta: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint directory; an existing one is replaced only once the new one is complete."""
    path = Path(path)
    with atomic_dir(path) as tmp:
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


@dataclass
class Checkpoint:
    path: Path
    config: ModelConfig
    weights: dict[str, torch.Tensor]
    meta: dict[str, Any]
    trainer_state: dict[str, Any] | None = None
    tokenizer_path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def verify(path: str | Path) -> dict[str, Any]:
    """Check that every file listed in meta.json is present, complete and unchanged."""
    path = Path(path)
    recover_dir(path)
    if not path.is_dir():
        raise LmlabError(f"checkpoint not found: {path} (expected a directory with model.safetensors)")
    meta_file = path / "meta.json"
    if not meta_file.is_file():
        raise LmlabError(f"checkpoint {path} has no meta.json: incomplete or not an lmlab checkpoint")
    try:
        meta = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise LmlabError(f"checkpoint {path}: meta.json is corrupted (not valid JSON)") from None
    for name, info in meta.get("files", {}).items():
        f = path / name
        if not f.is_file():
            raise LmlabError(f"checkpoint {path} is missing {name}")
        if f.stat().st_size != info["bytes"]:
            raise LmlabError(f"checkpoint file {f} is truncated or altered: {f.stat().st_size} bytes, "
                             f"expected {info['bytes']}")
        if sha256_file(f) != info["sha256"]:
            raise LmlabError(f"checkpoint file {f} is corrupted (sha256 mismatch)")
    return meta


def load_checkpoint(path: str | Path, with_trainer_state: bool = False) -> Checkpoint:
    path = Path(path)
    meta = verify(path)
    try:
        cfg = ModelConfig.from_dict(json.loads((path / "config.json").read_text()))
    except (OSError, json.JSONDecodeError) as e:
        raise LmlabError(f"checkpoint {path}: cannot read config.json ({e})") from None
    try:
        weights = load_file(str(path / "model.safetensors"))
    except (SafetensorError, OSError) as e:
        raise LmlabError(f"checkpoint {path}: model.safetensors is unreadable ({e})") from None
    state = None
    if with_trainer_state:
        f = path / "trainer_state.pt"
        if not f.is_file():
            raise LmlabError(f"checkpoint {path} has no trainer_state.pt, so training cannot resume from it")
        try:
            state = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
            raise LmlabError(f"checkpoint {path}: trainer_state.pt is unreadable ({e})") from None
    tok = path / "tokenizer.json"
    return Checkpoint(path, cfg, weights, meta, state, tok if tok.is_file() else None)


def build_model(ckpt: Checkpoint, device: str | torch.device = "cpu") -> Transformer:
    """A `Transformer` with the checkpoint's weights (strict, except a tied head)."""
    model = Transformer(ckpt.config)
    try:
        missing, unexpected = model.load_state_dict(ckpt.weights, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise LmlabError(f"checkpoint {ckpt.path}: weights do not fit config.json ({str(e).splitlines()[-1]})") \
            from None
    if ckpt.config.tie_embeddings:
        missing = [m for m in missing if m != "head.weight"]
    if missing or unexpected:
        raise LmlabError(f"checkpoint {ckpt.path}: weights do not match config.json "
                         f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model.to(device)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> Transformer:
    model = build_model(load_checkpoint(path), device)
    model.eval()
    return model
