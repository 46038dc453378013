"""A traced variant: the mask and score-mod expressions plus what they read from outside."""

from __future__ import annotations

import dataclasses
import hashlib

from attnc.ir.dtypes import DType
from attnc.ir.node import Node


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """A captured tensor as the IR sees it: its dtype (as loaded) and rank. Its values are runtime data."""

    dtype: DType
    ndim: int
    requires_grad: bool = False


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """A Python scalar captured by a mod. Its value is a runtime argument: changing it never recompiles."""

    dtype: DType
    name: str


@dataclasses.dataclass(frozen=True)
class Program:
    """`mask` is a bool expression (None: every pair allowed); `score` is a float32 expression of the
    raw score and the indices (None: the identity). `tensors[i]` / `params[i]` describe LOAD / PARAM
    slot i."""

    mask: Node | None = None
    score: Node | None = None
    tensors: tuple[TensorSpec, ...] = ()
    params: tuple[ParamSpec, ...] = ()

    def replace(self, **changes: object) -> Program:
        return dataclasses.replace(self, **changes)

    def roots(self) -> dict[str, Node]:
        return {name: n for name, n in (("mask", self.mask), ("score", self.score)) if n is not None}

    def fingerprint(self) -> str:
        """A stable hash of everything about the program that can change generated code."""
        text = repr((self.mask, self.score, self.tensors, self.params))
        return hashlib.sha256(text.encode()).hexdigest()
