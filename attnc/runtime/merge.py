"""Merging attention computed over parts of the keys, through each part's log-sum-exp.

Attention of a query over keys K = K1 ∪ K2 ∪ ... is the lse-weighted mean of the attentions over each part:
with part outputs o_i and natural-log lse l_i, l = log Σ exp(l_i) and o = Σ exp(l_i - l) o_i. A part in which
a row sees no key has l_i = -inf and weight 0; a row that sees no key anywhere keeps o = 0 and l = -inf.
Ring attention merges one key block per step; split-KV decoding merges its splits the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def weight(lse_part: torch.Tensor, lse_total: torch.Tensor) -> torch.Tensor:
    """exp(l_i - l), 0 where the part has no key for the row (also where no part has one)."""
    return torch.where(torch.isneginf(lse_part), 0.0, torch.exp(lse_part - lse_total))


def merge_into(out: torch.Tensor, lse: torch.Tensor, out_part: torch.Tensor, lse_part: torch.Tensor) -> None:
    """Fold one part into running float32 accumulators `out [..., rows, Dv]` and `lse [..., rows]`, in place."""
    total = torch.logaddexp(lse, lse_part)
    kept, added = weight(lse, total), weight(lse_part, total)
    out.mul_(kept.unsqueeze(-1)).add_(out_part.float() * added.unsqueeze(-1))
    lse.copy_(total)


def merge_partials(outs: Sequence[torch.Tensor], lses: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(out in the parts' dtype, float32 lse) of attention over all the parts' keys."""
    if not outs or len(outs) != len(lses):
        raise ValueError("merge_partials: give one lse per output, and at least one part")
    out = torch.zeros(outs[0].shape, dtype=torch.float32, device=outs[0].device)
    lse = torch.full(lses[0].shape, float("-inf"), dtype=torch.float32, device=lses[0].device)
    for o, part in zip(outs, lses, strict=True):
        merge_into(out, lse, o, part.float())
    return out.to(outs[0].dtype), lse
