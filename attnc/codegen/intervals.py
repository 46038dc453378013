"""Two-sided integer bounds in a conjunction, tested with one unsigned compare.

A mask such as NATTEN's tests `lo <= x` and `x <= hi` per score element, where x moves with the key (or query)
and lo, hi are known once per program or row. Compiled as written, each test is a compare and each `&` a select:
two of each per interval. Where lo and hi are hoisted, the pair is one subtract and one compare per element:

    lo <= x <= hi   <=>   (x - lo) as uint32 < n,   n = clamp(hi - lo + 1, 0, 2^32 - 1)

with n computed where lo and hi are known, in int64 (so that hi - lo + 1 cannot wrap around). Why it is exact:
where n > 0, lo <= hi are int32 values and x - lo, a true integer in [INT32_MIN - lo, INT32_MAX - lo] (an
interval of 2^32 values), keeps its order when taken modulo 2^32 as long as it is non-negative and lands above
hi - lo where it is negative; where the interval is empty (hi < lo), n is 0 and no x passes, as in the original.
The one value the clamp loses is x = INT32_MAX when the interval is all of int32 (lo = INT32_MIN and
hi = INT32_MAX, 2^32 values): the pair is rewritten only where `value_bounds` rules that out.

A strict bound is first made inclusive (x > lo: x >= lo + 1, in int64); its int32 base lo + 1 wraps around only
when lo = INT32_MAX, where the interval is empty and n = 0 makes the base irrelevant.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from attnc.ir.dtypes import DType
from attnc.ir.int_range import INT32, value_bounds
from attnc.ir.node import Node, const, node
from attnc.ir.ops import MIRROR, Op

UINT32_MAX = 2**32 - 1
_LOWER = {Op.GE: 0, Op.GT: 1}  # x >= b, x > b: the least allowed x is b + this
_UPPER = {Op.LE: 0, Op.LT: 1}  # x <= b, x < b: the greatest allowed x is b - this


@dataclasses.dataclass(frozen=True)
class Bound:
    """One side of an interval: `x >= bound + offset` (lower) or `x <= bound - offset` (upper)."""

    x: Node
    bound: Node
    offset: int  # 1 for a strict comparison
    lower: bool


@dataclasses.dataclass(frozen=True)
class Interval:
    """`base <= x < base + width` in unsigned arithmetic: `(x - base) as uint32 < width as uint32`."""

    x: Node  # int32, per element
    base: Node  # int32, hoisted: the least allowed x
    width: Node  # int64, hoisted: how many values from `base` on are allowed, clamped to [0, 2^32 - 1]


Term = Node | Interval


def conjunction_terms(n: Node, per_element: Callable[[Node], bool]) -> list[Term] | None:
    """The terms of the per-element conjunction `n` (an AND tree, flattened through its per-element ANDs) with
    each pair of a lower and an upper bound on the same int32 x as one `Interval`; None where there is no
    such pair (or `n` is no such AND). `per_element`: whether a node is computed per element (tile level)."""
    if n.op is not Op.AND or n.dtype is not DType.bool or not per_element(n):
        return None
    terms = _flatten(n, per_element)
    paired: dict[Node, Interval] = {}
    pending: dict[tuple[Node, bool], list[tuple[Node, Bound]]] = {}  # (x, lower) -> unpaired terms bounding x so
    for t in terms:
        b = _bound(t, per_element)
        if b is None:
            continue
        unpaired = pending.get((b.x, not b.lower), [])
        for i, (other, other_bound) in enumerate(unpaired):
            interval = _interval(*((b, other_bound) if b.lower else (other_bound, b)))
            if interval is not None:
                paired[t] = paired[other] = interval
                del unpaired[i]
                break
        else:
            pending.setdefault((b.x, b.lower), []).append((t, b))
    if not paired:
        return None
    out: list[Term] = []
    for t in terms:
        term = paired.get(t, t)
        if term not in out:
            out.append(term)
    return out


def _flatten(n: Node, per_element: Callable[[Node], bool]) -> list[Node]:
    """The operands of the AND tree at `n`, in order, each once; hoisted ANDs stay whole."""
    out: list[Node] = []
    stack = [n]
    while stack:
        t = stack.pop()
        if t.op is Op.AND and t.dtype is DType.bool and per_element(t):
            stack.extend(reversed(t.src))
        elif t not in out:
            out.append(t)
    return out


def _bound(t: Node, per_element: Callable[[Node], bool]) -> Bound | None:
    """`t` as a bound on a per-element int32 x by a hoisted value, if it is one (in either operand order)."""
    if t.op not in MIRROR or t.src[0].dtype is not DType.int32:
        return None
    x, bound, op = t.src[0], t.src[1], t.op
    if per_element(bound):  # bound op x: x op' bound
        x, bound, op = bound, x, MIRROR[op]
    if not per_element(x) or per_element(bound):
        return None
    if op in _LOWER:
        return Bound(x, bound, _LOWER[op], lower=True)
    if op in _UPPER:
        return Bound(x, bound, _UPPER[op], lower=False)
    return None


def _interval(lower: Bound, upper: Bound) -> Interval | None:
    """The pair as an `Interval`; None where the interval could be all of int32 and x could be INT32_MAX."""
    if (lower.offset == 0 and upper.offset == 0 and value_bounds(lower.bound)[0] == INT32[0]
            and value_bounds(upper.bound)[1] == INT32[1] and value_bounds(lower.x)[1] == INT32[1]):
        return None
    lo, hi = (_wide(b.bound) for b in (lower, upper))
    base = lower.bound if lower.offset == 0 else node(Op.CAST, DType.int32, _plus(lo, lower.offset))
    # hi - lo + 1 allowed values, less one per strict bound
    count = _plus(hi if lo is const(0, DType.int64) else node(Op.SUB, DType.int64, hi, lo),
                  1 - lower.offset - upper.offset)
    clamped = node(Op.MAX, DType.int64, count, const(0, DType.int64))
    width = node(Op.MIN, DType.int64, clamped, const(UINT32_MAX, DType.int64))
    return Interval(lower.x, base, width)


def _wide(n: Node) -> Node:
    """The int32 `n` in int64 (a constant as one)."""
    return const(n.arg, DType.int64) if n.op is Op.CONST else node(Op.CAST, DType.int64, n)


def _plus(n: Node, k: int) -> Node:
    return node(Op.ADD, DType.int64, n, const(k, DType.int64)) if k else n
