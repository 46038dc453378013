"""A variant that sees global positions while computing on a shard.

Rank r computes its queries' segment against a key segment that may come from another rank; the user's
mods must see the positions these tokens have in the whole sequence. `GlobalPositions` wraps the mods so a
local index i becomes `start + stride * i`: the strides (1, or the world size for the striped layout) are
compile-time constants of the wrapped functions, the starts are Python ints in their closure, so moving to
another segment pair changes two runtime parameters and never the kernel. The tile analysis sees an affine
map of q and kv, so every structure it knows (causal, windows, documents, neighbourhoods) still skips tiles.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

from attnc.attention import Attention


class GlobalPositions:
    """`mask_mod` / `score_mod` seen through local indices of segments with the given strides."""

    def __init__(self, mask_mod: Callable | None, score_mod: Callable | None, q_stride: int, kv_stride: int) -> None:
        mask, score, move = _shifted(mask_mod, score_mod)
        constants = {"Q_STRIDE": int(q_stride), "KV_STRIDE": int(kv_stride)}
        self.mask_mod = _with_globals(mask, constants) if mask_mod is not None else None
        self.score_mod = _with_globals(score, constants) if score_mod is not None else None
        self._move = move
        self.attention: Attention = Attention(self.mask_mod, self.score_mod)
        self.plans: dict[Any, Any] = {}  # ring plans by (problem, values_key()): see attnc.distributed.planning

    def values_key(self) -> tuple[Any, ...]:
        """What the mods' values are now: their parameters (at offset 0) and captured tensors by identity and
        version; the bindings are kept in the key so the tensors stay alive while it is used."""
        bindings = self.at(0, 0)._bind({})
        return (tuple(bindings.params), bindings.version_key(), _Kept(bindings))

    def at(self, q_start: int, kv_start: int) -> Attention:
        """The compiled variant with local index 0 at global positions q_start / kv_start."""
        self._move(int(q_start), int(kv_start))
        return self.attention


def _shifted(mask_mod: Callable | None, score_mod: Callable | None) -> tuple[Callable, Callable, Callable]:
    q_offset = 0
    kv_offset = 0

    def move(q_start: int, kv_start: int) -> None:
        nonlocal q_offset, kv_offset
        q_offset, kv_offset = q_start, kv_start

    def mask(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        return mask_mod(b, h, q_idx * Q_STRIDE + q_offset, kv_idx * KV_STRIDE + kv_offset)  # noqa: F821

    def score(s: Any, b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        return score_mod(s, b, h, q_idx * Q_STRIDE + q_offset, kv_idx * KV_STRIDE + kv_offset)  # noqa: F821

    return mask, score, move


def _with_globals(fn: Callable, constants: dict[str, int]) -> Callable:
    """`fn` reading `constants` as module globals: the tracer keeps globals as constants, not parameters."""
    namespace = {**fn.__globals__, **constants}
    copy = types.FunctionType(fn.__code__, namespace, fn.__name__, fn.__defaults__, fn.__closure__)
    copy.__qualname__ = fn.__qualname__
    return copy


class _Kept:
    """Holds an object in a key without taking part in its equality."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Kept)

    def __hash__(self) -> int:
        return 0
