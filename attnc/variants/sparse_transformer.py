"""Sparse Transformer's factorized patterns, strided and fixed, each as one causal mask.

Origin: Child et al. 2019, "Generating Long Sequences with Sparse Transformers". The paper splits each
pattern over two heads or layers, A(1) and A(2); here each mask is their union, the set a merged head
attends to (split them across heads by composing with a head condition if needed).

    strided(l):    q_idx >= kv_idx  &  (q_idx - kv_idx < l  |  (q_idx - kv_idx) % l == 0)
    fixed(l, c):   q_idx >= kv_idx  &  (q_idx // l == kv_idx // l  |  kv_idx % l >= l - c)

Strided: the previous l positions, and every l-th position before them. Fixed: the own block of l
positions, and the last c "summary" positions of every block.
"""

from __future__ import annotations

from typing import Any

from attnc.variants.base import MaskMod

TEXT = """\
# Sparse Transformer, strided pattern with stride 128
param stride: int = 128
mask: (q >= kv) & ((q - kv < stride) | ((q - kv) % stride == 0))
"""


def strided(stride: int) -> MaskMod:
    """The strided pattern: local keys within `stride`, then every `stride`-th key."""
    if stride < 1:
        raise ValueError(f"strided: stride must be at least 1, got {stride}")

    def strided_mask(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        distance = q_idx - kv_idx
        return (q_idx >= kv_idx) & ((distance < stride) | (distance % stride == 0))

    return MaskMod.named("strided", strided_mask, stride)


def fixed(stride: int, summary: int = 1) -> MaskMod:
    """The fixed pattern: the own block of `stride` keys, and the last `summary` keys of every block."""
    if not 1 <= summary <= stride:
        raise ValueError(f"fixed: need 1 <= summary <= stride, got summary={summary}, stride={stride}")

    def fixed_mask(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        same_block = q_idx // stride == kv_idx // stride
        return (q_idx >= kv_idx) & (same_block | (kv_idx % stride >= stride - summary))

    options = {} if summary == 1 else {"summary": summary}
    return MaskMod.named("fixed", fixed_mask, stride, **options)
