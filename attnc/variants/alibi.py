"""ALiBi: a per-head linear penalty on the query-key distance, instead of position embeddings.

Origin: Press et al. 2022, "Train Short, Test Long: Attention with Linear Biases Enables Input Length
Extrapolation" (used by BLOOM and MPT).

    alibi(H):  score + slopes[h] * (kv_idx - q_idx)

For H a power of two the slopes are the geometric sequence 2^(-8/H), 2^(-16/H), ..., 2^(-8) (start and
ratio 2^(-8/H)). Otherwise, following the paper's reference implementation: with P the largest power of
two below H, the P slopes for P heads, then the first H - P of the slopes for 2P heads taken at every
other position (2^(-4/P), 2^(-12/P), ...), which interleave between the first ones.

The bias is meant for causal masks, where kv_idx <= q_idx and it is -slope * distance.
"""

from __future__ import annotations

from typing import Any

import torch

from attnc.variants.base import ScoreMod

TEXT = """\
# ALiBi; slopes[h] from alibi_slopes(H)
tensor slopes: float32[H]
score: score + slopes[h] * (kv - q)
"""


def alibi_slopes(num_heads: int) -> list[float]:
    """The ALiBi slope of each of `num_heads` heads."""
    if num_heads < 1:
        raise ValueError(f"alibi_slopes: num_heads must be at least 1, got {num_heads}")
    below = 1 << (num_heads.bit_length() - 1)  # the largest power of two <= num_heads
    slopes = _geometric(below)
    if below < num_heads:
        slopes += _geometric(2 * below)[0::2][: num_heads - below]
    return slopes


def _geometric(n: int) -> list[float]:
    """Slopes for a power-of-two head count n: 2^(-8 i / n) for i = 1..n."""
    return [2.0 ** (-8.0 * i / n) for i in range(1, n + 1)]


def alibi(num_heads: int, device: Any = None) -> ScoreMod:
    """ALiBi for `num_heads` query heads; the slopes tensor lives on `device`."""
    slopes = torch.tensor(alibi_slopes(num_heads), dtype=torch.float32, device=device)

    def alibi_score(score: Any, b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        return score + slopes[h] * (kv_idx - q_idx)

    options = {} if device is None else {"device": str(torch.device(device))}
    return ScoreMod.named("alibi", alibi_score, num_heads, **options)
