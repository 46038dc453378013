"""Sliding-window (local) attention: each query sees the keys within a fixed distance.

Origin: Longformer (Beltagy et al. 2020) for the bidirectional form; Mistral 7B (Jiang et al. 2023) and
Gemma 2's local layers for the causal form; per-head windows as in models that give heads different
spans (e.g. Hymba, or any head-wise window schedule), read from a tensor.

    causal (default):  q_idx >= kv_idx  &  q_idx - kv_idx < window       (the window keys, itself included)
    bidirectional:     |q_idx - kv_idx| < window                          (window - 1 keys on each side)
    per head:          window is `windows[h]`, a tensor of shape [H]
"""

from __future__ import annotations

from typing import Any

import torch

from attnc.variants.base import MaskMod

TEXT = """\
# causal sliding window of 256 keys
param window: int = 256
mask: (q >= kv) & (q - kv < window)
"""


def sliding_window(window: int | torch.Tensor, causal: bool = True) -> MaskMod:
    """Keys less than `window` positions away (and not in the future when `causal`). `window` is an int,
    or an integer tensor of shape [H] giving each query head its own window."""
    options = {} if causal else {"causal": False}
    if isinstance(window, torch.Tensor):
        return MaskMod.named("sliding_window", _per_head(window, causal), window, **options)
    if window < 1:
        raise ValueError(f"sliding_window: window must be at least 1, got {window}")
    return MaskMod.named("sliding_window", _fixed(window, causal), window, **options)


def _fixed(window: int, causal: bool) -> Any:
    if causal:
        def sliding_window_mask(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
            return (q_idx >= kv_idx) & (q_idx - kv_idx < window)
    else:
        def sliding_window_mask(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
            return torch.abs(q_idx - kv_idx) < window
    return sliding_window_mask


def _per_head(windows: torch.Tensor, causal: bool) -> Any:
    if windows.ndim != 1 or windows.is_floating_point():
        raise ValueError(f"sliding_window: per-head windows are an integer tensor of shape [H], got "
                         f"{windows.dtype} of shape {list(windows.shape)}")
    if causal:
        def per_head_window_mask(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
            return (q_idx >= kv_idx) & (q_idx - kv_idx < windows[h])
    else:
        def per_head_window_mask(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
            return torch.abs(q_idx - kv_idx) < windows[h]
    return per_head_window_mask
