"""Prefix LM: bidirectional attention inside a prefix, causal after it.

Origin: UniLM (Dong et al. 2019) and T5's "prefix LM" objective (Raffel et al. 2020); used for
vision-language models whose image and prompt tokens form the prefix (PaliGemma).

    prefix_lm(prefix):   kv_idx < prefix     | q_idx >= kv_idx
    prefix_lm(lengths):  kv_idx < lengths[b] | q_idx >= kv_idx      (one prefix length per batch element)

Every query sees the whole prefix; a query inside the prefix sees nothing after it.
"""

from __future__ import annotations

from typing import Any

import torch

from attnc.variants.base import MaskMod

TEXT = """\
# prefix LM with a 128-token prefix
param prefix: int = 128
mask: (kv < prefix) | (q >= kv)
"""


def prefix_lm(prefix: int | torch.Tensor) -> MaskMod:
    """Prefix LM with a prefix of `prefix` tokens: an int, or an integer tensor [B] of per-batch lengths."""
    if isinstance(prefix, torch.Tensor):
        if prefix.ndim != 1 or prefix.is_floating_point():
            raise ValueError(f"prefix_lm: per-batch prefix lengths are an integer tensor of shape [B], got "
                             f"{prefix.dtype} of shape {list(prefix.shape)}")
        lengths = prefix

        def prefix_lm_mask(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
            return (kv_idx < lengths[b]) | (q_idx >= kv_idx)
    else:
        def prefix_lm_mask(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
            return (kv_idx < prefix) | (q_idx >= kv_idx)

    return MaskMod.named("prefix_lm", prefix_lm_mask, prefix)
