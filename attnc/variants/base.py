"""Named, composable mods: `MaskMod` and `ScoreMod`.

A variant factory returns one of these instead of a bare function, so that the mod has a stable name
(`sliding_window(256)`), an identity (`==` and `hash` by family and arguments, tensors by object
identity) and operators (`causal() & document(ids)`, `alibi(8).then(softcap(50.0))`).

Both classes are `functools.partial` objects with no bound arguments: calling one calls the wrapped
function, and everything that accepts a plain mod accepts them unchanged. The tracer looks inside
partials like it looks inside closures, so a factory's closed-over Python ints and floats stay runtime
parameters and its tensors stay captured tensors. Name and key live in the instance dictionary, which the
tracer does not read.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from attnc.variants.combinators import and_masks, or_masks

Key = tuple[Any, ...]


def _key_part(value: Any) -> Any:
    """A hashable stand-in for a factory argument: tensors by identity (never by value), sequences as tuples."""
    if isinstance(value, torch.Tensor):
        return ("tensor", id(value))
    if isinstance(value, list | tuple):
        return tuple(_key_part(v) for v in value)
    return value


def _shown(value: Any) -> str:
    """How an argument appears in a name: tensors by shape, other values by repr."""
    if isinstance(value, torch.Tensor):
        return f"tensor{list(value.shape)}"
    if isinstance(value, list | tuple):
        inner = ", ".join(_shown(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    return repr(value)


def signature(family: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, Key]:
    """(name, key) of `family(*args, **kwargs)`: `sliding_window(256, causal=False)` and its identity."""
    shown = [_shown(a) for a in args] + [f"{k}={_shown(v)}" for k, v in kwargs.items()]
    key = (family, *(_key_part(a) for a in args), *((k, _key_part(v)) for k, v in sorted(kwargs.items())))
    return f"{family}({', '.join(shown)})", key


class _Named(functools.partial):
    """A partial of a mod function with a name and an identity key."""

    name: str
    key: Key

    def __new__(cls, fn: Callable[..., Any], name: str, key: Key) -> _Named:
        if not callable(fn):
            raise TypeError(f"{cls.__name__} wraps a function, got {fn!r}")
        self = super().__new__(cls, fn)
        self.name = self.__name__ = name  # __name__: what plots and error messages print for a mod
        self.key = key
        return self

    @classmethod
    def named(cls, family: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """The mod `fn` of `family(*args, **kwargs)`; pass only the arguments that differ from the defaults."""
        return cls(fn, *signature(family, args, kwargs))

    @classmethod
    def wrap(cls, fn: Callable[..., Any]) -> Any:
        """`fn` itself if it is already one of these, else `fn` named after itself, identified by identity."""
        if isinstance(fn, cls):
            return fn
        if isinstance(fn, _Named):  # a MaskMod where a ScoreMod belongs, or the reverse
            raise TypeError(f"expected a {cls.__name__} or a plain function, got {type(fn).__name__} {fn.name}")
        return cls(fn, getattr(fn, "__name__", repr(fn)), ("function", id(fn)))

    def __reduce__(self) -> tuple[Any, ...]:
        # copy.copy / deepcopy (of a module holding mods, say) rebuild through __new__'s own arguments
        return type(self), (self.func, self.name, self.key)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.key == self.key

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.key))

    def __repr__(self) -> str:
        return self.name


class MaskMod(_Named):
    """`mask_mod(b, h, q_idx, kv_idx) -> bool`, composable with `&`, `|` and `~`."""

    def __and__(self, other: Callable[..., Any]) -> MaskMod:
        other = MaskMod.wrap(other)
        return MaskMod(and_masks(self, other), f"({self.name} & {other.name})", ("and", self.key, other.key))

    def __rand__(self, other: Callable[..., Any]) -> MaskMod:
        return MaskMod.wrap(other) & self

    def __or__(self, other: Callable[..., Any]) -> MaskMod:
        other = MaskMod.wrap(other)
        return MaskMod(or_masks(self, other), f"({self.name} | {other.name})", ("or", self.key, other.key))

    def __ror__(self, other: Callable[..., Any]) -> MaskMod:
        return MaskMod.wrap(other) | self

    def __invert__(self) -> MaskMod:
        inner = self

        def not_mask(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
            return ~inner(b, h, q_idx, kv_idx)

        return MaskMod(not_mask, f"~{self.name}", ("not", self.key))


class ScoreMod(_Named):
    """`score_mod(score, b, h, q_idx, kv_idx) -> score'`, chained with `then`."""

    def then(self, other: Callable[..., Any]) -> ScoreMod:
        """Apply this mod, then `other` to its result: `alibi(8).then(softcap(50.0))`."""
        second = ScoreMod.wrap(other)
        mods = (self, second)  # a tuple, which the tracer walks to find both mods' captures

        def chained(score: Any, b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
            return mods[1](mods[0](score, b, h, q_idx, kv_idx), b, h, q_idx, kv_idx)

        return ScoreMod(chained, f"{self.name}.then({second.name})", ("then", self.key, second.key))
