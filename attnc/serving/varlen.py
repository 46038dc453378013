"""Packed variable-length sequences (FlashAttention's varlen layout) on the same kernels, planner and launcher.

`q [total_q, Hq, D]`, `k, v [total_k, Hkv, D]` hold B sequences back to back; `cu_seqlens_q / _k [B + 1]`
are their offsets. The packed tensors are viewed (no copy) as one batch of `total` positions, and the
variant is wrapped so its mods see what they would see on each sequence alone: `b` the sequence's index,
`q_idx` / `kv_idx` positions inside it, read from per-position tables (`SEQ_Q[q]`, `POS_Q[q]`, ...) that
the wrapper also uses to allow only pairs of the same sequence. The tables are captured tensors: a new
packing changes kernel arguments, never the kernel. They vary by one index each, so the planner's per-tile
ranges classify every tile: tiles across two sequences, and tiles a causal or windowed mask rules out
inside one, are skipped; the grid covers the packed tiles, with no padding to the longest sequence.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import torch

from attnc.attention import Attention
from attnc.runtime import graph_ops


@dataclasses.dataclass
class PackedTables:
    """The packing a call installs: (sequence, position inside it) of every packed query and key position.
    The wrapped mods read them as attributes, so every call's tables are captured tensors (graph inputs
    under torch.compile), found through this object."""

    seq_q: torch.Tensor
    pos_q: torch.Tensor
    seq_k: torch.Tensor
    pos_k: torch.Tensor


class PackedVariant:
    """`mask_mod` / `score_mod` seen per sequence of a packing; `tables(...)` installs a packing."""

    def __init__(self, mask_mod: Callable | None, score_mod: Callable | None) -> None:
        # four distinct tensors, as every packing installs: the trace sees four tables, not one aliased
        self.packing = PackedTables(*(torch.zeros(0, dtype=torch.int32) for _ in range(4)))
        self.mask_mod, self.score_mod = _packed(mask_mod, score_mod, self.packing)
        self.attention: Attention = Attention(self.mask_mod, self.score_mod)

    def tables(self, cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor, total_q: int, total_k: int) -> None:
        self.packing.seq_q, self.packing.pos_q = position_tables(cu_seqlens_q, total_q)
        self.packing.seq_k, self.packing.pos_k = position_tables(cu_seqlens_k, total_k)


def _packed(mask_mod: Callable | None, score_mod: Callable | None,
            packing: PackedTables) -> tuple[Callable, Callable | None]:
    def mask(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        same = packing.seq_q[q_idx] == packing.seq_k[kv_idx]
        if mask_mod is None:
            return same
        return same & mask_mod(packing.seq_q[q_idx], h, packing.pos_q[q_idx], packing.pos_k[kv_idx])

    def score(s: Any, b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        return score_mod(s, packing.seq_q[q_idx], h, packing.pos_q[q_idx], packing.pos_k[kv_idx])

    return mask, (score if score_mod is not None else None)


def position_tables(cu_seqlens: torch.Tensor, total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sequence index, position inside it) of every packed position, int32 `[total]`."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    seq = torch.repeat_interleave(torch.arange(len(lengths), device=cu_seqlens.device), lengths, output_size=total)
    pos = torch.arange(total, device=cu_seqlens.device) - cu_seqlens.long()[seq]
    return seq.to(torch.int32), pos.to(torch.int32)


def packed_variant(mask_mod: Callable | None, score_mod: Callable | None) -> Any:
    """The wrapped variant of these mods, made once (a plain function: torch.compile calls it while building
    its graph, `graph_ops.made_once`)."""
    return _packed_variant(mask_mod, score_mod)


@functools.lru_cache(maxsize=32)
def _packed_variant(mask_mod: Callable | None, score_mod: Callable | None) -> PackedVariant:
    return PackedVariant(mask_mod, score_mod)


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                     cu_seqlens_k: torch.Tensor, *, mask_mod: Callable | None = None,
                     score_mod: Callable | None = None, scale: float | None = None, return_lse: bool = False,
                     max_seqlen_q: int | None = None, max_seqlen_k: int | None = None,
                     backend: str = "auto") -> Any:
    """Attention of B packed sequences (FlashAttention's varlen layout): `q [total_q, Hq, D]`,
    `k, v [total_k, Hkv, D]` (Dv may differ), `cu_seqlens_q / _k [B + 1]` int32 offsets. Mods see `b` = the
    sequence and `q_idx` / `kv_idx` = positions inside it (no implicit alignment: a causal mask of a
    sequence with fewer queries than keys is top-left unless the mask says otherwise). GQA when Hq is a
    multiple of Hkv. Differentiable (q, k, v, captured tensors). Returns `[total_q, Hq, Dv]` (and the lse
    `[total_q, Hq]`, float32, or float64 for float64 inputs). `max_seqlen_*`: accepted as in FlashAttention,
    checked when given."""
    _check(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    variant = graph_ops.made_once(packed_variant, mask_mod, score_mod)
    variant.tables(cu_seqlens_q, cu_seqlens_k, q.shape[0], k.shape[0])
    # [total, H, D] viewed as one batch [1, H, total, D]: no copy; the output keeps this layout
    q4, k4, v4 = (t.unsqueeze(0).transpose(1, 2) for t in (q, k, v))
    out, lse = variant.attention(q4, k4, v4, scale, True, enable_gqa=True, backend=backend)
    out = out.squeeze(0).transpose(0, 1)
    lse = lse.squeeze(0).transpose(0, 1).contiguous()
    return (out, lse) if return_lse else out


def _check(q: Any, k: Any, v: Any, cu_q: Any, cu_k: Any, max_q: int | None, max_k: int | None) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"attnc.varlen_attention: {name} must be [total, heads, head_dim], got {got}")
    if k.shape[0] != v.shape[0]:
        raise ValueError(f"attnc.varlen_attention: k and v must hold the same positions, got {k.shape[0]} and "
                         f"{v.shape[0]}")
    _check_offsets("cu_seqlens_q", cu_q, q.shape[0], q.device)
    _check_offsets("cu_seqlens_k", cu_k, k.shape[0], q.device)
    if cu_q.shape != cu_k.shape:
        raise ValueError(f"attnc.varlen_attention: cu_seqlens_q and cu_seqlens_k must describe the same number of "
                         f"sequences, got {cu_q.shape[0] - 1} and {cu_k.shape[0] - 1}")
    for name, bound, cu in (("max_seqlen_q", max_q, cu_q), ("max_seqlen_k", max_k, cu_k)):
        if bound is not None and cu.shape[0] > 1:
            graph_ops.require((cu[1:] - cu[:-1]).max() <= bound, f"attnc.varlen_attention: {name}={bound} but a "
                              "sequence has more positions", lambda cu=cu: f"{int((cu[1:] - cu[:-1]).max())}")


def _check_offsets(name: str, cu: Any, total: int, device: torch.device) -> None:
    if not isinstance(cu, torch.Tensor) or cu.dim() != 1 or cu.shape[0] < 1 or cu.dtype != torch.int32:
        got = f"{cu.dtype} {tuple(cu.shape)}" if isinstance(cu, torch.Tensor) else type(cu).__name__
        raise ValueError(f"attnc.varlen_attention: {name} must be a 1-D int32 tensor [B + 1], got {got}")
    if cu.device != device:
        raise ValueError(f"attnc.varlen_attention: {name} is on {cu.device} but q is on {device}")
    graph_ops.require((cu[0] == 0) & (cu[-1] == total),
                      f"attnc.varlen_attention: {name} must start at 0 and end at the packed length {total}",
                      lambda: f"{int(cu[0])} ... {int(cu[-1])}")
    graph_ops.require((cu[1:] >= cu[:-1]).all(),
                      f"attnc.varlen_attention: {name} must not decrease (sequence lengths are its steps)")
