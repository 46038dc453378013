"""Interval arithmetic on float IR over a tile, for the tile classifier (`attnc.ir.tiles`).

A float value that moves with q or kv is bounded over a tile box by IR endpoints `[lo, hi]`, computed with
the same operation in the same dtype at the operands' endpoints. Rounding to nearest is monotone, so for an
operation monotone in each operand the rounded results at the endpoints bound every rounded result inside:
the endpoints are as tight as the operands' and no wider for rounding. Operations other backends may
compute differently (a GPU's approximate transcendentals, a fused multiply-add) widen by a few units in the
last place (`_margin`), so a tile decided here is decided for the kernel's own arithmetic too.

NaN: a NaN endpoint means "no information" on that side. Every test built from endpoints is a comparison,
which is False on NaN, so it claims nothing there; `Op.MIN` / `Op.MAX` propagate NaN (as the interpreter
and the generated code do). A value itself may be NaN at some points: `ordered` (IR bool) says it is NaN
nowhere in the tile, `some` that it is not NaN somewhere. A comparison with a NaN operand is False (`!=`
True), so a tile is never FULL by an argument about ordered values unless `ordered` holds.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import torch

from attnc.ir.dtypes import DType
from attnc.ir.node import Node, const, node
from attnc.ir.ops import Op

BOOL, F64 = DType.bool, DType.float64
TRUE_N, FALSE_N = const(True, BOOL), const(False, BOOL)


@dataclasses.dataclass(frozen=True)
class FRange:
    """Every value of the tile that is not NaN lies in `[lo, hi]` (a NaN endpoint: no bound on that side).
    `ordered`: no value is NaN; `some`: some value is not NaN (IR bools). `bound`: a compile-time bound on
    the magnitude of the endpoints and values (inf: unknown), so finiteness tests can be skipped."""

    lo: Node
    hi: Node
    ordered: Node = TRUE_N
    some: Node = TRUE_N
    bound: float = math.inf

    @property
    def exact(self) -> bool:
        """One tile-constant value (lo is hi)."""
        return self.lo is self.hi


def value_of(n: Node) -> float:
    """A float constant's value in its own dtype (the IR keeps the Python float it was written as)."""
    return float(torch.tensor(n.arg, dtype=n.dtype.torch).item())


def exactly(n: Node) -> FRange:
    """A tile-constant float: its own bounds; NaN nowhere unless it is NaN."""
    if n.op is Op.CONST:
        v = value_of(n)
        return FRange(n, n, FALSE_N if math.isnan(v) else TRUE_N, FALSE_N if math.isnan(v) else TRUE_N,
                      abs(v) if not math.isnan(v) else math.inf)
    number = node(Op.EQ, BOOL, n, n)
    return FRange(n, n, number, number)


def finite_max(dtype: DType) -> float:
    return float(torch.finfo(dtype.torch).max)


# -- IR helpers (NaN-propagating min / max) --------------------------------------------------------------


def fmin(a: Node, b: Node) -> Node:
    return a if a is b else node(Op.MIN, a.dtype, a, b)


def fmax(a: Node, b: Node) -> Node:
    return a if a is b else node(Op.MAX, a.dtype, a, b)


def _extreme(fn: Callable[[Node, Node], Node], xs: Sequence[Node]) -> Node:
    out = xs[0]
    for x in xs[1:]:
        out = fn(out, x)
    return out


def _all(xs: Sequence[Node]) -> Node:
    kept = list(dict.fromkeys(x for x in xs if x is not TRUE_N))
    if FALSE_N in kept:
        return FALSE_N
    out = kept[0] if kept else TRUE_N
    for x in kept[1:]:
        out = node(Op.AND, BOOL, out, x)
    return out


def _finite(x: Node) -> Node:
    """IR: x is neither infinite nor NaN."""
    return node(Op.LT, BOOL, node(Op.ABS, x.dtype, x), const(math.inf, x.dtype))


def _c(value: float, dtype: DType) -> Node:
    return const(value, dtype)


# -- the result of an operation --------------------------------------------------------------------------


def _result(lo: Node, hi: Node, args: Sequence[FRange], bound: float, dtype: DType, *, nan_free: bool) -> FRange:
    """The range of an operation's value: ordered where every operand is and (for an operation that turns
    infinities into NaN: inf - inf, 0 * inf, inf / inf, log of a negative) the endpoints are finite; all
    NaN where an operand is (NaN in, NaN out)."""
    ordered = [a.ordered for a in args]
    if not nan_free and not bound < finite_max(dtype) / 2:
        ordered += [_finite(lo), _finite(hi)]
    return FRange(lo, hi, _all(ordered), _all([a.some for a in args]), bound)


def _margin(r: FRange, relative: float, absolute: float, scale: Sequence[FRange], dtype: DType) -> FRange:
    """`r` widened by `relative` times the largest magnitude of `scale`'s endpoints, plus `absolute`."""
    if dtype.is_half:  # computed in float32 and rounded once: another backend may round the other way
        relative = max(relative, 2.0 * float(torch.finfo(dtype.torch).eps))
    size = _extreme(fmax, [node(Op.ABS, dtype, x) for s in scale for x in (s.lo, s.hi)])
    m = node(Op.ADD, dtype, node(Op.MUL, dtype, size, _c(relative, dtype)), _c(absolute, dtype))
    bound = max(s.bound for s in scale) * relative + absolute + r.bound
    return dataclasses.replace(r, lo=node(Op.SUB, dtype, r.lo, m), hi=node(Op.ADD, dtype, r.hi, m), bound=bound)


_ROUNDING = 2.0**-20  # about 8 float32 units in the last place
_FAST = 2.0**-8  # approximate tanh / sigmoid of fast-math builds


def _fused(n: Node) -> bool:
    """An operand a backend may fuse into a following add (a multiply-add rounds once, not twice)."""
    return n.op in (Op.MUL, Op.TRUEDIV)


# -- rules: (node, operand ranges) -> range ---------------------------------------------------------------

Rule = Callable[[Node, list[FRange]], "FRange | None"]


def _add(n: Node, r: list[FRange]) -> FRange:
    a, b = r
    t = n.dtype
    if n.op is Op.ADD:
        lo, hi = node(Op.ADD, t, a.lo, b.lo), node(Op.ADD, t, a.hi, b.hi)
    else:
        lo, hi = node(Op.SUB, t, a.lo, b.hi), node(Op.SUB, t, a.hi, b.lo)
    out = _result(lo, hi, r, a.bound + b.bound, t, nan_free=False)
    if any(_fused(s) for s in n.src):
        out = _margin(out, _ROUNDING, 0.0, r, t)
    return out


def _corners(op: Op, n: Node, a: FRange, b: FRange) -> tuple[Node, Node]:
    if b.exact and b.lo.op is Op.CONST:
        v = value_of(b.lo)
        if v >= 0 or math.isnan(v):
            return node(op, n.dtype, a.lo, b.lo), node(op, n.dtype, a.hi, b.lo)
        return node(op, n.dtype, a.hi, b.lo), node(op, n.dtype, a.lo, b.lo)
    xs = list(dict.fromkeys(node(op, n.dtype, x, y) for x in (a.lo, a.hi) for y in (b.lo, b.hi)))
    return _extreme(fmin, xs), _extreme(fmax, xs)


def _mul(n: Node, r: list[FRange]) -> FRange:
    a, b = r
    if a.exact and a.lo.op is Op.CONST:
        a, b = b, a
    lo, hi = _corners(Op.MUL, n, a, b)
    return _result(lo, hi, r, a.bound * b.bound, n.dtype, nan_free=False)


def _truediv(n: Node, r: list[FRange]) -> FRange:
    """Bounded where the divisor's range excludes 0 (elsewhere: NaN endpoints, no information)."""
    a, b = r
    t = n.dtype
    lo, hi = _corners(Op.TRUEDIV, n, a, b)
    zero, nan = _c(0.0, t), _c(math.nan, t)
    away = node(Op.OR, BOOL, node(Op.GT, BOOL, b.lo, zero), node(Op.LT, BOOL, b.hi, zero))
    lo, hi = node(Op.WHERE, t, away, lo, nan), node(Op.WHERE, t, away, hi, nan)
    out = _result(lo, hi, r, math.inf, t, nan_free=False)
    return _margin(out, _ROUNDING, 0.0, [out], t)


def _neg(n: Node, r: list[FRange]) -> FRange:
    (a,) = r
    t = n.dtype
    return dataclasses.replace(a, lo=node(Op.NEG, t, a.hi), hi=node(Op.NEG, t, a.lo))


def _abs(n: Node, r: list[FRange]) -> FRange:
    (a,) = r
    t, zero = n.dtype, _c(0.0, n.dtype)
    neg_hi = node(Op.NEG, t, a.hi)
    lo = node(Op.WHERE, t, node(Op.GE, BOOL, a.lo, zero), a.lo,
              node(Op.WHERE, t, node(Op.LE, BOOL, a.hi, zero), neg_hi, zero))
    return dataclasses.replace(a, lo=lo, hi=fmax(node(Op.NEG, t, a.lo), a.hi))


def _minmax(n: Node, r: list[FRange]) -> FRange:
    a, b = r
    pick = fmin if n.op is Op.MIN else fmax
    return _result(pick(a.lo, b.lo), pick(a.hi, b.hi), r, max(a.bound, b.bound), n.dtype, nan_free=True)


def _select(n: Node, r: list[FRange]) -> FRange:
    a, b = r
    some = a.some if a.some is b.some else node(Op.OR, BOOL, a.some, b.some)
    return FRange(fmin(a.lo, b.lo), fmax(a.hi, b.hi), _all([a.ordered, b.ordered]), some, max(a.bound, b.bound))


def _increasing(bound: Callable[[float], float], relative: float = 0.0, absolute: float = 0.0,
                nan_free: bool = True) -> Rule:
    """A unary function non-decreasing on its domain (outside it: NaN endpoints, no information)."""

    def rule(n: Node, r: list[FRange]) -> FRange:
        (a,) = r
        lo, hi = node(n.op, n.dtype, a.lo), node(n.op, n.dtype, a.hi)
        out = _result(lo, hi, r, bound(a.bound), n.dtype, nan_free=nan_free)
        return _margin(out, relative, absolute, [out], n.dtype) if relative or absolute else out

    return rule


def _rsqrt(n: Node, r: list[FRange]) -> FRange:
    (a,) = r
    lo, hi = node(Op.RSQRT, n.dtype, a.hi), node(Op.RSQRT, n.dtype, a.lo)
    out = _result(lo, hi, r, math.inf, n.dtype, nan_free=False)
    return _margin(out, _ROUNDING, 0.0, [out], n.dtype)


def _sign(n: Node, r: list[FRange]) -> FRange:
    """sign is non-decreasing; sign(NaN) is 0 (as torch computes it, in the interpreter and in generated
    code), so where the operand may be NaN the range takes in 0 and every value is a number."""
    (a,) = r
    t = n.dtype

    def endpoint(x: Node, unbounded: float) -> Node:  # a NaN endpoint bounds nothing: -1 or 1 there
        return node(Op.WHERE, t, node(Op.NE, BOOL, x, x), _c(unbounded, t), node(Op.SIGN, t, x))

    lo, hi = endpoint(a.lo, -1.0), endpoint(a.hi, 1.0)
    if a.ordered is not TRUE_N:
        zero = _c(0.0, t)
        lo = node(Op.WHERE, t, a.ordered, lo, fmin(lo, zero))
        hi = node(Op.WHERE, t, a.ordered, hi, fmax(hi, zero))
    return FRange(lo, hi, TRUE_N, TRUE_N, 1.0)


def _periodic(n: Node, r: list[FRange]) -> FRange:
    (a,) = r
    one = 1.0 + _ROUNDING
    return FRange(_c(-one, n.dtype), _c(one, n.dtype), a.ordered, a.some, one)


def _cast(n: Node, r: list[FRange]) -> FRange:
    (a,) = r  # float -> float conversion is monotone (and may overflow a narrower type to inf)
    t = n.dtype
    cast = _result(node(Op.CAST, t, a.lo), node(Op.CAST, t, a.hi), r, a.bound, t, nan_free=True)
    return cast if a.bound < finite_max(t) / 2 else dataclasses.replace(cast, bound=math.inf)


def _exp_bound(b: float) -> float:
    return math.exp(b) if b < 700 else math.inf


def _unbounded(b: float) -> float:
    return math.inf


def _one(b: float) -> float:
    return 1.0


RULES: dict[Op, Rule] = {
    Op.ADD: _add,
    Op.SUB: _add,
    Op.MUL: _mul,
    Op.TRUEDIV: _truediv,
    Op.NEG: _neg,
    Op.ABS: _abs,
    Op.MIN: _minmax,
    Op.MAX: _minmax,
    Op.WHERE: _select,
    Op.CAST: _cast,
    Op.FLOOR: _increasing(lambda b: b + 1),
    Op.CEIL: _increasing(lambda b: b + 1),
    Op.SIGN: _sign,
    Op.EXP: _increasing(_exp_bound, _ROUNDING),
    Op.EXP2: _increasing(_exp_bound, _ROUNDING),
    Op.LOG: _increasing(_unbounded, _ROUNDING, 2.0**-20, nan_free=False),
    Op.LOG2: _increasing(_unbounded, _ROUNDING, 2.0**-20, nan_free=False),
    Op.LOG1P: _increasing(_unbounded, _ROUNDING, 2.0**-20, nan_free=False),
    Op.SQRT: _increasing(_unbounded, _ROUNDING, nan_free=False),
    Op.RSQRT: _rsqrt,
    Op.TANH: _increasing(_one, _FAST, 2.0**-20),
    Op.SIGMOID: _increasing(_one, _FAST, 2.0**-20),
    Op.SIN: _periodic,
    Op.COS: _periodic,
    Op.ERF: _increasing(_one, _ROUNDING, 2.0**-20),
    Op.ATAN: _increasing(lambda b: math.pi / 2, _ROUNDING, 2.0**-20),
    Op.EXPM1: _increasing(_exp_bound, _ROUNDING, 2.0**-20),
    Op.ROUND: _increasing(lambda b: b + 1),
}


# -- comparing two ranges ---------------------------------------------------------------------------------


def compare(op: Op, a: FRange, b: FRange) -> tuple[Node, Node]:
    """(may_true, may_false) of `a op b` over a tile, from the operands' ranges."""
    some = _all([a.some, b.some])
    ordered = _all([a.ordered, b.ordered])
    if op in (Op.EQ, Op.NE):
        apart = node(Op.OR, BOOL, node(Op.GT, BOOL, a.lo, b.hi), node(Op.GT, BOOL, b.lo, a.hi))
        single = _all([ordered, node(Op.EQ, BOOL, a.lo, a.hi), node(Op.EQ, BOOL, a.hi, b.lo),
                       node(Op.EQ, BOOL, b.lo, b.hi)])
        never_equal = _not(_all([some, _not(apart)]))
        return (_not(never_equal), _not(single)) if op is Op.EQ else (_not(single), _not(never_equal))
    if op in (Op.GT, Op.GE):
        a, b, op = b, a, Op.LT if op is Op.GT else Op.LE
    # a < b (or <=): nowhere where a's least value is not below b's largest; everywhere where a's largest is
    never = node(Op.LE if op is Op.LT else Op.LT, BOOL, b.hi, a.lo)
    every = node(op, BOOL, a.hi, b.lo)
    return _all([some, _not(never)]), _not(_all([ordered, every]))


def _not(x: Node) -> Node:
    if x is TRUE_N or x is FALSE_N:
        return FALSE_N if x is TRUE_N else TRUE_N
    return x.src[0] if x.op is Op.NOT else node(Op.NOT, BOOL, x)


def to_f64(x: Node) -> Node:
    return x if x.dtype is F64 else node(Op.CAST, F64, x)
