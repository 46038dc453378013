"""Causal masks: each query attends to itself and to earlier keys.

Origin: autoregressive decoders (Vaswani et al. 2017, "Attention Is All You Need", decoder self-attention).

    causal():                          q_idx >= kv_idx                          (top-left aligned)
    causal_bottom_right(Q_LEN, KV_LEN): q_idx + (KV_LEN - Q_LEN) >= kv_idx      (bottom-right aligned)

Top-left alignment puts query 0 on key 0. Bottom-right alignment puts the last query on the last key, the
convention when the queries are the newest `Q_LEN` tokens of a longer cached sequence (decoding, chunked
prefill; FlashAttention 2.1+ and FlexAttention's "lower right" causal).
"""

from __future__ import annotations

from typing import Any

from attnc.variants.base import MaskMod

TEXT = """\
# causal, top-left aligned
mask: q >= kv
"""


def causal() -> MaskMod:
    """Query `q_idx` attends to keys `kv_idx <= q_idx`."""

    def causal_mask(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        return q_idx >= kv_idx

    return MaskMod.named("causal", causal_mask)


def causal_bottom_right(q_len: int, kv_len: int) -> MaskMod:
    """Causal with the last query aligned to the last key: `q_idx + kv_len - q_len >= kv_idx`."""
    offset = kv_len - q_len

    def causal_bottom_right_mask(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        return q_idx + offset >= kv_idx

    return MaskMod.named("causal_bottom_right", causal_bottom_right_mask, q_len, kv_len)
