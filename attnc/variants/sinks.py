"""Attention sinks plus a sliding window: the first tokens stay visible to every later query.

Origin: StreamingLLM (Xiao et al. 2024, "Efficient Streaming Language Models with Attention Sinks"):
keeping the first few tokens (4 in the paper) next to a causal window keeps long-running
generation stable.

    sink_window(sinks, window):  q_idx >= kv_idx  &  (kv_idx < sinks  |  q_idx - kv_idx < window)

The mask stays causal, so a query inside the sink region does not see the sinks after it.
"""

from __future__ import annotations

from typing import Any

from attnc.variants.base import MaskMod

TEXT = """\
# StreamingLLM: 4 sink tokens and a causal window of 1024
param sinks: int = 4
param window: int = 1024
mask: (q >= kv) & ((kv < sinks) | (q - kv < window))
"""


def sink_window(sinks: int, window: int) -> MaskMod:
    """A causal window of `window` keys, plus the first `sinks` keys for every query."""
    if sinks < 0 or window < 1:
        raise ValueError(f"sink_window: need sinks >= 0 and window >= 1, got {sinks}, {window}")

    def sink_window_mask(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        return (q_idx >= kv_idx) & ((kv_idx < sinks) | (q_idx - kv_idx < window))

    return MaskMod.named("sink_window", sink_window_mask, sinks, window)
