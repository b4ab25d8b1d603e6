"""Sentence embeddings from an encoder: mean of the final hidden states over real tokens, L2-normalised.

This is sentence-transformers' recipe for models such as all-MiniLM-L6-v2, so
an imported checkpoint of such a model gives the same vectors (tested to 1e-4).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from lmlab.data.tokenizer import Tokenizer
from lmlab.model.transformer import Transformer


def encode_padded(tok: Tokenizer, texts: Sequence[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) of the texts with the tokenizer's template; too-long texts keep their last (end) token."""
    rows = [ids if len(ids) <= max_len else ids[: max_len - 1] + ids[-1:]
            for ids in tok.encode_batch(texts, template=True)]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tok.pad_id or 0, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), True
    return ids, mask


@torch.no_grad()
def sentence_embeddings(model: Transformer, tok: Tokenizer, texts: Sequence[str], max_len: int = 256,
                        normalize: bool = True, batch_size: int = 32) -> torch.Tensor:
    """(len(texts), d_model) mean-pooled, optionally unit-length, embeddings."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(texts), batch_size):
        ids, mask = encode_padded(tok, texts[start: start + batch_size], min(max_len, model.cfg.max_seq_len))
        ids, mask = ids.to(device), mask.to(device)
        hidden = model(ids, attn_mask=mask, return_hidden=True).float()
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        out.append(F.normalize(pooled, dim=-1) if normalize else pooled)
    return torch.cat(out)
