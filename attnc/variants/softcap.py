"""Logit soft-capping: squash scores smoothly into (-cap, cap) with tanh.

Origin: Gemma 2 (Gemma Team 2024; attention logits capped at 50) and Grok-1; earlier in Bello et al.
2016 ("Neural Combinatorial Optimization", logit clipping with tanh).

    softcap(cap):  cap * tanh(score / cap)
"""

from __future__ import annotations

from typing import Any

import torch

from attnc.variants.base import ScoreMod

TEXT = """\
# Gemma 2 attention logit soft-capping
param cap: float = 50.0
score: cap * tanh(score / cap)
"""


def softcap(cap: float) -> ScoreMod:
    """Scores mapped to `cap * tanh(score / cap)`."""
    if not cap > 0:
        raise ValueError(f"softcap: cap must be positive, got {cap}")
    cap = float(cap)  # a float parameter whatever the caller passed

    def softcap_score(score: Any, b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        return cap * torch.tanh(score / cap)

    return ScoreMod.named("softcap", softcap_score, cap)
