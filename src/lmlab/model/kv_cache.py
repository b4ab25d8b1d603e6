"""A preallocated key/value cache: what makes decoding one token cost one token of compute.

Keys and values of every layer live in one tensor of shape
(layers, batch, kv_heads, max_len, head_dim), allocated once. Each row has its
own length, so a batch can hold prompts of different lengths: a row's new
tokens are written at positions `lengths[b], lengths[b] + 1, ...` and may attend
to keys `j <= lengths[b] + t`. A right-padded prefill from an empty cache is
therefore plain causal attention; the padding's keys are overwritten by the
row's next real token before anything can attend to them.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, n_layers: int, batch: int, kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        shape = (n_layers, batch, kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.lengths = torch.zeros(batch, dtype=torch.long, device=device)
        self.max_len = max_len
        self._positions: torch.Tensor | None = None
        self._same_start: int | None = None
        self._span = 0

    @classmethod
    def for_model(cls, cfg, batch: int, max_len: int | None = None, dtype: torch.dtype = torch.float32,
                  device: torch.device | str = "cpu") -> KVCache:
        return cls(cfg.n_layers, batch, cfg.kv_heads, max_len or cfg.max_seq_len, cfg.head_dim, dtype, device)

    @property
    def batch(self) -> int:
        return self.k.shape[1]

    def begin(self, n_new: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Positions (B, n_new) of the incoming tokens and the boolean attention mask (B, 1, n_new, K).

        The mask is None when no mask is needed: all rows aligned and either one new token per row
        (it may see every cached key) or a prefill into an empty cache (plain causal attention).
        """
        steps = torch.arange(n_new, device=self.lengths.device)
        positions = self.lengths[:, None] + steps[None, :]
        self._span = int(self.lengths.max()) + n_new
        if self._span > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; {self._span} needed")
        self._positions = positions
        lo = int(self.lengths.min())
        self._same_start = lo if lo + n_new == self._span else None
        if self._same_start is not None and (n_new == 1 or lo == 0):
            return positions, None
        keys = torch.arange(self._span, device=self.lengths.device)
        return positions, (keys[None, None, :] <= positions[:, :, None])[:, None]

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this layer's new keys/values (B, H, n_new, D); return all keys/values up to the span."""
        B, H, n, D = k.shape
        if self._same_start is not None:  # every row starts at the same position: a plain slice copy
            s = self._same_start
            self.k[layer, :, :, s: s + n] = k
            self.v[layer, :, :, s: s + n] = v
        else:
            idx = self._positions[:, None, :, None].expand(B, H, n, D)
            self.k[layer].scatter_(2, idx, k.to(self.k.dtype))
            self.v[layer].scatter_(2, idx, v.to(self.v.dtype))
        return self.k[layer, :, :, : self._span], self.v[layer, :, :, : self._span]

    def advance(self, n_valid: torch.Tensor | int) -> None:
        """Count the tokens each row really added (a padded prefill adds each row's own length)."""
        self.lengths += n_valid

    def select(self, rows: torch.Tensor) -> None:
        """Keep (and repeat) rows: `rows` indexes the current batch, e.g. [0, 0, 0, 1, 1, 1] for n=3."""
        self.k = self.k[:, rows]
        self.v = self.v[:, rows]
        self.lengths = self.lengths[rows]

    def extend(self, other: KVCache) -> None:
        """Append `other`'s rows (a new request's prefill) after this cache's rows."""
        if other.max_len != self.max_len or other.k.dtype != self.k.dtype:
            raise ValueError(f"cannot join a cache of {other.max_len} positions ({other.k.dtype}) to one of "
                             f"{self.max_len} ({self.k.dtype})")
        self.k = torch.cat([self.k, other.k], 1)
        self.v = torch.cat([self.v, other.v], 1)
        self.lengths = torch.cat([self.lengths, other.lengths])
