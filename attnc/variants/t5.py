"""T5 relative-position buckets: a learned bias per head for each log-spaced distance bucket.

Origin: Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified Text-to-Text
Transformer" (T5), `relative_position_bucket` in the Mesh TensorFlow reference.

With rel = kv_idx - q_idx, N = num_buckets (halved when bidirectional) and E = N // 2:

    bidirectional:  offset = N if rel > 0 else 0,  d = |rel|
    causal:         offset = 0,                    d = max(-rel, 0)
    bucket = offset + (d                                                           if d < E
                       min(N - 1, E + int(log(d / E) / log(max_distance / E) * (N - E)))  otherwise)
    score + table[bucket, h]                                       (table: [num_buckets, H])

Two forms: `t5_bias` computes the bucket inside the mod; `t5_bias_lookup` precomputes the bucket of
every relative position in [-max_distance, max_distance] (beyond it the bucket no longer changes) and
the mod reads `table[buckets[clamp(rel, -M, M) + M], h]`.

The bucket formula is evaluated in float32, as the reference does; a few distances land exactly on a
bucket boundary (d = 16, 32, 64 for the defaults), where a `log` that differs from torch's in the last
bit picks the neighbouring bucket. The lookup form computes the buckets once, with torch, and so agrees
with the reference on every device.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from attnc.variants.base import ScoreMod

TEXT = """\
# T5 bias, precomputed buckets: buckets[r + 128] is the bucket of relative position r in [-128, 128]
param max_distance: int = 128
tensor buckets: int32[R]
tensor table: float32[NB, H]
score: score + table[buckets[clamp(kv - q, -max_distance, max_distance) + max_distance], h]
"""


def t5_bucket(rel: Any, half: int, exact: int, log_ratio: float, bidirectional: bool) -> Any:
    """The bucket of relative position `rel = kv - q`, on tensors or traced values. `half` is N above,
    `exact` is E and `log_ratio` is log(max_distance / E)."""
    if bidirectional:
        offset = torch.where(rel > 0, half, 0)
        distance = torch.abs(rel)
    else:
        offset = 0
        distance = torch.clamp(-rel, min=0)
    # log of at least E: the value only matters where distance >= E, and log(0) is never taken
    scaled = torch.log(torch.clamp(distance, min=exact).float() / exact) / log_ratio * (half - exact)
    large = torch.clamp(exact + scaled.to(torch.int32), max=half - 1)
    return offset + torch.where(distance < exact, distance, large)


def _bucket_params(num_buckets: int, max_distance: int, bidirectional: bool) -> tuple[int, int, float]:
    half = num_buckets // 2 if bidirectional else num_buckets
    exact = half // 2
    if exact < 1 or max_distance <= exact:
        raise ValueError(f"t5: need at least 2 buckets per direction and max_distance above {exact}, got "
                         f"num_buckets={num_buckets}, max_distance={max_distance}")
    return half, exact, math.log(max_distance / exact)


def _check_table(table: torch.Tensor, num_buckets: int) -> None:
    if table.ndim != 2 or table.shape[0] != num_buckets or not table.is_floating_point():
        raise ValueError(f"t5: table is a float tensor of shape [num_buckets={num_buckets}, H], got {table.dtype} "
                         f"of shape {list(table.shape)}")


def t5_bias(table: torch.Tensor, num_buckets: int = 32, max_distance: int = 128,
            bidirectional: bool = True) -> ScoreMod:
    """T5 bias `table[bucket, h]` with the bucket computed in the mod (T5 defaults: 32 buckets, 128)."""
    _check_table(table, num_buckets)
    half, exact, log_ratio = _bucket_params(num_buckets, max_distance, bidirectional)

    def t5_score(score: Any, b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        return score + table[t5_bucket(kv_idx - q_idx, half, exact, log_ratio, bidirectional), h]

    return ScoreMod.named("t5_bias", t5_score, table, *_options(num_buckets, max_distance, bidirectional))


def t5_bucket_table(num_buckets: int = 32, max_distance: int = 128, bidirectional: bool = True,
                    device: Any = None) -> torch.Tensor:
    """int32 [2 M + 1]: the bucket of each relative position -M..M (M = max_distance), at index rel + M."""
    rel = torch.arange(-max_distance, max_distance + 1, device=device)
    return t5_bucket(rel, *_bucket_params(num_buckets, max_distance, bidirectional), bidirectional).to(torch.int32)


def t5_bias_lookup(table: torch.Tensor, num_buckets: int = 32, max_distance: int = 128,
                   bidirectional: bool = True) -> ScoreMod:
    """T5 bias reading a precomputed bucket per relative position (`t5_bucket_table`)."""
    _check_table(table, num_buckets)
    buckets = t5_bucket_table(num_buckets, max_distance, bidirectional, device=table.device)

    def t5_lookup_score(score: Any, b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        rel = torch.clamp(kv_idx - q_idx, -max_distance, max_distance)
        return score + table[buckets[rel + max_distance], h]

    return ScoreMod.named("t5_bias_lookup", t5_lookup_score, table,
                          *_options(num_buckets, max_distance, bidirectional))


def _options(num_buckets: int, max_distance: int, bidirectional: bool) -> tuple[Any, ...]:
    """The bucket arguments as shown in a name; all of them, so the key tells the variants apart."""
    return (num_buckets, max_distance) if bidirectional else (num_buckets, max_distance, False)
