"""A variant parsed from the text syntax, and the declarations its tensors and parameters are bound by.

`attnc.dsl.text` parses; this module holds what parsing produces and how a call's values are checked
against the declarations (`param window: int = 256`, `tensor slopes: float32[H]`) and bound to slots.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping
from typing import Any

import torch

from attnc.dsl.captures import Bindings
from attnc.ir.dtypes import DType
from attnc.ir.program import Program, TensorSpec

TEXT = "<text>"
_INT32 = (-(2**31), 2**31 - 1)


@dataclasses.dataclass(frozen=True)
class ParamDecl:
    """`param name: int = 3`: a runtime scalar (its PARAM is int32 for int, float32 for float)."""

    name: str
    type: type  # int or float
    default: int | float | None
    line: int = 0

    def describe(self) -> str:
        return f"param {self.name}: {self.type.__name__}"


@dataclasses.dataclass(frozen=True)
class TensorDecl:
    """`tensor name: float32[H, 255]`: a tensor bound by name; dims are names or sizes."""

    name: str
    dtype: torch.dtype
    dims: tuple[str | int, ...]
    line: int = 0

    @property
    def rank(self) -> int:
        return len(self.dims)

    @property
    def spec(self) -> TensorSpec:
        return TensorSpec(DType.from_torch(self.dtype), self.rank)

    @property
    def is_scalar(self) -> bool:
        """A one-element tensor, usable as a value without indexing."""
        return all(d == 1 for d in self.dims)

    def describe(self) -> str:
        dims = ", ".join(str(d) for d in self.dims)
        return f"tensor {self.name}: {str(self.dtype).removeprefix('torch.')}[{dims}]"


Decl = ParamDecl | TensorDecl


@dataclasses.dataclass(frozen=True, eq=False)
class TextVariant:
    """A variant parsed from the text syntax: its program and the declarations its slots are bound from.

    `param_slots[i]` / `tensor_slots[i]` name the declaration bound to Program.params[i] / tensors[i]."""

    program: Program
    params: tuple[ParamDecl, ...]
    tensors: tuple[TensorDecl, ...]
    param_slots: tuple[str, ...]
    tensor_slots: tuple[str, ...]
    filename: str = TEXT

    @property
    def declarations(self) -> dict[str, Decl]:
        return {d.name: d for d in (*self.params, *self.tensors)}

    def check(self, values: Mapping[str, Any]) -> None:
        """Every value names a declaration and fits it (ValueError naming the culprit otherwise)."""
        declared = self.declarations
        for name, value in values.items():
            decl = declared.get(name)
            if decl is None:
                raise ValueError(f"attnc: unknown name `{name}` for this variant; it declares "
                                 f"{_listing(declared) or 'nothing'}")
            _check_value(decl, value)

    def bind(self, values: Mapping[str, Any]) -> Bindings:
        """The value for each slot from `values` (names to tensors and numbers), or a param's default."""
        self.check(values)
        tensors, params = self.slot_values(values)
        types = {d.name: d.type for d in self.params}
        return Bindings(tuple(tensors), tuple(types[name](p) for name, p in zip(self.param_slots, params, strict=True)))

    def slot_values(self, values: Mapping[str, Any]) -> tuple[list[Any], list[Any]]:
        """The values of the tensor slots and of the parameter slots as given (a param's default where none
        is): under torch.compile, symbolic numbers stay symbolic (converting one would fix its value)."""
        tensors = {d.name: d for d in self.tensors}
        params = {d.name: d for d in self.params}
        return ([_required(tensors[name], values) for name in self.tensor_slots],
                [_param_value(params[name], values) for name in self.param_slots])


def _listing(declared: Mapping[str, Decl]) -> str:
    return ", ".join(d.describe() for d in declared.values())


def _required(decl: Decl, values: Mapping[str, Any]) -> Any:
    if decl.name not in values:
        raise ValueError(f"attnc: no value for `{decl.describe()}` (declared on line {decl.line}); pass "
                         f"{decl.name}=... to the call or to attnc.compile")
    return values[decl.name]


def _param_value(decl: ParamDecl, values: Mapping[str, Any]) -> Any:
    if decl.name not in values and decl.default is not None:
        return decl.default
    return _required(decl, values)


def _check_value(decl: Decl, value: Any) -> None:
    if isinstance(decl, ParamDecl):
        _check_param(decl, value)
    else:
        _check_tensor(decl, value)


def _check_param(decl: ParamDecl, value: Any) -> None:
    allowed = numbers.Integral if decl.type is int else numbers.Real
    if isinstance(value, bool) or not isinstance(value, allowed):
        raise ValueError(f"attnc: `{decl.describe()}` needs a Python {decl.type.__name__}, got "
                         f"{type(value).__name__} {value!r}")
    if decl.type is int and not _INT32[0] <= value <= _INT32[1]:
        raise ValueError(f"attnc: `{decl.name}` = {value} does not fit in int32, the type of integer parameters")


def _check_tensor(decl: TensorDecl, value: Any) -> None:
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"attnc: `{decl.describe()}` needs a torch.Tensor, got {type(value).__name__}")
    if value.dtype != decl.dtype:
        raise ValueError(f"attnc: `{decl.describe()}` got a {value.dtype} tensor")
    sizes_match = all(isinstance(d, str) or d == n for d, n in zip(decl.dims, value.shape, strict=False))
    if value.ndim != decl.rank or not sizes_match:
        raise ValueError(f"attnc: `{decl.describe()}` got a tensor of shape {list(value.shape)}")
