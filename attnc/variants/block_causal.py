"""Block-causal attention over frames: full attention within a frame and to every earlier frame.

Origin: autoregressive video generation, where each frame's tokens attend bidirectionally among
themselves and causally to past frames (e.g. CausVid, Yin et al. 2024; MAGI-1, Sand AI 2025); the same
mask is "blockwise causal" attention in block-autoregressive speech and text models.

    block_causal(frame):  q_idx // frame >= kv_idx // frame
"""

from __future__ import annotations

from typing import Any

from attnc.variants.base import MaskMod

TEXT = """\
# video: frames of 256 tokens, causal across frames, full within a frame
param frame: int = 256
mask: q // frame >= kv // frame
"""


def block_causal(frame: int) -> MaskMod:
    """Tokens in frames of `frame` tokens attend to their own frame and all earlier ones."""
    if frame < 1:
        raise ValueError(f"block_causal: frame must be at least 1, got {frame}")

    def block_causal_mask(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        return q_idx // frame >= kv_idx // frame

    return MaskMod.named("block_causal", block_causal_mask, frame)
