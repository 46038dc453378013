"""Slots for the values a traced program reads at run time, and how to find their current values.

While tracing, a `Recorder` hands out PARAM slots (closure scalars) and LOAD slots (captured tensors),
in order of first use; mask and score mod share one slot space. The result, `Captures`, remembers where
each slot's value lives (a path through closures and globals, or the tensor object itself when no path
leads to it: an object's attribute, a tensor built inside the mod). `Captures.bind` re-reads those values from
the mods of a later call, so rebinding `window = 128` needs no new trace.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping
from typing import Any

import torch

from attnc.dsl.closure import Leaf, Path, ShapeEntry, Walk, describe_change
from attnc.dsl.errors import StaleTrace, TraceError
from attnc.dsl.semantics import WEAK_DTYPE, Operand, Typed, literal
from attnc.dsl.symbolic import Sym
from attnc.ir.dtypes import INDEX, DType
from attnc.ir.node import Node, const, load, param
from attnc.ir.ops import Op
from attnc.ir.program import ParamSpec, TensorSpec

_INT32 = (-(2**31), 2**31 - 1)
_INDEX_HINT = "e.g. bias[h, q_idx] or table[h, q_idx - kv_idx + 127]; slices, `...`, None, bool and list " \
              "indices are not supported"


# A BaseException: it is control flow, and must pass through `except Exception` in user code and ours.
class Specialize(BaseException):
    """Python code needs the concrete value of closure scalars: trace again with them as constants."""

    def __init__(self, values: dict[Path, Any]) -> None:
        super().__init__(values)
        self.values = values


@dataclasses.dataclass(frozen=True, eq=False)
class Bindings:
    tensors: tuple[torch.Tensor, ...]  # current value for each Program.tensors slot
    params: tuple[int | float, ...]  # current value for each Program.params slot


@dataclasses.dataclass(frozen=True, eq=False)
class TensorSource:
    spec: TensorSpec
    path: Path | None  # where the tensor lives in the closures
    pinned: torch.Tensor | None = None  # the tensor itself, when no closure holds it
    name: str = ""


def tensor_spec(tensor: torch.Tensor) -> TensorSpec:
    return TensorSpec(DType.from_torch(tensor.dtype), tensor.ndim, tensor.requires_grad)


class Recorder:
    """The tracer: allocates slots, turns Python and torch values into IR operands."""

    def __init__(self, frozen: Mapping[Path, Any]) -> None:
        self.frozen = frozen
        self.param_specs: list[ParamSpec] = []
        self.tensor_specs: list[TensorSpec] = []
        self._params: list[Leaf] = []
        self._param_slots: dict[Path, int] = {}
        self._tensors: list[TensorSource] = []
        self._tensor_slots: dict[int, int] = {}
        self._closure_tensors: dict[int, Leaf] = {}

    # -- closure values --------------------------------------------------------------------------------

    def leaf(self, leaf: Leaf) -> Any:
        """What a captured Python scalar becomes in the rebuilt mods: a parameter, unless specialised."""
        return leaf.value if leaf.path in self.frozen else Sym(None, self, leaf)

    def see_closure(self, leaves: Mapping[Path, Leaf]) -> None:
        for leaf in leaves.values():
            if isinstance(leaf.value, torch.Tensor):
                self._closure_tensors.setdefault(id(leaf.value), leaf)

    def param(self, leaf: Leaf) -> Typed:
        slot = self._param_slots.get(leaf.path)
        weak = type(leaf.value)
        if slot is None:
            slot = self._param_slots[leaf.path] = len(self.param_specs)
            self.param_specs.append(ParamSpec(WEAK_DTYPE[weak], leaf.name))
            self._params.append(leaf)
        return Typed(param(slot, WEAK_DTYPE[weak]), weak)

    def specialize(self, node: Node) -> None:
        """Raise Specialize if `node` is computed from closure scalars alone (Python branches on it)."""
        leaves = [n for n in node.walk() if not n.src]
        if all(n.op in (Op.PARAM, Op.CONST) for n in leaves) and any(n.op is Op.PARAM for n in leaves):
            chosen = (self._params[n.arg] for n in leaves if n.op is Op.PARAM)
            raise Specialize({leaf.path: leaf.value for leaf in chosen})

    # -- operands ------------------------------------------------------------------------------------

    def lift(self, x: Any) -> Operand:
        """A Sym, Python number or scalar tensor as an IR operand."""
        if isinstance(x, Sym):
            return x.typed
        if isinstance(x, bool):
            return x
        if isinstance(x, numbers.Integral):
            return int(x)
        if isinstance(x, numbers.Real):
            return float(x)
        if isinstance(x, torch.Tensor):
            return self._scalar_tensor(x)
        raise TraceError.here(
            f"a {type(x).__name__} cannot be used as a value in an attention mod",
            "use numbers, the mod's arguments, and elements of captured tensors",
        )

    def _scalar_tensor(self, tensor: torch.Tensor) -> Typed:
        """A one-element tensor used as a value: runtime data when captured or trainable, else a constant."""
        if tensor.numel() != 1:
            raise TraceError.here(
                f"a tensor of shape {list(tensor.shape)} is used as a value, but mods compute scalars",
                "index it with expressions of the indices, e.g. bias[h, q_idx]",
            )
        if id(tensor) in self._closure_tensors or tensor.requires_grad:
            slot = self._tensor_slot(tensor)
            return Typed(load(slot, self.tensor_specs[slot].dtype, *[const(0, INDEX)] * tensor.ndim))
        return Typed(const(tensor.item(), _dtype_of(tensor)))

    def load(self, tensor: torch.Tensor, index: Any) -> Typed:
        """`tensor[index]` for a captured tensor indexed by traced values."""
        items = index if isinstance(index, tuple) else (index,)
        nodes = [self._index_node(tensor, item) for item in items]
        if len(nodes) != tensor.ndim:
            raise _index_error(tensor, f"{len(nodes)} indices for {tensor.ndim} dimensions")
        slot = self._tensor_slot(tensor)
        return Typed(load(slot, self.tensor_specs[slot].dtype, *nodes))

    def _index_node(self, tensor: torch.Tensor, item: Any) -> Node:
        if not isinstance(item, Sym | torch.Tensor | numbers.Integral) or isinstance(item, bool):
            raise _index_error(tensor, f"the index {item!r}" if item is None or item is ... else
                               f"a {type(item).__name__} index")
        value = self.lift(item)
        if isinstance(value, int):
            if value < 0:
                raise TraceError.here(f"negative index {value} into a captured tensor",
                                      "indices are clamped into range, not wrapped: write the position")
            return literal(value, INDEX)
        if not value.node.dtype.is_int:
            raise _index_error(tensor, f"a {value.node.dtype.name} index (use // or .to(torch.int32))")
        return value.node

    def _tensor_slot(self, tensor: torch.Tensor) -> int:
        slot = self._tensor_slots.get(id(tensor))
        if slot is None:
            spec = TensorSpec(_dtype_of(tensor), tensor.ndim, tensor.requires_grad)
            leaf = self._closure_tensors.get(id(tensor))
            if leaf is None:
                source = TensorSource(spec, None, pinned=tensor)
            else:
                source = TensorSource(spec, leaf.path, name=leaf.display)
            slot = self._tensor_slots[id(tensor)] = len(self.tensor_specs)
            self.tensor_specs.append(spec)
            self._tensors.append(source)
        return slot

    def captures(self, shape: list[ShapeEntry]) -> Captures:
        params = tuple(leaf.path for leaf in self._params)
        return Captures(tuple(shape), params, tuple(self._tensors), tuple(self.frozen.items()))


def _dtype_of(tensor: torch.Tensor) -> DType:
    try:
        return DType.from_torch(tensor.dtype)
    except TypeError as exc:
        raise TraceError.here(str(exc)) from None


def _index_error(tensor: torch.Tensor, found: str) -> TraceError:
    return TraceError.here(
        f"index every dimension of the captured tensor with an integer expression "
        f"(the tensor has shape {list(tensor.shape)}; found {found})",
        _INDEX_HINT,
    )


@dataclasses.dataclass(frozen=True, eq=False)
class Captures:
    """Where each slot's value lives, and the closure shape the trace is valid for."""

    shape: tuple[ShapeEntry, ...]
    params: tuple[Path, ...]  # where each PARAM slot's value lives
    tensors: tuple[TensorSource, ...]
    frozen: tuple[tuple[Path, Any], ...]  # closure scalars the trace specialised on, with their values

    def bind(self, mask_mod: Any, score_mod: Any) -> Bindings:
        """The current value of every slot, read from the given mods. StaleTrace if they changed shape."""
        walk = Walk()
        walk.roots(mask_mod, score_mod)
        if tuple(walk.shape) != self.shape:
            raise StaleTrace(describe_change(self.shape, tuple(walk.shape)))
        for path, value in self.frozen:
            _check_frozen(walk.leaves[path], value)
        params = tuple(_param_value(walk.leaves[path]) for path in self.params)
        return Bindings(tuple(_tensor_value(t, walk.leaves) for t in self.tensors), params)


def _check_frozen(leaf: Leaf, traced: Any) -> None:
    same = leaf.value == traced or (leaf.value != leaf.value and traced != traced)  # NaN is NaN here
    if type(leaf.value) is not type(traced) or not same:
        raise StaleTrace(f"{leaf.display} was {traced!r} when traced and is now {leaf.value!r}; the mod's "
                         "Python code depends on its value, so it must be traced again")


def _param_value(leaf: Leaf) -> int | float:
    value = leaf.value
    if isinstance(value, int) and not _INT32[0] <= value <= _INT32[1]:
        raise ValueError(f"{leaf.display} = {value} does not fit in int32, the type of integer parameters "
                         "of attention mods")
    return value


def _tensor_value(source: TensorSource, leaves: Mapping[Path, Leaf]) -> torch.Tensor:
    tensor = source.pinned if source.path is None else leaves[source.path].value
    try:
        spec = tensor_spec(tensor)
    except TypeError:
        spec = None
    if spec != source.spec:
        raise StaleTrace(f"captured tensor {source.name or 'value'} changed from {source.spec} to "
                         f"{tensor.dtype}, ndim {tensor.ndim}, requires_grad={tensor.requires_grad}")
    return tensor
