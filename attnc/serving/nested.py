"""Nested jagged tensors (`torch.nested`, `layout=torch.jagged`) on the packed path.

`q [B, H, j, D]` as a jagged tensor (a `[B, j, H, D]` one transposed, the layout transformer code builds)
holds its sequences back to back in `values()` with `offsets()`: exactly the packed layout, so attention
runs through `varlen_attention` without a copy, with the mods seeing `b` = the sequence and positions inside
it (as torch's former `create_nested_block_mask` arranged), and the result is a jagged tensor again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from attnc.serving.varlen import varlen_attention


def is_jagged(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.is_nested and t.layout == torch.jagged


def nested_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *, mask_mod: Callable | None,
                     score_mod: Callable | None, scale: float | None, return_lse: bool, backend: str) -> Any:
    """Attention of jagged `[B, H, j, D]` tensors; returns a jagged `[B, H, j, Dv]` output (and lse `[B, H, j]`)."""
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not is_jagged(t) or t.dim() != 4 or t._ragged_idx != 2:
            raise ValueError(f"attnc: nested {name} must be a jagged tensor [B, H, j, D] (a [B, j, H, D] jagged "
                             "tensor transposed), like the other inputs")
    packed = [t.transpose(1, 2) for t in (query, key, value)]  # [B, j, H, D]: values() is [total, H, D]
    if packed[1].offsets() is not packed[2].offsets() and not torch.equal(packed[1].offsets(), packed[2].offsets()):
        raise ValueError("attnc: nested key and value must hold the same sequence lengths")
    cu_q, cu_k = (p.offsets().to(torch.int32) for p in packed[:2])
    out, lse = varlen_attention(*(p.values() for p in packed), cu_q, cu_k, mask_mod=mask_mod, score_mod=score_mod,
                                scale=scale, return_lse=True, backend=backend)
    offsets = packed[0].offsets()
    out = torch.nested.nested_tensor_from_jagged(out, offsets).transpose(1, 2)
    if not return_lse:
        return out
    return out, torch.nested.nested_tensor_from_jagged(lse, offsets).transpose(1, 2)
