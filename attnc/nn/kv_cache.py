"""A contiguous KV cache for incremental decoding with `attnc.nn.Attention`.

It holds tensors in the layout `attnc.kvcache_attention` reads (FlashAttention's `flash_attn_with_kvcache`):
keys and values `[B, max_seq_len, Hkv, D]` and the valid length of each sequence, int32 `[B]`. The module
appends a call's new keys and values after each sequence's cached ones and then attends over the cache, so
the queries are the newest positions of each sequence. Sequences may have different lengths (prompts of
different sizes prefilled one sequence at a time, or a batch whose rows were `reset` separately).
"""

from __future__ import annotations

from typing import Any

import torch


class KVCache:
    """Keys and values of the tokens seen so far, for one attention layer.

    Writes happen in place, so use the cache for inference (under `torch.no_grad()` or
    `torch.inference_mode()`): a step that overwrote a slot another step's graph still needs cannot be
    differentiated."""

    def __init__(self, batch_size: int, max_seq_len: int, num_kv_heads: int, head_dim: int, *,
                 dtype: torch.dtype = torch.float32, device: Any = None) -> None:
        for name, value in (("batch_size", batch_size), ("max_seq_len", max_seq_len),
                            ("num_kv_heads", num_kv_heads), ("head_dim", head_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"attnc.nn.KVCache: {name} must be a positive int, got {value!r}")
        shape = (batch_size, max_seq_len, num_kv_heads, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.lengths = torch.zeros(batch_size, dtype=torch.int32, device=self.keys.device)

    @property
    def max_seq_len(self) -> int:
        return self.keys.shape[1]

    def positions(self, new_tokens: int) -> torch.Tensor:
        """int64 `[B, new_tokens]`: the positions the next `new_tokens` tokens of each sequence will have."""
        steps = torch.arange(new_tokens, device=self.lengths.device)
        return self.lengths.long()[:, None] + steps

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Write `keys, values [B, L, Hkv, D]` after each sequence's cached tokens and extend its length."""
        self.check(keys, "keys")
        self.check(values, "values")
        B, L = keys.shape[:2]
        if L and int(self.lengths.max()) + L > self.max_seq_len:
            raise ValueError(f"attnc.nn.KVCache: appending {L} tokens to a sequence of {int(self.lengths.max())} "
                             f"exceeds max_seq_len={self.max_seq_len}")
        rows = torch.arange(B, device=self.keys.device)[:, None]
        where = self.positions(L)
        self.keys[rows, where] = keys.to(self.keys.dtype)
        self.values[rows, where] = values.to(self.values.dtype)
        self.lengths += L

    def reset(self) -> None:
        """Forget every sequence's tokens (the storage is kept)."""
        self.lengths.zero_()

    def check_layer(self, batch_size: int, num_kv_heads: int, head_dim: int, device: torch.device) -> None:
        """This cache fits a layer with these key/value heads and head dim, for a batch of `batch_size` on `device`."""
        B, _, Hkv, D = self.keys.shape
        if (B, Hkv, D) != (batch_size, num_kv_heads, head_dim):
            raise ValueError(f"attnc.nn.KVCache: the cache holds B={B}, Hkv={Hkv}, D={D} but the layer's call has "
                             f"B={batch_size}, Hkv={num_kv_heads}, D={head_dim}")
        if self.keys.device != device:
            raise ValueError(f"attnc.nn.KVCache: the cache is on {self.keys.device} but the input is on {device}")

    def check(self, t: torch.Tensor, name: str) -> None:
        """`t` is `[B, L, Hkv, D]` for this cache's B, Hkv and D, on its device."""
        B, _, Hkv, D = self.keys.shape
        if not isinstance(t, torch.Tensor) or t.dim() != 4 or t.shape[0] != B or tuple(t.shape[2:]) != (Hkv, D):
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"attnc.nn.KVCache: {name} must be [B={B}, L, Hkv={Hkv}, D={D}], got {got}")
        if t.device != self.keys.device:
            raise ValueError(f"attnc.nn.KVCache: {name} is on {t.device} but the cache is on {self.keys.device}")
