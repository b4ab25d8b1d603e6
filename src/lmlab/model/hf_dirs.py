"""`lmlab import-hf` and `lmlab export-hf`: Hugging Face model directories <-> lmlab checkpoints.

The translation itself is `lmlab.model.hf`; this module moves whole directories:
config, weights and tokenizer, written atomically. An exported directory loads
with transformers' `from_pretrained` (model and `AutoTokenizer`).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from safetensors.torch import save_file

from lmlab.data.tokenizer import Tokenizer
from lmlab.errors import LmlabError
from lmlab.io import confined
from lmlab.model.checkpoint import load_checkpoint, model_from_state, model_state, save_checkpoint
from lmlab.model.hf import config_to_hf, load_hf, weights_to_hf
from lmlab.rundir import output_dir

EXPORT_FILES = ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "config.json")
"""What export-hf writes; config.json last, since without it the directory is not a model."""


@dataclass
class ImportHFConfig:
    src: str = ""
    """Hugging Face model directory (config.json + model.safetensors, optionally tokenizer.json)."""
    out: str = ""
    """lmlab checkpoint directory to write (default: runs/imported/<name of src>)."""
    max_seq_len: int | None = None
    """Keep only this much context (smaller position tables / RoPE caches); None = the model's own."""
    force: bool = False
    """Write into an output directory that holds other files too (they are left alone)."""
    POSITIONAL: ClassVar[tuple[str, ...]] = ("src", "out")


@dataclass
class ExportHFConfig:
    checkpoint: str = ""
    """lmlab checkpoint directory to export."""
    out: str = ""
    """Hugging Face model directory to write (new, or a previous export; other files need --force)."""
    force: bool = False
    """Write into a directory that holds other files too: only export-hf's own files there are replaced."""
    POSITIONAL: ClassVar[tuple[str, ...]] = ("checkpoint", "out")


def _hf_tokenizer(src: Path, vocab_size: int) -> Path | None:
    """The source's tokenizer.json, if any: inside the directory, a valid tokenizer, and fitting the model."""
    if not (src / "tokenizer.json").is_file() and not (src / "tokenizer.json").is_symlink():
        return None
    path = confined(src, "tokenizer.json", str(src))
    tok = Tokenizer.load(path)
    if tok.vocab_size > vocab_size:
        raise LmlabError(f"{path} has {tok.vocab_size} tokens but the model's vocab_size is {vocab_size}: "
                         f"they are not a pair")
    return path


def import_hf(cfg: ImportHFConfig) -> dict[str, Any]:
    if not cfg.src:
        raise LmlabError("give the Hugging Face model directory: lmlab import-hf DIR [OUT]")
    src = Path(cfg.src)
    model_cfg, state, mtype = load_hf(src, cfg.max_seq_len)
    model = model_from_state(model_cfg, state, src)
    tok = _hf_tokenizer(src, model_cfg.vocab_size)
    out = Path(cfg.out or f"runs/imported/{src.resolve().name}")
    save_checkpoint(out, model_state(model), model_cfg, tokenizer=tok, reads=[src], force=cfg.force,
                    verb="import-hf", meta={"source": {"huggingface_dir": str(src.resolve()), "model_type": mtype}})
    return {"checkpoint": str(out), "model_type": mtype, "params": model.count_params()["total"],
            "tokenizer": tok is not None, "config": model_cfg.to_dict()}


def _tokenizer_config(tokenizer_json: Path) -> dict[str, Any]:
    """What transformers' AutoTokenizer needs beside tokenizer.json: the class and the special tokens."""
    tok = Tokenizer.load(tokenizer_json)
    roles = {"bos_token": "<|bos|>", "eos_token": "<|eos|>", "pad_token": "<|pad|>", "mask_token": "<|mask|>"}
    out: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}
    for role, name in roles.items():
        if name in tok.special_ids:
            out[role] = tok.id_to_token(tok.special_ids[name])
    return out


def export_hf(cfg: ExportHFConfig) -> dict[str, Any]:
    if not cfg.checkpoint or not cfg.out:
        raise LmlabError("give a checkpoint and an output directory: lmlab export-hf CKPT DIR")
    ck = load_checkpoint(cfg.checkpoint)
    hf_cfg = config_to_hf(ck.config)
    weights = weights_to_hf(ck.config, ck.weights)
    out = Path(cfg.out)
    with output_dir(out, "export-hf", EXPORT_FILES, reads=[cfg.checkpoint], force=cfg.force) as tmp:
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=2) + "\n")
        if ck.tokenizer_path is not None:
            shutil.copyfile(ck.tokenizer_path, tmp / "tokenizer.json")
            (tmp / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(ck.tokenizer_path), indent=2))
    return {"out": str(out), "model_type": hf_cfg["model_type"], "architectures": hf_cfg["architectures"],
            "tensors": len(weights), "tokenizer": ck.tokenizer_path is not None}
