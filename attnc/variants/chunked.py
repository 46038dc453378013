"""Chunked causal attention: causal attention that never crosses a chunk boundary.

Origin: Llama 4's local-attention layers (Meta 2025, "iRoPE": chunks of 8192 tokens, interleaved with
global layers without positional encoding).

    chunked_causal(chunk):  q_idx // chunk == kv_idx // chunk  &  q_idx >= kv_idx
"""

from __future__ import annotations

from typing import Any

from attnc.variants.base import MaskMod

TEXT = """\
# Llama 4 local layers: causal within chunks of 8192 tokens
param chunk: int = 8192
mask: (q // chunk == kv // chunk) & (q >= kv)
"""


def chunked_causal(chunk: int) -> MaskMod:
    """Causal attention inside consecutive chunks of `chunk` tokens."""
    if chunk < 1:
        raise ValueError(f"chunked_causal: chunk must be at least 1, got {chunk}")

    def chunked_causal_mask(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        return (q_idx // chunk == kv_idx // chunk) & (q_idx >= kv_idx)

    return MaskMod.named("chunked_causal", chunked_causal_mask, chunk)
