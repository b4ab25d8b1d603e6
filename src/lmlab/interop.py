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

from lmlab.errors import LmlabError
from lmlab.io import atomic_dir


@dataclass
class ImportHFConfig:
    src: str = ""
    """Hugging Face model directory (config.json + model.safetensors, optionally tokenizer.json)."""
    out: str = ""
    """lmlab checkpoint directory to write (default: runs/imported/<name of src>)."""
    max_seq_len: int | None = None
    """Keep only this much context (smaller position tables / RoPE caches); None = the model's own."""
    POSITIONAL: ClassVar[tuple[str, ...]] = ("src", "out")


@dataclass
class ExportHFConfig:
    checkpoint: str = ""
    """lmlab checkpoint directory to export."""
    out: str = ""
    """Hugging Face model directory to write."""
    POSITIONAL: ClassVar[tuple[str, ...]] = ("checkpoint", "out")


def import_hf(cfg: ImportHFConfig) -> dict[str, Any]:
    from lmlab.model.hf import load_hf
    from lmlab.model.transformer import Transformer
    from lmlab.train.checkpoint import model_state, save_checkpoint

    if not cfg.src:
        raise LmlabError("give the Hugging Face model directory: lmlab import-hf DIR [OUT]")
    src = Path(cfg.src)
    model_cfg, state, mtype = load_hf(src, cfg.max_seq_len)
    model = Transformer(model_cfg)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise LmlabError(f"{src}: tensor shapes do not match config.json ({str(e).splitlines()[-1].strip()})") \
            from None
    missing = [m for m in missing if not (m == "head.weight" and model_cfg.tie_embeddings)]
    if missing or unexpected:
        raise LmlabError(f"{src}: weights do not match config.json (missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]})")
    tok = src / "tokenizer.json"
    out = Path(cfg.out or f"runs/imported/{src.resolve().name}")
    save_checkpoint(out, model_state(model), model_cfg, tokenizer=tok if tok.is_file() else None,
                    meta={"source": {"huggingface_dir": str(src.resolve()), "model_type": mtype}})
    return {"checkpoint": str(out), "model_type": mtype, "params": model.count_params()["total"],
            "tokenizer": tok.is_file(), "config": model_cfg.to_dict()}


def _tokenizer_config(tokenizer_json: Path) -> dict[str, Any]:
    """What transformers' AutoTokenizer needs beside tokenizer.json: the class and the special tokens."""
    from lmlab.data.tokenizer import Tokenizer

    tok = Tokenizer.load(tokenizer_json)
    roles = {"bos_token": "<|bos|>", "eos_token": "<|eos|>", "pad_token": "<|pad|>", "mask_token": "<|mask|>"}
    out: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}
    for role, name in roles.items():
        if name in tok.special_ids:
            out[role] = tok.id_to_token(tok.special_ids[name])
    return out


def export_hf(cfg: ExportHFConfig) -> dict[str, Any]:
    from lmlab.model.hf import config_to_hf, weights_to_hf
    from lmlab.train.checkpoint import load_checkpoint

    if not cfg.checkpoint or not cfg.out:
        raise LmlabError("give a checkpoint and an output directory: lmlab export-hf CKPT DIR")
    ck = load_checkpoint(cfg.checkpoint)
    hf_cfg = config_to_hf(ck.config)
    weights = weights_to_hf(ck.config, ck.weights)
    out = Path(cfg.out)
    with atomic_dir(out) as tmp:
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=2) + "\n")
        if ck.tokenizer_path is not None:
            shutil.copyfile(ck.tokenizer_path, tmp / "tokenizer.json")
            (tmp / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(ck.tokenizer_path), indent=2))
    return {"out": str(out), "model_type": hf_cfg["model_type"], "architectures": hf_cfg["architectures"],
            "tensors": len(weights), "tokenizer": ck.tokenizer_path is not None}
