"""Position biases whose tensors belong to an `attnc.nn.Attention` module: ALiBi, a relative-position table, T5.

Each family has two parts:

- a frozen spec (`ALiBi(learnable=True)`, `RelativeBias(max_distance=64)`, `T5Bias(num_buckets=32)`) that a
  user passes as the module's `variant`; it knows no head count, so one spec serves every layer;
- the `nn.Module` the spec builds for a head count, which owns the tensors (parameters, or a buffer for fixed
  ALiBi slopes) and makes the score mod that reads them.

The score mod reads its tensor through the module (`bias.slopes[h]`), never a tensor captured once: attnc
records which tensor each attribute of a captured object holds, so `.to(device)` (which replaces buffers) and
`load_state_dict(..., assign=True)` (which replaces parameters) make it trace again rather than read the old
tensor. The formulas are those of `attnc.variants` (alibi, relative_bias, t5_bias_lookup).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import nn

from attnc.variants import ScoreMod, alibi_slopes, t5_bucket_table


class PositionBias(nn.Module):
    """A module owning a score mod's tensors."""

    def score_mod(self) -> ScoreMod:
        """A new score mod reading this module's current tensors (a copy of the module makes its own)."""
        raise NotImplementedError


class ALiBiSlopes(PositionBias):
    """`score + slopes[h] * (kv_idx - q_idx)`; the slopes start at ALiBi's geometric sequence."""

    slopes: torch.Tensor

    def __init__(self, num_heads: int, learnable: bool) -> None:
        super().__init__()
        slopes = torch.tensor(alibi_slopes(num_heads), dtype=torch.float32)
        if learnable:
            self.slopes = nn.Parameter(slopes)
        else:  # a persistent buffer: checkpoints carry the slopes a model was trained with
            self.register_buffer("slopes", slopes)

    def score_mod(self) -> ScoreMod:
        bias = self

        def alibi_score(score: Any, b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
            return score + bias.slopes[h] * (kv_idx - q_idx)

        return ScoreMod(alibi_score, "nn.alibi", ("nn.alibi", id(self)))


class RelativeBiasTable(PositionBias):
    """`score + table[h, clamp(q_idx - kv_idx, -M, M) + M]`, a learned scalar per head and clipped distance."""


    def __init__(self, num_heads: int, max_distance: int) -> None:
        super().__init__()
        self.max_distance = max_distance
        # zeros: the layer starts as plain attention and learns its bias
        self.table = nn.Parameter(torch.zeros(num_heads, 2 * max_distance + 1))

    def score_mod(self) -> ScoreMod:
        bias, limit = self, self.max_distance

        def relative_bias_score(score: Any, b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
            return score + bias.table[h, torch.clamp(q_idx - kv_idx, -limit, limit) + limit]

        return ScoreMod(relative_bias_score, "nn.relative_bias", ("nn.relative_bias", id(self)))


class T5BiasTable(PositionBias):
    """`score + table[bucket(kv_idx - q_idx), h]` with T5's log-spaced buckets (`attnc.variants.t5`)."""

    buckets: torch.Tensor

    def __init__(self, num_heads: int, num_buckets: int, max_distance: int, bidirectional: bool) -> None:
        super().__init__()
        self.max_distance = max_distance
        self.table = nn.Parameter(torch.zeros(num_buckets, num_heads))  # T5's layout: [num_buckets, H]
        # derived from the spec, so not saved: the bucket of each relative position -M .. M
        self.register_buffer("buckets", t5_bucket_table(num_buckets, max_distance, bidirectional), persistent=False)

    def score_mod(self) -> ScoreMod:
        bias, limit = self, self.max_distance

        def t5_score(score: Any, b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
            return score + bias.table[bias.buckets[torch.clamp(kv_idx - q_idx, -limit, limit) + limit], h]

        return ScoreMod(t5_score, "nn.t5_bias", ("nn.t5_bias", id(self)))


@dataclasses.dataclass(frozen=True)
class ALiBi:
    """ALiBi (Press et al. 2022). `learnable=False`: the paper's fixed slopes, a buffer in `state_dict`;
    `learnable=True`: the same starting slopes as an `nn.Parameter` the optimiser updates."""

    learnable: bool = False
    attribute: ClassVar[str] = "alibi"  # the submodule's name in attnc.nn.Attention

    def build(self, num_heads: int) -> PositionBias:
        _check_flag("ALiBi", "learnable", self.learnable)
        return ALiBiSlopes(num_heads, self.learnable)


@dataclasses.dataclass(frozen=True)
class RelativeBias:
    """A learned bias per head for each distance q_idx - kv_idx, clipped to [-max_distance, max_distance]
    (Shaw et al. 2018): a `[num_heads, 2 max_distance + 1]` parameter, starting at zero."""

    max_distance: int = 128
    attribute: ClassVar[str] = "relative_bias"

    def build(self, num_heads: int) -> PositionBias:
        _check_count("RelativeBias", "max_distance", self.max_distance)
        return RelativeBiasTable(num_heads, self.max_distance)


@dataclasses.dataclass(frozen=True)
class T5Bias:
    """T5's bucketed relative bias (Raffel et al. 2020): a `[num_buckets, num_heads]` parameter, starting at
    zero. `bidirectional=False` for decoders (later keys share one bucket)."""

    num_buckets: int = 32
    max_distance: int = 128
    bidirectional: bool = True
    attribute: ClassVar[str] = "t5_bias"

    def build(self, num_heads: int) -> PositionBias:
        _check_count("T5Bias", "num_buckets", self.num_buckets)
        _check_count("T5Bias", "max_distance", self.max_distance)
        _check_flag("T5Bias", "bidirectional", self.bidirectional)
        try:
            return T5BiasTable(num_heads, self.num_buckets, self.max_distance, self.bidirectional)
        except ValueError as error:  # the bucket formula's own constraint, said by attnc.variants.t5
            raise ValueError(f"attnc.nn.T5Bias: {error}") from None


BiasSpec = ALiBi | RelativeBias | T5Bias
BIAS_SPECS: tuple[type, ...] = (ALiBi, RelativeBias, T5Bias)


def _check_count(family: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"attnc.nn.{family}: {name} must be a positive int, got {value!r}")


def _check_flag(family: str, name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"attnc.nn.{family}: {name} must be True or False, got {value!r}")
