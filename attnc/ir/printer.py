"""Readable listings of IR: one SSA line per node with its dtype and the index variables it depends on.

    %3 = add %1, %2 : int32  [q, kv]

The dependency list is what hoisting looks at: a node without `kv` is computed once per query row.
"""

from __future__ import annotations

from attnc.ir.node import Node
from attnc.ir.ops import INDEX_VARS, Op
from attnc.ir.program import Program

_DEP_ORDER = (*INDEX_VARS, "score")


def format_node(root: Node) -> str:
    """The DAG below `root` as an SSA listing, operands before users, ending with `return`."""
    names: dict[Node, str] = {}
    lines = []
    for n in root.walk():
        names[n] = f"%{len(names)}"
        lines.append(f"{names[n]} = {_body(n, names)} : {n.dtype.value}  [{_deps(n)}]")
    lines.append(f"return {names[root]}")
    return "\n".join(lines)


def format_program(program: Program) -> str:
    tensors = ", ".join(
        f"t{i}: {t.dtype.value} ndim={t.ndim}" + (" requires_grad" if t.requires_grad else "")
        for i, t in enumerate(program.tensors)
    )
    params = ", ".join(f"p{i}: {p.dtype.value} {p.name!r}" for i, p in enumerate(program.params))
    lines = [f"tensors: {tensors or '-'}", f"params: {params or '-'}"]
    for name, absent in (("mask", "every pair allowed"), ("score", "identity")):
        root = getattr(program, name)
        if root is None:
            lines.append(f"{name}: {absent}")
            continue
        lines.append(f"{name}:")
        lines.extend("  " + line for line in format_node(root).splitlines())
    return "\n".join(lines)


def describe(n: Node) -> str:
    """One line naming a node and its operand dtypes, for error messages."""
    if not n.src:
        return f"{_body(n, {})} : {n.dtype.value}"
    head = f"load t{n.arg}" if n.op is Op.LOAD else n.op.name.lower()
    return f"{head}({', '.join(s.dtype.value for s in n.src)}) : {n.dtype.value}"


def _body(n: Node, names: dict[Node, str]) -> str:
    operands = ", ".join(names[s] for s in n.src)
    if n.op is Op.VAR:
        return f"var {n.arg}"
    if n.op is Op.SCORE:
        return "score"
    if n.op is Op.CONST:
        return f"const {n.arg!r}"
    if n.op is Op.PARAM:
        return f"param p{n.arg}"
    if n.op is Op.LOAD:
        return f"load t{n.arg}[{operands}]"
    return f"{n.op.name.lower()} {operands}"


def _deps(n: Node) -> str:
    return ", ".join(d for d in _DEP_ORDER if d in n.deps)
