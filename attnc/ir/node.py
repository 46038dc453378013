"""The IR node: small, frozen and interned.

A `Node` is `(op, dtype, src, arg)`. Nodes are built only through `Node.make`, which returns the one
existing node with the same fields, so structural equality is identity, CSE is free and the hash of a
variant's root is a stable fingerprint. `repr(node)` is Python code that rebuilds the node (see
`REPR_NAMESPACE`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

from attnc.ir.dtypes import INDEX, SCORE, DType
from attnc.ir.ops import INDEX_VARS, TILE_VARS, Op

Arg = Any  # None | str | bool | int | float | slot index


def _arg_key(arg: Arg) -> tuple:
    # bool/int/float compare equal across types (True == 1 == 1.0) and -0.0 == 0.0; keep them apart.
    if isinstance(arg, float):
        return ("float", arg.hex())
    return (type(arg).__name__, arg)


class Node:
    __slots__ = ("_hash", "_key", "arg", "deps", "dtype", "op", "src")

    op: Op
    dtype: DType
    src: tuple[Node, ...]
    arg: Arg
    deps: frozenset[str]

    _table: ClassVar[dict[tuple, Node]] = {}

    @classmethod
    def make(cls, op: Op, dtype: DType, src: tuple[Node, ...] = (), arg: Arg = None) -> Node:
        key = (op, dtype, tuple(id(s) for s in src), _arg_key(arg))
        found = cls._table.get(key)
        if found is not None:
            return found
        node = object.__new__(cls)
        for name, value in (("op", op), ("dtype", dtype), ("src", tuple(src)), ("arg", arg)):
            object.__setattr__(node, name, value)
        object.__setattr__(node, "deps", _deps(op, arg, src))
        object.__setattr__(node, "_key", key)
        object.__setattr__(node, "_hash", hash((op, dtype, tuple(s._hash for s in src), _arg_key(arg))))
        cls._table[key] = node
        return node

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("IR nodes are immutable")

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return self is other

    def __repr__(self) -> str:
        return render_repr(self)

    def __reduce__(self):  # pickling re-interns
        return (Node.make, (self.op, self.dtype, self.src, self.arg))

    def walk(self, operands: Callable[[Node], Sequence[Node]] | None = None) -> Iterator[Node]:
        """Every node of the DAG once, operands before users (topological order). `operands`: what a node's
        operands are taken to be (default: its `src`), for a walk through a rewritten view of the DAG."""
        seen: set[int] = set()
        order: list[Node] = []
        stack: list[tuple[Node, bool]] = [(self, False)]
        while stack:
            node, expanded = stack.pop()
            if expanded:
                order.append(node)
                continue
            if id(node) in seen:
                continue
            seen.add(id(node))
            stack.append((node, True))
            below = node.src if operands is None else operands(node)
            stack.extend((s, False) for s in reversed(below) if id(s) not in seen)
        return iter(order)

    def depth(self) -> int:
        """The number of nodes on the longest path from here to a leaf (computed without recursion)."""
        depths: dict[Node, int] = {}
        for n in self.walk():
            depths[n] = 1 + max((depths[s] for s in n.src), default=0)
        return depths[self]

    @property
    def uses_score(self) -> bool:
        return "score" in self.deps


def _deps(op: Op, arg: Arg, src: tuple[Node, ...]) -> frozenset[str]:
    if op is Op.VAR:
        return frozenset({TILE_VARS.get(arg, arg)})
    if op is Op.SCORE:
        return frozenset({"b", "h", "q", "kv", "score"})
    out: frozenset[str] = frozenset()
    for s in src:
        out |= s.deps
    return out


# -- builders: the vocabulary `repr` speaks ------------------------------------------------------


def var(name: str) -> Node:
    if name not in INDEX_VARS and name not in TILE_VARS:
        raise ValueError(f"unknown index variable {name!r}")
    return Node.make(Op.VAR, INDEX, (), name)


def score() -> Node:
    return Node.make(Op.SCORE, SCORE)


def const(value: bool | int | float, dtype: DType) -> Node:
    return Node.make(Op.CONST, dtype, (), _normalise_const(value, dtype))


def param(slot: int, dtype: DType) -> Node:
    return Node.make(Op.PARAM, dtype, (), slot)


def load(slot: int, dtype: DType, *index: Node) -> Node:
    return Node.make(Op.LOAD, dtype, tuple(index), slot)


def node(op: Op, dtype: DType, *src: Node, arg: Arg = None) -> Node:
    return Node.make(op, dtype, tuple(src), arg)


def _normalise_const(value: bool | int | float, dtype: DType) -> bool | int | float:
    if dtype.is_bool:
        return bool(value)
    if dtype.is_int:
        return int(value)
    return float(value)


def _const_repr(value: bool | int | float) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return f"float({str(value)!r})"
    return repr(value)


def render_repr(n: Node) -> str:
    """Python code rebuilding `n`, written out with an explicit stack (deep expressions do not recurse)."""
    out: list[str] = []
    stack: list[Node | str] = [n]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
        elif item.op in _LEAF_REPR:
            out.append(_LEAF_REPR[item.op](item))
        else:
            name = "load" if item.op is Op.LOAD else "node"
            head = f"{name}({item.arg if item.op is Op.LOAD else item.op!r}, {item.dtype!r}, "
            pieces: list[Node | str] = [head]
            for i, s in enumerate(item.src):
                pieces += [", ", s] if i else [s]
            stack.extend(reversed([*pieces, ")"]))
    return "".join(out)


_LEAF_REPR = {
    Op.VAR: lambda n: f"var({n.arg!r})",
    Op.SCORE: lambda n: "score()",
    Op.CONST: lambda n: f"const({_const_repr(n.arg)}, {n.dtype!r})",
    Op.PARAM: lambda n: f"param({n.arg!r}, {n.dtype!r})",
}


REPR_NAMESPACE: dict[str, object] = {
    "var": var, "score": score, "const": const, "param": param, "load": load, "node": node,
    "Op": Op, "DType": DType, "float": float,
}


def from_repr(text: str) -> Node:
    """Rebuild a node from its `repr`."""
    return eval(text, {"__builtins__": {}}, dict(REPR_NAMESPACE))  # our own printer's output, builders only
