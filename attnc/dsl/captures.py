"""Slots for the values a traced program reads at run time, and how to find their current values.

While tracing, a `Recorder` hands out PARAM slots (closure scalars) and LOAD slots (captured tensors),
in order of first use; mask and score mod share one slot space. The result, `Captures`, remembers where
each slot's value lives (a path through closures and globals, or the tensor object itself when no path
leads to it: an object's attribute, a tensor built inside the mod). `Captures.bind` re-reads those values from
the mods of a later call, so rebinding `window = 128` needs no new trace.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from typing import Any

import torch

from attnc.dsl import vector
from attnc.dsl.closure import Leaf, Path, ShapeEntry, Walk, describe_change
from attnc.dsl.derived import Metadata, Ref, Replay, TensorGraph, describe_metadata, metadata_of
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
    sources: tuple[torch.Tensor, ...] | None = None  # the captured tensors the slots are computed from

    def version_key(self) -> tuple[tuple[int, int], ...]:
        """Identifies the slots' values: each source tensor and its version counter (in-place changes bump
        it). Valid while the sources are alive: keep them (`sources` or `tensors`) with the key."""
        return tuple((id(t), t._version) for t in (self.tensors if self.sources is None else self.sources))


@dataclasses.dataclass(frozen=True, eq=False)
class TensorSource:
    """A captured tensor (an input of the trace): where it lives in the closures, or the tensor itself
    when no closure holds it (an object's attribute, a constant table built in the mod)."""

    path: Path | None
    pinned: torch.Tensor | None = None
    name: str = ""


@dataclasses.dataclass(frozen=True, eq=False)
class Slot:
    """A LOAD slot: which runtime tensor it reads (an input, or a value derived from inputs)."""

    ref: Ref
    spec: TensorSpec
    name: str


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
        self.graph = TensorGraph()
        self._slots: list[Slot] = []
        self._tensor_slots: dict[Ref, int] = {}
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
        """A one-element tensor used as a value: runtime data unless the mod built it from constants."""
        if math.prod(self.read_shape(tensor)) != 1:
            raise TraceError.here(
                f"a tensor of shape {list(tensor.shape)} is used as a value, but mods compute scalars",
                "index it with expressions of the indices, e.g. bias[h, q_idx]",
            )
        if self.graph.ref(tensor) is None:
            return Typed(const(tensor.item(), _dtype_of(tensor)))
        slot = self._tensor_slot(tensor)
        return Typed(load(slot, self.tensor_specs[slot].dtype, *[const(0, INDEX)] * tensor.ndim))

    def read_shape(self, tensor: torch.Tensor) -> tuple[int, ...]:
        """A captured tensor's shape, for attnc's own decisions while tracing (a vector's length): the
        trace depends on it as it does on a shape the mod reads itself."""
        self.graph.note_metadata(tensor)
        return tuple(tensor.shape)

    def read(self, tensor: torch.Tensor, index: Any) -> Sym:
        """`tensor[index]`: a traced scalar, or a read with dimensions left (chained indexing, small vectors:
        attnc.dsl.vector)."""
        return vector.read(self, tensor, index if isinstance(index, tuple) else (index,))

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
        ref = self.graph.ref(tensor, pin=True)
        slot = self._tensor_slots.get(ref)
        if slot is None:
            spec = TensorSpec(_dtype_of(tensor), tensor.ndim, tensor.requires_grad)
            slot = self._tensor_slots[ref] = len(self.tensor_specs)
            self.tensor_specs.append(spec)
            self._slots.append(Slot(ref, spec, self._name(ref)))
        return slot

    def _name(self, ref: Ref) -> str:
        if ref.derived:
            return "a value computed from captured tensors"
        leaf = self._closure_tensors.get(id(self.graph.inputs[ref.index]))
        return "" if leaf is None else leaf.display

    def captures(self, shape: list[ShapeEntry]) -> Captures:
        params = tuple(leaf.path for leaf in self._params)
        inputs = tuple(self._source(t) for t in self.graph.inputs)
        replay = Replay(self.graph.recipes, len(self.graph.derived))
        metadata = tuple(MetadataRead(ref, metadata_of(self._value(ref), strides=strides), strides, self._name(ref))
                         for ref, strides in self.graph.metadata_reads.items())
        return Captures(tuple(shape), params, inputs, tuple(self._slots), replay, tuple(self.frozen.items()),
                        metadata)

    def _value(self, ref: Ref) -> torch.Tensor:
        return (self.graph.derived if ref.derived else self.graph.inputs)[ref.index]

    def _source(self, tensor: torch.Tensor) -> TensorSource:
        leaf = self._closure_tensors.get(id(tensor))
        return TensorSource(None, pinned=tensor) if leaf is None else TensorSource(leaf.path, name=leaf.display)


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


@dataclasses.dataclass(frozen=True)
class MetadataRead:
    """A runtime tensor whose shape (dtype, ...) the trace read into Python, and what it read."""

    ref: Ref
    metadata: Metadata
    strides: bool
    name: str

    def check(self, inputs: tuple[torch.Tensor, ...], derived: list[torch.Tensor]) -> None:
        tensor = derived[self.ref.index] if self.ref.derived else inputs[self.ref.index]
        now = metadata_of(tensor, strides=self.strides)
        if now != self.metadata:
            raise StaleTrace(f"captured tensor {self.name or 'value'} had {describe_metadata(self.metadata, now)}; "
                             "the mod read its shape into Python, so it must be traced again")


@dataclasses.dataclass(frozen=True, eq=False)
class Captures:
    """Where each captured value lives, how derived tensors are recomputed, and the closure shape the
    trace is valid for."""

    shape: tuple[ShapeEntry, ...]
    params: tuple[Path, ...]  # where each PARAM slot's value lives
    inputs: tuple[TensorSource, ...]  # the captured tensors
    slots: tuple[Slot, ...]  # what each LOAD slot reads
    replay: Replay  # derived tensors from the inputs
    frozen: tuple[tuple[Path, Any], ...]  # closure scalars the trace specialised on, with their values
    metadata: tuple[MetadataRead, ...] = ()  # tensors whose metadata the trace depends on

    @property
    def tensors(self) -> tuple[TensorSource, ...]:
        """The captured tensor each LOAD slot reads directly (derived slots excluded)."""
        return tuple(self.inputs[s.ref.index] for s in self.slots if not s.ref.derived)

    def bind(self, mask_mod: Any, score_mod: Any) -> Bindings:
        """The current value of every slot, read from the given mods. StaleTrace if they changed shape."""
        walk = Walk()
        walk.roots(mask_mod, score_mod)
        if tuple(walk.shape) != self.shape:
            raise StaleTrace(describe_change(self.shape, tuple(walk.shape)))
        for path, value in self.frozen:
            _check_frozen(walk.leaves[path], value)
        params = tuple(_param_value(walk.leaves[path]) for path in self.params)
        inputs = tuple(_input_value(source, walk.leaves) for source in self.inputs)
        # inputs first: recomputing derived values from an input of another shape may fail
        for read in self.metadata:
            if not read.ref.derived:
                read.check(inputs, [])
        derived = self.replay.run(inputs)
        for read in self.metadata:
            if read.ref.derived:
                read.check(inputs, derived)
        tensors = tuple(_slot_value(slot, inputs, derived) for slot in self.slots)
        return Bindings(tensors, params, inputs)


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


def _input_value(source: TensorSource, leaves: Mapping[Path, Leaf]) -> torch.Tensor:
    tensor = source.pinned if source.path is None else leaves[source.path].value
    if tensor.device.type == "meta":
        raise ValueError(f"attnc: captured tensor {source.name or tuple(tensor.shape)} is a meta tensor: it has "
                         "no values for the mod to read; capture a tensor on the inputs' device")
    return tensor


def _slot_value(slot: Slot, inputs: tuple[torch.Tensor, ...], derived: list[torch.Tensor]) -> torch.Tensor:
    tensor = derived[slot.ref.index] if slot.ref.derived else inputs[slot.ref.index]
    try:
        spec = tensor_spec(tensor)
    except TypeError:
        spec = None
    # a derived value needs no gradient under torch.no_grad(): only its dtype and rank must hold
    same = spec == slot.spec if not slot.ref.derived else (
        spec is not None and (spec.dtype, spec.ndim) == (slot.spec.dtype, slot.spec.ndim))
    if not same:
        raise StaleTrace(f"captured tensor {slot.name or 'value'} changed from {slot.spec} to "
                         f"{tensor.dtype}, ndim {tensor.ndim}, requires_grad={tensor.requires_grad}")
    return tensor
