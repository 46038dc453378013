"""Torch operations on captured tensors inside a mod: recorded while tracing, replayed at every call.

A mod may compute with a captured tensor before it indexes it: `torch.sigmoid(gate)[h]`, `temp.exp()`,
`bias * 2`, `table[0]`, `table[:, 1:]`. Evaluated once while tracing, such a value would be frozen: an
optimizer step or `load_state_dict` changes the tensor in place afterwards, and a tensor that requires
grad would tie every call to the one autograd graph built at trace time. So while a mod runs on traced
values, `TracingMode` (a TorchFunctionMode) sees every torch call. A call on traced values goes to the
tracer as before; a call on tensors computes its value now (tracing needs shapes and dtypes) and is
recorded as a `Recipe`; `Replay` runs the recipes again on the current tensors whenever a call binds
the mods, under autograd, so gradients reach the captured tensors.

Which tensors are runtime data: every tensor that existed before the trace (found in closures, through an
object's attribute, anywhere) is an *input*; a tensor computed from inputs is *derived*; a tensor built
in the mod from constants alone (`torch.arange(8)`) is a constant. What cannot be recomputed is refused
with the user's line: reading an input's value into Python (`.item()`, `if t[0] > 0:`) and in-place
changes of runtime data inside a mod.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch.overrides import TorchFunctionMode, resolve_name

from attnc.dsl.errors import Location, TraceError, location_in_stack

# Calls that read only a tensor's metadata: their results do not change when its values do.
_METADATA = frozenset({
    "numel", "dim", "ndimension", "size", "stride", "__len__", "is_floating_point", "is_complex", "is_signed",
    "element_size", "nelement", "is_contiguous", "storage_offset", "get_device", "data_ptr", "__repr__",
    "__format__", "__str__", "__hash__", "type", "is_nonzero_shape",
})
_IN_PLACE_DUNDERS = frozenset({"__setitem__", "__iadd__", "__isub__", "__imul__", "__itruediv__",
                               "__ifloordiv__", "__imod__", "__ipow__", "__iand__", "__ior__", "__ixor__",
                               "__ilshift__", "__irshift__"})
# Metadata reads whose answer depends on strides as well as on the shape.
_STRIDE_READS = frozenset({"stride", "is_contiguous", "storage_offset"})
_VALUE_HINT = ("compute with the tensor's elements in the mod instead (e.g. torch.where(t[h] > 0, a, b)), "
               "or read the value outside the mod and capture it as a Python number")


@dataclasses.dataclass(frozen=True)
class Ref:
    """A runtime tensor in a recipe: input `index` (captured) or derived value `index`."""

    derived: bool
    index: int


@dataclasses.dataclass(frozen=True, eq=False)
class Recipe:
    """One recorded torch call: `func` applied to `leaves` (Refs for runtime tensors, else the values
    given) rebuilt by `spec`; `outputs[i]` is the derived index of the i-th tensor of its result."""

    func: Callable[..., Any]
    spec: pytree.TreeSpec
    leaves: tuple[Any, ...]
    outputs: tuple[int | None, ...]
    location: Location | None

    def run(self, inputs: Sequence[torch.Tensor], derived: list[torch.Tensor]) -> None:
        values = [_resolve(leaf, inputs, derived) for leaf in self.leaves]
        args, kwargs = pytree.tree_unflatten(values, self.spec)
        try:
            result = self.func(*args, **kwargs)
        except Exception as exc:
            where = f"{self.location.filename}:{self.location.lineno}: " if self.location else ""
            raise ValueError(f"attnc: {where}recomputing {_name(self.func)} on the current captured tensors "
                             f"failed: {type(exc).__name__}: {exc}") from exc
        for index, out in zip(self.outputs, pytree.tree_leaves(result), strict=True):
            if index is not None:
                derived[index] = out


def _resolve(leaf: Any, inputs: Sequence[torch.Tensor], derived: list[torch.Tensor]) -> Any:
    if isinstance(leaf, Ref):
        return derived[leaf.index] if leaf.derived else inputs[leaf.index]
    return leaf


def _name(func: Callable[..., Any]) -> str:
    return resolve_name(func) or getattr(func, "__name__", repr(func))


def _short_name(func: Callable[..., Any]) -> str:
    """`add_` for torch.Tensor.add_, `shape` for the getter torch.Tensor.shape.__get__."""
    return _name(func).removesuffix(".__get__").rsplit(".", 1)[-1]


class TensorGraph:
    """What tracing learns about tensors: the inputs, the recipes, and the values they had."""

    def __init__(self) -> None:
        self.inputs: list[torch.Tensor] = []
        self.derived: list[torch.Tensor] = []
        self.recipes: list[Recipe] = []
        self._refs: dict[int, Ref] = {}
        self._constants: dict[int, torch.Tensor] = {}  # built in the mod from constants; kept alive
        # runtime tensors whose metadata (shape, dtype, ...) the mod read into Python: the trace holds what
        # it read as constants (`n = t.shape[0]`), so it is valid only while those tensors keep that
        # metadata; True where strides were read too
        self.metadata_reads: dict[Ref, bool] = {}

    def ref(self, tensor: torch.Tensor, *, pin: bool = False) -> Ref | None:
        """The runtime tensor `tensor` is (an input on first sight), or None for a constant; `pin=True`
        makes a constant an input too (a table the mod built and indexes by traced values)."""
        found = self._refs.get(id(tensor))
        if found is not None or (id(tensor) in self._constants and not pin):
            return found
        ref = self._refs[id(tensor)] = Ref(False, len(self.inputs))
        self.inputs.append(tensor)
        return ref

    def note_metadata(self, tensor: torch.Tensor, *, strides: bool = False) -> None:
        """The trace depends on `tensor`'s metadata (a runtime tensor's; a constant's cannot change)."""
        ref = self.ref(tensor)
        if ref is not None:
            self.metadata_reads[ref] = self.metadata_reads.get(ref, False) or strides

    def call(self, func: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        """Run a torch call on tensors; record it when it reads runtime tensors."""
        leaves, spec = pytree.tree_flatten((args, kwargs))
        refs = [self.ref(x) if isinstance(x, torch.Tensor) else None for x in leaves]
        runtime = any(r is not None for r in refs)
        name = _short_name(func)
        if runtime and _in_place(name, kwargs):
            raise TraceError.here(
                f"{_name(func)} changes a captured tensor (or writes one into another) in place inside a mod",
                "compute a new tensor instead (e.g. torch.where), or change the tensor outside the mod")
        with torch.enable_grad():  # so the recorded value's requires_grad is what a call sees
            result = func(*args, **kwargs)
        outputs = pytree.tree_leaves(result)
        tensors = [t for t in outputs if isinstance(t, torch.Tensor)]
        if not runtime:
            self._constants.update((id(t), t) for t in tensors if id(t) not in self._refs)
            return result
        if not tensors and _metadata(func, name):
            for leaf in leaves:
                if isinstance(leaf, torch.Tensor):
                    self.note_metadata(leaf, strides=name in _STRIDE_READS)
            return result
        if not all(isinstance(t, torch.Tensor) or t is None for t in outputs):
            raise TraceError.here(
                f"{_name(func)} reads the value of a captured tensor into Python while the mod is traced; "
                "that value would be frozen, but the tensor may change between calls", _VALUE_HINT)
        self._record(func, spec, leaves, refs, outputs)
        return result

    def _record(self, func: Callable[..., Any], spec: pytree.TreeSpec, leaves: list[Any],
                refs: list[Ref | None], outputs: list[Any]) -> None:
        indices: list[int | None] = []
        for out in outputs:
            if not isinstance(out, torch.Tensor) or id(out) in self._refs:
                indices.append(None)  # an operand returned as it is (`t.to(t.dtype)`): already known
                continue
            self._refs[id(out)] = Ref(True, len(self.derived))
            indices.append(len(self.derived))
            self.derived.append(out)
        stored = tuple(r if r is not None else leaf for r, leaf in zip(refs, leaves, strict=True))
        self.recipes.append(Recipe(func, spec, stored, tuple(indices), location_in_stack(sys._getframe(1))))


def _in_place(name: str, kwargs: dict) -> bool:
    if kwargs.get("out") is not None or name in _IN_PLACE_DUNDERS:
        return True
    return name.endswith("_") and not name.endswith("__")


def _metadata(func: Callable[..., Any], name: str) -> bool:
    """Shape, dtype, device, requires_grad and the like (property getters whose value is not a tensor),
    and the methods in `_METADATA`."""
    return _name(func).endswith(".__get__") or name in _METADATA


Metadata = tuple[Any, ...]


def metadata_of(tensor: torch.Tensor, *, strides: bool) -> Metadata:
    """What a mod can read of a tensor without reading its values."""
    found = (tuple(tensor.shape), tensor.dtype, tensor.device, tensor.requires_grad)
    return (*found, tuple(tensor.stride()), tensor.storage_offset()) if strides else found


def describe_metadata(old: Metadata, new: Metadata) -> str:
    """`shape [3] when traced and [6] now`."""
    names = ("shape", "dtype", "device", "requires_grad", "strides", "storage offset")
    for name, was, now in zip(names, old, new, strict=True):
        if was != now:
            shown = (list(was), list(now)) if isinstance(was, tuple) else (was, now)
            return f"{name} {shown[0]} when traced and {shown[1]} now"
    return "other metadata"


class TracingMode(TorchFunctionMode):
    """Active while a mod runs on traced values: calls on traced values go to `on_traced`, every other
    torch call to the graph."""

    def __init__(self, graph: TensorGraph, is_traced: Callable[[Any], bool],
                 on_traced: Callable[..., Any]) -> None:
        super().__init__()
        self.graph = graph
        self._is_traced = is_traced
        self._on_traced = on_traced

    def __torch_function__(self, func: Callable[..., Any], types: tuple, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if any(self._is_traced(x) for x in pytree.tree_leaves((args, kwargs))):
            return self._on_traced(func, types, args, kwargs)
        return self.graph.call(func, args, kwargs)


class Replay:
    """The derived tensors computed again from the current inputs. Without gradients to build, values are
    reused while every input is the same tensor at the same version (`tensor._version`)."""

    def __init__(self, recipes: Sequence[Recipe], count: int) -> None:
        self.recipes = tuple(recipes)
        self.count = count
        self._cached: tuple[tuple, list[torch.Tensor], Sequence[torch.Tensor]] | None = None

    def run(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if not self.recipes:
            return []
        differentiable = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
        key = tuple((id(t), t._version) for t in inputs)
        if not differentiable and self._cached is not None and self._cached[0] == key:
            return self._cached[1]
        derived: list[torch.Tensor] = [None] * self.count  # type: ignore[list-item]
        for recipe in self.recipes:
            recipe.run(inputs, derived)
        # the inputs are kept with the key, so an id in it cannot be reused by another tensor
        self._cached = None if differentiable else (key, derived, tuple(inputs))
        return derived
