"""MoBA-style block selection: each query block attends to its top-k past key blocks and to itself.

Origin: Lu et al. 2025, "MoBA: Mixture of Block Attention for Long-Context LLMs" (Moonshot AI): a gate
scores every key block for a query; the top-k blocks are attended, the query's own block always, and
the mask stays causal. Here the gate score is given per query block, as a tensor
`gate [B, H, nQ, nKV]` (nQ, nKV: numbers of blocks of `block` tokens), and the selection is made once,
by the factory:

    selected[b, h, i, j] = j < i  &  j among the top_k past blocks of row (b, h, i) by gate score
    with qb = q_idx // block, kb = kv_idx // block:
    moba(gate, block, k):  q_idx >= kv_idx  &  (qb == kb  |  selected[b, h, qb, kb])

(MoBA counts the own block among its k; pass top_k = k - 1 for that convention.)
"""

from __future__ import annotations

from typing import Any

import torch

from attnc.variants.base import MaskMod, signature

TEXT = """\
# MoBA: blocks of 64 tokens, selected[b, h, i, j] from select_blocks(gate, top_k)
param block: int = 64
tensor selected: bool[B, H, NQ, NKV]
mask: (q >= kv) & ((q // block == kv // block) | selected[b, h, q // block, kv // block])
"""


def select_blocks(gate: torch.Tensor, top_k: int) -> torch.Tensor:
    """bool [B, H, nQ, nKV]: for each query block i, its `top_k` highest-scoring key blocks j < i (all of
    them when fewer are available)."""
    if gate.ndim != 4 or top_k < 0:
        raise ValueError(f"moba: gate is a tensor [B, H, nQ, nKV] and top_k >= 0, got shape {list(gate.shape)}, "
                         f"top_k={top_k}")
    q_blocks, kv_blocks = gate.shape[-2:]
    past = (torch.arange(kv_blocks, device=gate.device) < torch.arange(q_blocks, device=gate.device)[:, None])
    scores = gate.float().masked_fill(~past, -torch.inf)
    top = scores.topk(min(top_k, kv_blocks), dim=-1).indices
    chosen = torch.zeros(gate.shape, dtype=torch.bool, device=gate.device).scatter_(-1, top, True)
    return chosen & past  # rows with fewer than top_k past blocks picked some -inf (future) ones


def moba(gate: torch.Tensor, block: int, top_k: int) -> MaskMod:
    """Causal attention to the own block and the `top_k` best past blocks of `block` tokens, by `gate`."""
    selected = select_blocks(gate, top_k)

    def moba_mask(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        qb, kb = q_idx // block, kv_idx // block
        return (q_idx >= kv_idx) & ((qb == kb) | selected[b, h, qb, kb])

    # Keyed by the selection made here: the mod keeps it even if `gate` changes later.
    name, _ = signature("moba", (gate, block, top_k), {})
    _, key = signature("moba", (selected, block, top_k), {})
    return MaskMod(moba_mask, name, key)
