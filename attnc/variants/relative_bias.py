"""Learned relative-position bias with clipped distance: one learned scalar per head and distance.

Origin: Shaw et al. 2018, "Self-Attention with Relative Position Representations" (distances clipped
to [-k, k]); the scalar-per-head form is the relative bias of Music Transformer / Transformer-XL
descendants and of Swin's (2-D) bias table.

    relative_bias(table):  score + table[h, clamp(q_idx - kv_idx, -D, D) + D]

`table` has shape [H, 2 D + 1]; it may require grad, and attnc then computes its gradient.
"""

from __future__ import annotations

from typing import Any

import torch

from attnc.variants.base import ScoreMod

TEXT = """\
# learned bias per head for distances clipped to [-128, 128]
param max_distance: int = 128
tensor table: float32[H, R]
score: score + table[h, clamp(q - kv, -max_distance, max_distance) + max_distance]
"""


def relative_bias(table: torch.Tensor) -> ScoreMod:
    """Add `table[h, d + D]` for the distance d = clamp(q_idx - kv_idx, -D, D), where table.shape[1] = 2 D + 1."""
    if table.ndim != 2 or table.shape[1] % 2 != 1 or not table.is_floating_point():
        raise ValueError(f"relative_bias: table is a float tensor of shape [H, 2 D + 1], got {table.dtype} of "
                         f"shape {list(table.shape)}")
    max_distance = (table.shape[1] - 1) // 2

    def relative_bias_score(score: Any, b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        return score + table[h, torch.clamp(q_idx - kv_idx, -max_distance, max_distance) + max_distance]

    return ScoreMod.named("relative_bias", relative_bias_score, table)
