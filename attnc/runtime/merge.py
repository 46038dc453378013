"""Merging attention computed over parts of the keys, through each part's log-sum-exp.

Attention of a query over keys K = K1 ∪ K2 ∪ ... is the lse-weighted mean of the attentions over each part:
with part outputs o_i and natural-log lse l_i, l = log Σ exp(l_i) and o = Σ exp(l_i - l) o_i. A part in which
a row sees no key has l_i = -inf and weight 0; a row that sees no key anywhere keeps o = 0 and l = -inf.
Ring attention merges one key block per step; split-KV decoding merges its splits the same way.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def weight(lse_part: torch.Tensor, lse_total: torch.Tensor) -> torch.Tensor:
    """exp(l_i - l), 0 where the part has no key for the row (also where no part has one); the exponent is
    masked too, so no NaN reaches a gradient."""
    none = torch.isneginf(lse_part)
    return torch.where(none, 0.0, torch.exp(torch.where(none, 0.0, lse_part - lse_total)))


def merge_into(out: torch.Tensor, lse: torch.Tensor, out_part: torch.Tensor, lse_part: torch.Tensor) -> None:
    """Fold one part into running accumulators `out [..., rows, Dv]` and `lse [..., rows]` (float32, or float64
    for float64 parts), in place."""
    total = torch.logaddexp(lse, lse_part.to(lse.dtype))
    kept, added = weight(lse, total), weight(lse_part.to(lse.dtype), total)
    out.mul_(kept.unsqueeze(-1)).add_(out_part.to(out.dtype) * added.unsqueeze(-1))
    lse.copy_(total)


def merge_attention(out_a: Any, lse_a: Any, out_b: torch.Tensor | None = None,
                    lse_b: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention over the union of disjoint key sets from each set's `(out, lse)`: `merge_attention(out_a,
    lse_a, out_b, lse_b)` or `merge_attention([out_1, out_2, ...], [lse_1, lse_2, ...])` (cascade attention over
    a shared prefix, context parallelism, split-KV). `out [..., rows, Dv]` with natural-log `lse [..., rows]`
    (any leading layout, e.g. `[B, H]` or varlen's `[total, H]` for `out [total, H, Dv]`). A row without keys
    in a part (lse -inf) takes nothing from it; a row without keys anywhere gives 0 and -inf. Differentiable,
    with finite gradients everywhere. Returns (out in the parts' dtype, lse in float32, or float64 for float64
    parts)."""
    if isinstance(out_a, list | tuple):
        outs, lses = list(out_a), list(lse_a)
    else:
        if out_b is None or lse_b is None:
            raise ValueError("merge_attention: give two (out, lse) pairs, or a list of outputs and a list of lses")
        outs, lses = [out_a, out_b], [lse_a, lse_b]
    if not outs or len(outs) != len(lses):
        raise ValueError(f"merge_attention: give one lse per output, got {len(outs)} outputs and {len(lses)} lses")
    for o, lse in zip(outs, lses, strict=True):
        if tuple(o.shape[:-1]) != tuple(lse.shape) or o.shape != outs[0].shape:
            raise ValueError(f"merge_attention: every out must be [..., rows, Dv] of one shape with lse [..., rows]; "
                             f"got out {tuple(o.shape)} with lse {tuple(lse.shape)}")
    acc = torch.float64 if torch.float64 in (outs[0].dtype, lses[0].dtype) else torch.float32
    parts = torch.stack([lse.to(acc) for lse in lses])
    top = parts.amax(0)
    top = torch.where(torch.isinf(top), 0.0, top)
    total = weight(parts, top).sum(0)
    empty = total == 0
    lse = torch.where(empty, -math.inf, torch.log(torch.where(empty, 1.0, total)) + top)
    safe_lse = torch.where(empty, 0.0, lse)
    out = sum(weight(p, safe_lse).unsqueeze(-1) * o.to(acc) for o, p in zip(outs, parts, strict=True))
    return out.to(outs[0].dtype), lse
