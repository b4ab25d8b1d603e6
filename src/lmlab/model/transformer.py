"""The one `Transformer`: GPT-2 or Llama style, causal or bidirectional.

An autoregressive LM and a masked LM are the same network; they differ only in
`config.causal` (the attention mask) and in the loss the trainer applies.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from lmlab.model import ops
from lmlab.model.config import ModelConfig
from lmlab.model.kv_cache import KVCache
from lmlab.model.rope import apply_rope, rope_tables

__all__ = ["Transformer", "apply_rope", "rope_tables"]


def is_hidden_matrix(name: str, p: torch.Tensor) -> bool:
    """A weight with both dimensions growing with width (q/k/v, projections, MLPs, routers): what muP
    initialises and trains differently. Embedding tables and the output head have one fixed dimension."""
    return p.dim() >= 2 and not name.startswith(("tok_emb.", "pos_emb.", "type_emb.", "head."))


class RMSNorm(nn.Module):
    """Root-mean-square norm (Llama): scale only, no centring, no bias."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.rms_norm(x, self.weight, self.eps)


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return RMSNorm(cfg.d_model, cfg.norm_eps)
    return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)


class Attention(nn.Module):
    """Multi-head (or grouped-query) self-attention."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_heads, self.n_kv, self.hd = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        qkv_bias = cfg.bias if cfg.qkv_bias is None else cfg.qkv_bias
        self.qkv = nn.Linear(cfg.d_model, (self.n_heads + 2 * self.n_kv) * self.hd, bias=qkv_bias)
        self.proj = nn.Linear(self.n_heads * self.hd, cfg.d_model, bias=cfg.bias)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                attn_mask: torch.Tensor | None, kv: tuple[KVCache, int] | None = None) -> torch.Tensor:
        """Attention over x (B, T, d_model); `kv` = (cache, layer) when decoding."""
        qkv = ops.linear(x, self.qkv)
        y = ops.attention(qkv, self.n_heads, self.n_kv, self.cfg.attn_scale, self.cfg.causal, rope=rope,
                          mask=attn_mask, kv=kv, dropout=self.cfg.dropout if self.training else 0.0)
        return ops.linear(y, self.proj)


class MLP(nn.Module):
    """GELU MLP (GPT-2, BERT) or SwiGLU (Llama): silu(x W_gate) * (x W_up), then W_down."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.kind = cfg.mlp
        width = cfg.ff_dim * (2 if cfg.mlp == "swiglu" else 1)
        self.up = nn.Linear(cfg.d_model, width, bias=cfg.bias)
        self.down = nn.Linear(cfg.ff_dim, cfg.d_model, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.mlp(x, self.up, self.down, self.kind)


class MoE(nn.Module):
    """Sparse mixture of expert MLPs: a router scores the experts, each token runs through its top k,
    and their outputs are summed weighted by the gate probabilities.

    Routing is dropless: tokens are grouped by expert and every expert takes all the tokens routed to
    it (no capacity limit, so no token ever skips its MLP). After each forward, `aux_loss` holds the
    Switch Transformer load-balancing loss (Fedus et al. 2021), n_experts * sum_e f_e * P_e with f_e
    the share of routing slots that went to expert e and P_e its mean router probability: 1 when the
    load is uniform, up to n_experts when one expert takes everything. `load` holds the tokens per expert.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.k, self.renormalize = cfg.experts_per_token, cfg.moe_renormalize
        self.router = nn.Linear(cfg.d_model, cfg.n_experts, bias=False)
        self.experts = nn.ModuleList(MLP(cfg) for _ in range(cfg.n_experts))
        self.aux_loss: torch.Tensor | None = None
        self.load: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The routed experts' mixture for x."""
        flat = x.reshape(-1, x.shape[-1])
        probs = self.router(flat).float().softmax(dim=-1)  # (N, E), fp32 so routing does not depend on autocast
        gates, chosen = probs.topk(self.k, dim=-1)  # (N, k)
        if self.renormalize:
            gates = gates / gates.sum(dim=-1, keepdim=True)
        slots = chosen.reshape(-1)  # the N*k (token, expert) assignments, token-major
        order = slots.argsort(stable=True)
        counts = torch.bincount(slots, minlength=len(self.experts))
        tokens, slot_gates = order // self.k, gates.reshape(-1)[order]
        out = torch.zeros_like(flat)
        start = 0
        for expert, n in zip(self.experts, counts.tolist()):
            if n:
                rows = tokens[start:start + n]
                out.index_add_(0, rows, expert(flat[rows]) * slot_gates[start:start + n, None].to(flat.dtype))
                start += n
        self.load = counts
        share = counts.float() / slots.numel()
        self.aux_loss = len(self.experts) * (share * probs.mean(dim=0)).sum()
        return out.view_as(x)


class Block(nn.Module):
    """Residual block. Pre-norm: x + attn(norm(x)), then x + mlp(norm(x)); post-norm (BERT):
    norm(x + attn(x)), then norm(x + mlp(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.post = cfg.norm_position == "post"
        self.norm1, self.attn = make_norm(cfg), Attention(cfg)
        self.norm2, self.mlp = make_norm(cfg), (MoE(cfg) if cfg.moe else MLP(cfg))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, rope, attn_mask, kv=None):
        if self.post:
            x = self.norm1(x + self.drop(self.attn(x, rope, attn_mask, kv)))
            return self.norm2(x + self.drop(self.mlp(x)))
        if self.drop.p == 0:  # skip the no-op dropout calls: they cost real time when decoding token by token
            x = x + self.attn(self.norm1(x), rope, attn_mask, kv)
            return x + self.mlp(self.norm2(x))
        x = x + self.drop(self.attn(self.norm1(x), rope, attn_mask, kv))
        return x + self.drop(self.mlp(self.norm2(x)))


class Transformer(nn.Module):
    """Token ids (B, T) -> logits (B, T, vocab)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.max_seq_len, cfg.d_model) if cfg.positions == "learned" else None
        self.type_emb = nn.Embedding(cfg.type_vocab_size, cfg.d_model) if cfg.type_vocab_size else None
        self.emb_norm = make_norm(cfg) if cfg.embed_norm else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.checkpoint_blocks = False
        """Activation checkpointing (a training choice, not the architecture): keep only each block's input
        during the forward pass and recompute the block in backward, about a third more compute for a
        fraction of the activation memory (`lmlab size --activation_checkpointing`)."""
        self.norm_f = make_norm(cfg) if cfg.norm_position == "pre" else None
        if cfg.head_transform:  # BERT's MLM head transform
            self.head_dense, self.head_norm = nn.Linear(cfg.d_model, cfg.d_model), make_norm(cfg)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=cfg.head_transform)
        if cfg.tie_embeddings:
            self.head.weight = self.tok_emb.weight
        if cfg.positions == "rope":
            cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 init: N(0, 0.02), residual output projections scaled by 1/sqrt(2 * n_layers). Under muP the
        hidden matrices' std shrinks by 1/sqrt(width_mult), keeping their variance ~ 1/fan_in; embeddings
        and the output head keep theirs."""
        std = self.cfg.init_std
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                scale = 1 / math.sqrt(2 * self.cfg.n_layers) if name.endswith(("proj.weight", "down.weight")) else 1
                if is_hidden_matrix(name, p):
                    scale /= math.sqrt(self.cfg.width_mult)
                nn.init.normal_(p, mean=0.0, std=std * scale)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
            else:
                nn.init.ones_(p)

    def forward(self, idx: torch.Tensor, attn_mask: torch.Tensor | None = None,
                return_hidden: bool = False, cache: KVCache | None = None,
                token_types: torch.Tensor | None = None, positions: torch.Tensor | None = None) -> torch.Tensor:
        """`attn_mask`: None, a (B, T) padding mask (True = real token) or a boolean mask broadcastable to
        (B, heads, T, T). With `cache`, `idx` holds each row's next tokens: they are placed after what
        the cache holds for that row and attend to it (call `cache.advance` afterwards). `positions` (B, T)
        overrides 0..T-1, e.g. restarting at 0 for each sequence packed into a row (with a block mask)."""
        B, T = idx.shape
        x = self.tok_emb(idx)
        if self.type_emb is not None:
            x = x + (self.type_emb(token_types) if token_types is not None else self.type_emb.weight[0])
        if cache is not None:
            positions, attn_mask = cache.begin(T)
        elif T > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {T} exceeds max_seq_len {self.cfg.max_seq_len}")
        if positions is not None and int(positions.max()) >= self.cfg.max_seq_len:
            raise ValueError(f"position {int(positions.max())} exceeds max_seq_len {self.cfg.max_seq_len}")
        rope = None
        if self.pos_emb is not None:
            x = x + (self.pos_emb(positions) if positions is not None else self.pos_emb.weight[:T])
        elif positions is not None:
            rope = (self.rope_cos[positions][:, None], self.rope_sin[positions][:, None])
        else:
            rope = (self.rope_cos[:T], self.rope_sin[:T])
        if self.emb_norm is not None:
            x = self.emb_norm(x)
        if self.drop.p:
            x = self.drop(x)
        recompute = self.checkpoint_blocks and self.training and cache is None and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks):
            if recompute:
                x = checkpoint(block, x, rope, attn_mask, None, use_reentrant=False)
            else:
                x = block(x, rope, attn_mask, (cache, i) if cache is not None else None)
        if self.norm_f is not None:
            x = self.norm_f(x)
        return x if return_hidden else self.logits(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final hidden states -> vocabulary logits (through BERT's head transform when it has one)."""
        if self.cfg.head_transform:
            hidden = self.head_norm(F.gelu(ops.linear(hidden, self.head_dense)))
        if self.cfg.width_mult != 1.0:  # muP's output multiplier: logits / width_mult
            hidden = hidden / self.cfg.width_mult
        return ops.linear(hidden, self.head)

    @torch.no_grad()
    def resize_vocab(self, n: int) -> None:
        """Grow the token table (and an untied head) to n rows, the new rows set to the mean of the old ones
        (a neutral start for tokens added after training, such as chat markers)."""
        old = self.cfg.vocab_size
        if n < old:
            raise ValueError(f"resize_vocab only grows the vocabulary ({old} -> {n})")
        if n == old:
            return
        emb = nn.Embedding(n, self.cfg.d_model).to(self.tok_emb.weight)
        emb.weight[:old] = self.tok_emb.weight
        emb.weight[old:] = self.tok_emb.weight.mean(0)
        self.tok_emb = emb
        head = nn.Linear(self.cfg.d_model, n, bias=self.head.bias is not None).to(self.head.weight)
        if self.cfg.tie_embeddings:
            head.weight = self.tok_emb.weight
        else:
            head.weight[:old] = self.head.weight
            head.weight[old:] = self.head.weight.mean(0)
        if head.bias is not None:
            head.bias[:old] = self.head.bias
            head.bias[old:] = self.head.bias.mean()
        self.head = head
        self.cfg.vocab_size = n

    def moe_aux_loss(self) -> torch.Tensor | None:
        """Mean over blocks of the mixture-of-experts load-balancing loss of the last forward (None if dense)."""
        losses = [b.mlp.aux_loss for b in self.blocks if isinstance(b.mlp, MoE) and b.mlp.aux_loss is not None]
        return torch.stack(losses).mean() if losses else None

    def count_params(self) -> dict[str, int]:
        """Total, embedding (token + position tables), non-embedding and active-per-token parameter counts.

        A tied head shares the token table, so it is counted once. `active` counts only the experts a
        token runs through (equal to `total` for a dense model).
        """
        total = sum(p.numel() for p in self.parameters())
        emb = sum(m.weight.numel() for m in (self.tok_emb, self.pos_emb, self.type_emb) if m is not None)
        if not self.cfg.tie_embeddings:
            emb += self.head.weight.numel()
        idle = 0
        for b in self.blocks:
            if isinstance(b.mlp, MoE):
                per_expert = sum(p.numel() for p in b.mlp.experts[0].parameters())
                idle += per_expert * (len(b.mlp.experts) - b.mlp.k)
        return {"total": total, "embedding": emb, "non_embedding": total - emb, "active": total - idle}
