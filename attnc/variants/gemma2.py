"""Gemma 2 attention: local sliding-window layers alternating with global causal layers, logits
soft-capped, grouped-query attention.

Origin: Gemma Team 2024, "Gemma 2: Improving Open Language Models at a Practical Size": even layers
(0, 2, ...) attend causally within a window of 4096 tokens, odd layers over the whole context; every
layer caps attention logits with 50 * tanh(logit / 50). GQA (e.g. 8 query heads sharing 4 key/value
heads in Gemma 2 2B) needs nothing from the mods: attnc takes it from the head counts of the inputs.

    local layer:   mask  q_idx >= kv_idx & q_idx - kv_idx < window;   score  cap * tanh(score / cap)
    global layer:  mask  q_idx >= kv_idx;                             score  cap * tanh(score / cap)

Gemma 2 scales queries by query_pre_attn_scalar ** -0.5: pass that as `scale`.
"""

from __future__ import annotations

from typing import NamedTuple

from attnc.variants.base import MaskMod, ScoreMod
from attnc.variants.causal import causal
from attnc.variants.sliding_window import sliding_window
from attnc.variants.softcap import softcap

TEXT = """\
# Gemma 2, a local layer
param window: int = 4096
param cap: float = 50.0
mask: (q >= kv) & (q - kv < window)
score: cap * tanh(score / cap)
"""


class LayerMods(NamedTuple):
    """The mods of one layer: `attnc.compile(*gemma2(layer))` or `mask_mod, score_mod = gemma2(layer)`."""

    mask_mod: MaskMod
    score_mod: ScoreMod


def gemma2(layer: int, window: int = 4096, cap: float = 50.0) -> LayerMods:
    """Mask and score mod of Gemma 2 layer `layer` (0-based): local on even layers, global on odd ones."""
    if layer < 0:
        raise ValueError(f"gemma2: layer must be >= 0, got {layer}")
    mask = sliding_window(window) if layer % 2 == 0 else causal()
    return LayerMods(mask, softcap(cap))
