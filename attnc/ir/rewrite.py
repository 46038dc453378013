"""Rewriting by rules: a rule is data, `(pattern, fn)`, and `rewrite` applies a rule set bottom-up until
no rule matches anywhere.

A pattern matches a node by op, operands, constant value or predicate, and binds names to the nodes it
matched; `fn` receives the bindings as keyword arguments and returns the replacement (None: declines).
Operands of commutative ops match in either order. A name bound twice must bind the same node, so
`op(Op.SUB, X, X)` is `x - x`.

This module also defines the canonical operand order, shared by the ordering rule and every rule that
builds commutative nodes, so that rewriting reaches one fixpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterable

from attnc.ir.dtypes import DType
from attnc.ir.node import Node, node
from attnc.ir.ops import COMMUTATIVE, COMPARE, MIRROR, Op
from attnc.ir.printer import describe


@dataclasses.dataclass(frozen=True)
class Pat:
    ops: frozenset[Op] | None = None  # None: any op
    src: tuple[Pat, ...] | None = None  # None: any operands
    name: str | None = None  # bind the matched node to this name
    values: tuple[object, ...] = ()  # a CONST with one of these values (type- and sign-exact)
    where: Callable[[Node], bool] | None = None  # an extra condition on the matched node


Rule = tuple[Pat, Callable[..., Node | None]]


def op(ops: Op | Iterable[Op], *src: Pat, name: str | None = None,
       where: Callable[[Node], bool] | None = None) -> Pat:
    """A node with one of `ops` whose operands match `src`."""
    operands = tuple(src) if src else None  # no operand patterns: any operands
    return Pat(frozenset([ops] if isinstance(ops, Op) else ops), operands, name, (), where)


def cst(*values: object, name: str | None = None) -> Pat:
    """A constant equal to one of `values` (any constant if none are given); 0 matches int zero only,
    -0.0 only negative float zero."""
    return Pat(frozenset({Op.CONST}), None, name, values)


def any_(name: str | None = None, where: Callable[[Node], bool] | None = None) -> Pat:
    return Pat(name=name, where=where)


def match(pat: Pat, n: Node) -> dict[str, Node] | None:
    bound: dict[str, Node] = {}
    return bound if _match(pat, n, bound) else None


def _same_value(a: object, b: object) -> bool:
    if type(a) is not type(b):
        return False
    return a.hex() == b.hex() if isinstance(a, float) else a == b


def _match(pat: Pat, n: Node, bound: dict[str, Node]) -> bool:
    if pat.ops is not None and n.op not in pat.ops:
        return False
    if pat.values and not any(_same_value(n.arg, v) for v in pat.values):
        return False
    if pat.where is not None and not pat.where(n):
        return False
    if pat.src is not None and not _match_operands(pat.src, n, bound):
        return False
    if pat.name is None:
        return True
    return bound.setdefault(pat.name, n) is n


def _match_operands(pats: tuple[Pat, ...], n: Node, bound: dict[str, Node]) -> bool:
    if len(pats) != len(n.src):
        return False
    orders = [n.src, n.src[::-1]] if n.op in COMMUTATIVE else [n.src]
    for operands in orders:
        trial = dict(bound)
        if all(_match(p, s, trial) for p, s in zip(pats, operands, strict=True)):
            bound.update(trial)
            return True
    return False


class RuleSet:
    """Rules indexed by the op at the pattern's root, tried in the order given."""

    def __init__(self, *rules: Rule) -> None:
        self.rules = rules
        self._by_op = {o: tuple(r for r in rules if r[0].ops is None or o in r[0].ops) for o in Op}

    def __add__(self, other: RuleSet) -> RuleSet:
        return RuleSet(*self.rules, *other.rules)

    def apply(self, n: Node) -> Node:
        """The first replacement a rule offers for `n` itself (not its operands), or `n`."""
        for pat, fn in self._by_op[n.op]:
            bound = match(pat, n)
            if bound is None:
                continue
            out = fn(**bound)
            if out is not None and out is not n:
                return out
        return n


def rewrite(root: Node, rules: RuleSet) -> Node:
    """Rewrite operands first, then the node; a replacement is itself rewritten until no rule matches.

    Iterative (an explicit stack), so long chains such as many and-ed masks do not hit Python's
    recursion limit."""
    return _Rewrite(rules).run(root)


class _Rewrite:
    def __init__(self, rules: RuleSet) -> None:
        self.rules = rules
        self.done: dict[Node, Node] = {}  # node -> its fixpoint
        self.waiting: set[Node] = set()  # nodes whose replacement is being rewritten: meeting one is a loop

    def run(self, root: Node) -> Node:
        stack = [root]
        while stack:
            todo = [] if stack[-1] in self.done else self._step(stack[-1])
            for n in todo:
                if n in self.waiting:
                    raise RuntimeError(f"rewrite rules loop at {describe(n)}")
            if todo:
                stack.extend(todo)
            else:
                stack.pop()
        return self.done[root]

    def _step(self, n: Node) -> list[Node]:
        """Finish `n`, or return the nodes to rewrite first: its operands, or its replacement."""
        pending = [s for s in n.src if s not in self.done]
        if pending:
            return pending
        rebuilt = _with_operands(n, tuple(self.done[s] for s in n.src))
        out = self.rules.apply(rebuilt)
        if out is not rebuilt and out not in self.done:
            self.waiting.add(n)
            return [out]
        self.done[n] = self.done[rebuilt] = self.done.get(out, out)
        self.waiting.discard(n)
        return []


def _with_operands(n: Node, src: tuple[Node, ...]) -> Node:
    if all(a is b for a, b in zip(src, n.src, strict=True)):
        return n
    return Node.make(n.op, n.dtype, src, n.arg)


# -- canonical operand order ----------------------------------------------------------------------

_LEVEL = {"b": 1, "h": 2, "q": 3, "kv": 4, "score": 5}


def level(n: Node) -> int:
    """How deep in the b, h, q, kv loop nest `n` varies: 0 for loop invariants, 4 for kv-dependent."""
    return max((_LEVEL[d] for d in n.deps), default=0)


def order_key(n: Node) -> tuple[bool, int, int, str]:
    """Constants last; then outer-loop values before inner ones (so `q >= kv`, and sums grouped so the
    hoistable part is one subtree); then leaves before computations; then a stable structural digest."""
    return (n.op is Op.CONST, level(n), n.op.value, digest(n))


_DIGESTS: dict[Node, str] = {}  # memo: nodes are interned and immutable, so their digest never changes


def digest(n: Node) -> str:
    """A structural hash that, unlike `hash(node)`, is the same in every process."""
    stack = [n]
    while stack:  # iterative and stopping at known digests: deep chains cost linear time, no recursion
        top = stack[-1]
        missing = [s for s in top.src if s not in _DIGESTS]
        if missing:
            stack.extend(missing)
            continue
        if top not in _DIGESTS:
            _DIGESTS[top] = _digest_of(top)
        stack.pop()
    return _DIGESTS[n]


def _digest_of(n: Node) -> str:
    text = "|".join((n.op.name, n.dtype.value, repr(n.arg), *(_DIGESTS[s] for s in n.src)))
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def swappable(o: Op, dtype: DType) -> bool:
    # float min/max return their first operand when comparing -0.0 with 0.0: not commutative there
    float_minmax = o in (Op.MIN, Op.MAX) and dtype.is_float
    return (o in COMMUTATIVE or o in COMPARE) and not float_minmax


def ordered(o: Op, dtype: DType, a: Node, b: Node) -> Node:
    """`o(a, b)` with its operands in canonical order; comparisons are mirrored (`kv <= q` -> `q >= kv`)."""
    if swappable(o, dtype) and order_key(b) < order_key(a):
        return node(MIRROR.get(o, o), dtype, b, a)
    return node(o, dtype, a, b)
