"""The model `lmlab size` is asked about, as a `ModelConfig`, from a name or a file.

A preset (lmlab's own or a published one), a Hugging Face config.json (or its
directory), an lmlab checkpoint's config.json or an lmlab YAML recipe all end
as one ModelConfig (a `PublishedConfig` for Hugging Face's), so every figure
is computed from the same description the model itself is built from.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from pathlib import Path
from typing import NamedTuple

from lmlab.errors import LmlabError
from lmlab.model.config import PRESETS, ModelConfig, preset
from lmlab.model.hf_config import published_from_hf
from lmlab.plan.presets import HF_PRESETS, preset_names


class LoadedModel(NamedTuple):
    """A model's configuration and, for the report, where it came from."""

    cfg: ModelConfig
    name: str
    """The preset name or path."""
    source: str
    """What kind of thing named it, e.g. 'lmlab preset' or 'Hugging Face config.json'."""
    family: str = "lmlab"
    """lmlab, or the Hugging Face model_type."""


def load_model(model: str) -> LoadedModel:
    """The model a preset name, a config.json, a directory holding one or a YAML recipe describes."""
    if model in PRESETS:
        return LoadedModel(preset(model), model, "lmlab preset")
    if model in HF_PRESETS:
        hf = HF_PRESETS[model]
        return LoadedModel(published_from_hf(hf, f"preset {model}"), model, "published config (Hugging Face)",
                           hf["model_type"])
    path = Path(model).expanduser()
    if path.is_dir():
        path = path / "config.json"
        if not path.is_file():
            raise LmlabError(f"{model}: no config.json in this directory (expected a Hugging Face model directory "
                             "or an lmlab checkpoint)")
    if not path.is_file():
        close = difflib.get_close_matches(model, preset_names(), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"presets: {', '.join(preset_names())}"
        raise LmlabError(f"unknown model {model!r}: neither a preset nor an existing file or directory; {hint}")
    return model_from_file(path)


def model_from_recipe(path: Path) -> LoadedModel:
    """An lmlab YAML recipe: its `model:` section (top level, as for `lmlab pretrain`, or under `pretrain:`,
    as in the quickstart recipe). Training takes vocab_size from the tokenizer, so a recipe that does not
    set it is sized at ModelConfig's default, and the source says so."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise LmlabError(f"{path}: not a readable YAML recipe ({e})") from None
    section = data.get("model") if isinstance(data, dict) else None
    if section is None and isinstance(data, dict) and isinstance(data.get("pretrain"), dict):
        section = data["pretrain"].get("model")
    if not isinstance(section, dict):
        raise LmlabError(f"{path}: an lmlab recipe needs a 'model:' section (or 'pretrain: model:') to size")
    note = ""
    tok = data.get("tokenizer") if isinstance(data.get("tokenizer"), dict) else {}
    if "vocab_size" not in section and isinstance(tok.get("vocab_size"), int):
        section, note = {**section, "vocab_size": tok["vocab_size"]}, "; vocab_size from its tokenizer section"
    elif "vocab_size" not in section:
        note = f"; vocab_size {ModelConfig.vocab_size} by default, training takes the tokenizer's"
    try:
        cfg = ModelConfig.from_dict(section)
    except (TypeError, ValueError, LmlabError) as e:
        raise LmlabError(f"{path}: invalid model section ({e})") from None
    return LoadedModel(cfg, str(path), f"lmlab recipe{note}")


def model_from_file(path: Path) -> LoadedModel:
    """A config.json: Hugging Face's (it has "model_type") or an lmlab checkpoint's ModelConfig dict; or an
    lmlab YAML recipe."""
    if path.suffix in (".yaml", ".yml"):
        return model_from_recipe(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LmlabError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(data, dict):
        raise LmlabError(f"{path}: config.json must be a JSON object, got {type(data).__name__}")
    if "model_type" in data:
        name = str(path.parent if path.name == "config.json" else path)
        return LoadedModel(published_from_hf(data, str(path)), name, "Hugging Face config.json", data["model_type"])
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise LmlabError(f"{path}: neither a Hugging Face config.json (no 'model_type' key) nor an lmlab "
                         f"ModelConfig (unknown keys: {', '.join(unknown[:5])})")
    try:
        cfg = ModelConfig.from_dict(data)
    except (TypeError, ValueError) as e:
        raise LmlabError(f"{path}: invalid lmlab model config ({e})") from None
    except LmlabError as e:
        raise LmlabError(f"{path}: {e}") from None
    return LoadedModel(cfg, str(path.parent), "lmlab checkpoint")
