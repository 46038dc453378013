"""Dilated sliding window: a window of `window` keys spaced `dilation` positions apart.

Origin: Longformer (Beltagy et al. 2020), "dilated sliding window"; the same pattern is one segment
of LongNet's dilated attention (Ding et al. 2023).

    causal (default):  q_idx >= kv_idx  &  (q_idx - kv_idx) % dilation == 0  &  q_idx - kv_idx < window * dilation
    bidirectional:     (q_idx - kv_idx) % dilation == 0  &  |q_idx - kv_idx| < window * dilation

`%` is Python's floor modulo, so negative differences are handled as the formula says.
"""

from __future__ import annotations

from typing import Any

import torch

from attnc.variants.base import MaskMod

TEXT = """\
# causal dilated window: 64 keys, every 4th position
param dilation: int = 4
param window: int = 64
mask: (q >= kv) & ((q - kv) % dilation == 0) & (q - kv < window * dilation)
"""


def dilated_window(window: int, dilation: int, causal: bool = True) -> MaskMod:
    """`window` keys at distances 0, dilation, 2 * dilation, ... (on both sides unless `causal`)."""
    if window < 1 or dilation < 1:
        raise ValueError(f"dilated_window: window and dilation must be at least 1, got {window}, {dilation}")
    if causal:
        def dilated_window_mask(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
            distance = q_idx - kv_idx
            return (q_idx >= kv_idx) & (distance % dilation == 0) & (distance < window * dilation)
    else:
        def dilated_window_mask(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
            distance = q_idx - kv_idx
            return (distance % dilation == 0) & (torch.abs(distance) < window * dilation)
    options = {} if causal else {"causal": False}
    return MaskMod.named("dilated_window", dilated_window_mask, window, dilation, **options)
