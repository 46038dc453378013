"""Combining masks: `and_masks`, `or_masks` and the mask that allows everything, `noop_mask`.

The same functions run on real torch tensors (dense evaluation, block-mask building) and on the
tracer's symbolic values, so they use only `&`, `|`, `==` and `!=`, which both overload. The mods being
combined live in a closed-over tuple: the tracer rebuilds closures and walks into tuples of functions,
which is how it finds (and captures the tensors and scalars of) each inner mod.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

MaskMod = Callable[[Any, Any, Any, Any], Any]


def noop_mask(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
    """Every pair allowed."""
    # `q_idx == q_idx` is true for every index, padded ones included (padding lies past the length,
    # where a bound like `q_idx < Q_LEN` would fail), needs no knowledge of the lengths, has the
    # broadcast shape of q_idx for tensors, and folds to a constant (x == x holds for every integer).
    return q_idx == q_idx


def _none_mask(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
    """No pair allowed: the value of an empty `or_masks()`."""
    return q_idx != q_idx  # false for every index, for the reasons given in noop_mask


def _check_mods(combinator: str, mask_mods: tuple[Any, ...]) -> tuple[MaskMod, ...]:
    for mod in mask_mods:
        if not callable(mod):
            raise TypeError(
                f"{combinator} takes mask_mod functions (b, h, q_idx, kv_idx) -> bool, got {mod!r}"
            )
    return tuple(mask_mods)


def _describe(combinator: str, mods: tuple[MaskMod, ...]) -> str:
    return f"{combinator}({', '.join(getattr(m, '__name__', repr(m)) for m in mods)})"


def and_masks(*mask_mods: MaskMod) -> MaskMod:
    """A mask allowing a pair only where every one of `mask_mods` allows it (no mods: everything)."""
    mods = _check_mods("and_masks", mask_mods)
    if not mods:
        return noop_mask

    def and_mask(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        result = mods[0](b, h, q_idx, kv_idx)
        for mod in mods[1:]:
            result = result & mod(b, h, q_idx, kv_idx)
        return result

    and_mask.__name__ = and_mask.__qualname__ = _describe("and_masks", mods)
    return and_mask


def or_masks(*mask_mods: MaskMod) -> MaskMod:
    """A mask allowing a pair where any one of `mask_mods` allows it (no mods: nothing)."""
    mods = _check_mods("or_masks", mask_mods)
    if not mods:
        return _none_mask

    def or_mask(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        result = mods[0](b, h, q_idx, kv_idx)
        for mod in mods[1:]:
            result = result | mod(b, h, q_idx, kv_idx)
        return result

    or_mask.__name__ = or_mask.__qualname__ = _describe("or_masks", mods)
    return or_mask
