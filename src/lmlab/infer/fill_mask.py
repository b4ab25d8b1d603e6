"""`lmlab fill-mask`: a masked LM's top candidates, with probabilities, for each `[MASK]` in a text.

A masked LM predicts a hidden token from both sides of it at once; this verb
shows that distribution. `[MASK]` and the tokenizer's own mask token both mark a
blank. With a byte-level BPE tokenizer one space before a blank is left to the
blank, because words carry their leading space there (" Paris").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from lmlab.data.tokenizer import Tokenizer
from lmlab.device import pick_device
from lmlab.errors import LmlabError
from lmlab.model.checkpoint import load_checkpoint, load_model
from lmlab.model.transformer import Transformer


@dataclass
class FillMaskConfig:
    text: str = ""
    """Text with one or more [MASK] blanks."""
    checkpoint: str = "runs/quickstart/mlm/checkpoint"
    """Checkpoint of a masked (bidirectional) LM."""
    top_k: int = 5
    """Candidates to show per blank."""
    device: str = "cpu"
    """Device to run on."""
    POSITIONAL: ClassVar[tuple[str, ...]] = ("text",)


def encode_with_blanks(tok: Tokenizer, text: str) -> list[int]:
    """Token ids of `text`, each `[MASK]` (or the tokenizer's mask token) becoming the mask id."""
    if tok.mask_id is None:
        raise LmlabError("this tokenizer has no mask token, so it cannot mark a blank")
    mask = tok.id_to_token(tok.mask_id)
    pattern = r" ?(?:\[MASK\]|" + re.escape(mask) + ")" if tok.kind == "bpe" else r"\[MASK\]|" + re.escape(mask)
    if not re.search(pattern, text):
        raise LmlabError(f"no blank in the text: mark each with [MASK] (or {mask})")
    return tok.encode(re.sub(pattern, mask, text), template=True)


@torch.no_grad()
def fill_mask(model: Transformer, tok: Tokenizer, text: str, top_k: int = 5) -> list[dict[str, Any]]:
    """For each blank, in order: its token position and the top-k (token, id, probability)."""
    if model.cfg.causal:
        raise LmlabError("fill-mask needs a masked (bidirectional) model; this checkpoint is causal "
                         "(train one with `lmlab pretrain --objective mlm`)")
    ids = encode_with_blanks(tok, text)
    if len(ids) > model.cfg.max_seq_len:
        raise LmlabError(f"the text is {len(ids)} tokens; the model takes at most {model.cfg.max_seq_len}")
    device = next(model.parameters()).device
    probs = model.eval()(torch.tensor([ids], device=device))[0].float().softmax(-1)
    out = []
    for pos in [i for i, t in enumerate(ids) if t == tok.mask_id]:
        p, top = probs[pos].topk(min(top_k, probs.size(-1)))
        out.append({"position": pos, "candidates": [{"token": tok.decode([int(i)]), "id": int(i), "prob": float(q)}
                                                    for q, i in zip(p, top)]})
    return out


def run_fill_mask(cfg: FillMaskConfig) -> dict[str, Any]:
    device = pick_device(cfg.device)  # a bad device is an error now, not deep in loading
    if not cfg.text:
        raise LmlabError('give a text with a blank: lmlab fill-mask "Ada was born in [MASK]."')
    if cfg.top_k < 1:
        raise LmlabError(f"top_k must be >= 1, got {cfg.top_k}")
    ck = load_checkpoint(cfg.checkpoint)
    if ck.tokenizer_path is None:
        raise LmlabError(f"checkpoint {cfg.checkpoint} has no tokenizer.json")
    blanks = fill_mask(load_model(cfg.checkpoint, device), Tokenizer.load(ck.tokenizer_path), cfg.text, cfg.top_k)
    return {"text": cfg.text, "candidates": blanks}


def format_fill_mask(result: dict[str, Any]) -> str:
    """Each blank's candidates, most probable first."""
    lines = []
    for n, blank in enumerate(result["candidates"], 1):
        lines.append(f"blank {n} (token {blank['position']}):")
        lines += [f"  {c['prob']:7.2%}  {c['token']!r}" for c in blank["candidates"]]
    return "\n".join(lines) + "\n"
