"""Key padding: each batch element has its own number of valid keys; the rest are padding.

Origin: the `key_padding_mask` of batched attention over sequences of different lengths (the original
Transformer's padding mask; `torch.nn.MultiheadAttention(key_padding_mask=...)`).

    key_padding(lengths):  kv_idx < lengths[b]
"""

from __future__ import annotations

from typing import Any

import torch

from attnc.variants.base import MaskMod

TEXT = """\
# batch element b has lengths[b] valid keys
tensor lengths: int32[B]
mask: kv < lengths[b]
"""


def key_padding(lengths: torch.Tensor) -> MaskMod:
    """Keys at positions `>= lengths[b]` are padding."""
    if lengths.ndim != 1 or lengths.is_floating_point():
        raise ValueError(f"key_padding: lengths is an integer tensor of shape [B], got {lengths.dtype} of shape "
                         f"{list(lengths.shape)}")

    def key_padding_mask(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        return kv_idx < lengths[b]

    return MaskMod.named("key_padding", key_padding_mask, lengths)
