"""Tile classification: on a box [q_lo, q_hi] x [kv_lo, kv_hi] of query and key indices (b and h fixed), is
no pair allowed (EMPTY), every pair allowed (FULL), or neither (PARTIAL)?

The answer is IR over the tile bounds `var("q_lo")` ... `var("kv_hi")`, b, h, runtime parameters and loads
indexed by b and h only, so the reference interpreter evaluates it for many tiles at once (`classify_grid`)
and the code generator renders it as a scalar test per tile. `tile_test` gives two predicates: `may_true`
(False: the tile is EMPTY) and `may_false` (False: the tile is FULL). They are always SOUND (False only when
the claim holds) and, for the masks below, EXACT (False whenever it holds). `kv_ranges` gives closed-form key
ranges for a query tile. How (an abstract interpretation, IR to IR):

1. Lowering. The mask becomes a formula in negation normal form over affine atoms `sum(c * x) + s >= 0`:
   the unknowns x are q, kv and floor divisions of affine forms (`x % d` is `x - d * (x // d)`); s is
   tile-constant IR (parameters, b/h-only loads). min / max / abs / where / sign become and / or of atoms
   (`e >= min(a, b)` is `e >= a & e >= b`). Integer arithmetic that may wrap around gets a runtime guard
   (its range over the tile stays inside int32; a failed guard makes the tile PARTIAL), and so does a
   parameter divisor (it must be >= 1) and a product of parameters used as a divisor (it must not wrap). An
   int64 tile constant (an int64 tensor read at b or h) is analysed where it lies within +-2**36 (a runtime
   check), so sums with indices cannot wrap int64 either. What is not affine (products of indices, loads
   indexed by q or kv) becomes an unknown with bounds (`load_range`, or its dtype's range) or an unknown atom.
   Floats: a float that is exactly `t * 2**e` for an integer term t (a cast index, `q * 0.5`, `q / 2.0`,
   `floor`, sums, min / max) compares as an integer (`Scaled`): with another exact value directly, with any
   other float w through an integer rounding of w (`t < w` is `t < ceil(w)`: a symbol for a tile-constant
   w, an unknown between the roundings of its bounds otherwise; `x < 40.5` is `x <= 40`). Exactness holds
   where |t| <= 2**precision, or, for one rounding of an integer (`kv.float()`), against any value below
   2**precision (runtime guards and checks, alternatives of which one must hold; the closed-form key ranges
   use those that read the query tile only). Other floats are bounded by interval arithmetic
   (`attnc.ir.float_ranges`), NaN included: NaN compares False, so a tile is FULL by an ordered argument
   only where no value can be NaN.
2. Splitting. A division `z // d` whose variable also occurs elsewhere is made affine by splitting the range
   of z at multiples of d into three boxes: the first period, the whole periods between, the last period;
   in each, z = d * X + r with X and r independent (`(q - kv) // d` first changes variables to z = q - kv).
   A division whose variable occurs nowhere else is a variable of its own; one whose argument stays inside
   a period at compile time is a constant.
3. Separation. Conjuncts over disjoint variables are decided apart (2-D neighbourhoods: rows, columns).
4. Elimination. Each conjunction (of a bounded DNF) is decided by Fourier-Motzkin elimination on symbolic
   bounds. On integers it is exact when one coefficient of every combined pair is +-1 (Pugh's exact shadow).

Exact: boolean combinations of comparisons of piecewise-affine terms whose atoms, after splitting, bound q,
kv and one difference q - kv (with any integer multiples and constants), and divisions `(±v + c) // d`,
`% d` by constants or parameters; the same compared with float constants, parameters and b/h-only float
loads, or written in float arithmetic that stays exact; comparisons of floats each monotone in q and kv
(`slopes[h] * (q - kv) > -4.0`, `q * 0.3 >= kv`). That covers causal masks (any alignment, parameter
offsets), sliding, bidirectional and per-head windows, prefix LM, chunked and block causal, sinks, dilated
and strided windows, and NATTEN neighbourhoods (clamped windows, dilation, stride, causal) in 1-D, 2-D, 3-D.
Sound only: float results a GPU may round differently (quotients, transcendentals, a multiply-add), which
are widened by a few units in the last place; divisions of forms without a ±1 coefficient (`(2 * q) // 3`);
atoms over both q - kv and q + kv (an integer hull the shadows miss); a parameter divisor whose variable is
also used raw, when the tile spans three periods or more (`d * X` is not affine there); parameter divisors
whose products the IR does not show (`q // plane` next to `q // width` for `plane = height * width`
captured separately); splits, DNFs and elimination rows past their budgets (`_SPLIT_DEPTH`,
`_PIECE_BUDGET`, `_DNF_LIMIT`, `_ROW_LIMIT`).
Divisors that are compile-time constants (`int(size)` in a mod) give much smaller tests than parameters.

Indices and tile bounds are assumed to lie in [0, 2**31 - 1] and tile boxes to be non-empty.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor

from attnc.ir import float_ranges as fr
from attnc.ir.dtypes import DType
from attnc.ir.float_ranges import FRange
from attnc.ir.interpret import Env, evaluate
from attnc.ir.node import Node, const, node, var
from attnc.ir.ops import COMPARE, MIRROR, Op
from attnc.ir.rewrite import order_key
from attnc.ir.simplify import index_algebra

EMPTY, PARTIAL, FULL = 0, 1, 2

# (min, max) of a load over the tile; float loads may add a NaN state (0: no NaN, 1: some, 2: all NaN)
LoadRange = Callable[[Node], "tuple[Node, Node] | tuple[Node, Node, Node] | None"]

I32, I64, BOOL, F64 = DType.int32, DType.int64, DType.bool, DType.float64
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INDEX_RANGE = (0, INT32_MAX)  # indices and tile bounds are non-negative int32
_DTYPE_RANGE = {I32: (INT32_MIN, INT32_MAX), I64: (-(2**63), 2**63 - 1), BOOL: (0, 1)}
_INDEX = frozenset({"q", "kv"})
_MAGNITUDE = 2**40  # affine forms that may exceed this are not analysed, so emitted int64 never overflows
# int64 tile constants (b/h-only loads) whose type allows more are analysed where they lie inside +-this, a
# runtime check (PARTIAL where it fails); small enough that sums with indices stay below _MAGNITUDE
_WIDE = 2**36
_EMIT_LIMIT = 2**62
_DNF_LIMIT = 64  # conjunctions per DNF; larger formulas are decided part by part (sound)
_SPLIT_DEPTH = 8  # nested period splits along one path
_PIECE_BUDGET = 4000  # period pieces per analysis
_WORK_BUDGET = 20000  # conjunction groups and elimination rows per decision; past it parts may hold (sound)
_PAIRWISE_LIMIT = 64  # rows compared pairwise for redundancy
_ROW_LIMIT = 400  # Fourier-Motzkin rows; past it a conjunction is taken as satisfiable (sound)
# bits of precision of each float type: an integer of at most 2**p in magnitude is exact in it
_PRECISION = {DType.float16: 11, DType.bfloat16: 8, DType.float32: 24, DType.float64: 53}
_MIN_EXP = {DType.float16: -24, DType.bfloat16: -133, DType.float32: -149, DType.float64: -1074}  # subnormals
_EXP_LIMIT = 24  # exact float values are tree * 2**exp with -_EXP_LIMIT <= exp <= 0
_MANTISSA_LIMIT = 2**16  # a non-integer constant is exact arithmetic only with a numerator this small

TRUE_N, FALSE_N = const(True, BOOL), const(False, BOOL)


@dataclasses.dataclass(frozen=True)
class TileTest:
    """`may_true` False: no pair of the tile is allowed (EMPTY); `may_false` False: all are (FULL)."""

    may_true: Node
    may_false: Node


# -- compile-time ranges of IR values ------------------------------------------------------------------

Range = tuple[int, int]
_STATIC: dict[Node, Range] = {}  # memo: nodes are interned and immutable


def static_range(n: Node) -> Range:
    """Bounds of an int or bool node's value, known at compile time, under the IR's wrap-around arithmetic
    (a result that may leave its dtype's range may be anything in it)."""
    if n not in _STATIC:
        for m in n.walk():
            if m not in _STATIC:
                r = _range_of(m)
                full = _DTYPE_RANGE.get(m.dtype, _DTYPE_RANGE[I64])
                _STATIC[m] = r if full[0] <= r[0] and r[1] <= full[1] else full
    return _STATIC[n]


def _range_of(n: Node) -> Range:
    full = _DTYPE_RANGE.get(n.dtype, _DTYPE_RANGE[I64])
    if n.op is Op.CONST and not n.dtype.is_float:
        return (int(n.arg), int(n.arg))
    if n.dtype.is_float or n.dtype.is_bool:
        return full
    if n.op is Op.VAR:
        return INDEX_RANGE
    if n.op is Op.CAST and not n.src[0].dtype.is_float:
        return _STATIC[n.src[0]]
    rule = _RANGE_RULES.get(n.op)
    return rule(n, [_STATIC[s] for s in n.src]) if rule else full


def _divisor(n: Node) -> int | None:
    """The constant divisor of a FLOORDIV / MOD node, or None."""
    d = n.src[1]
    return d.arg if d.op is Op.CONST and d.arg != 0 else None


def _floordiv_range(a: Range, d: int) -> Range:
    return (a[0] // d, a[1] // d) if d > 0 else (a[1] // d, a[0] // d)


def _mod_range(a: Range, d: int) -> Range:
    if d > 0 and a[0] // d == a[1] // d:
        return (a[0] % d, a[1] % d)
    return (0, d - 1) if d > 0 else (d + 1, 0)


def _span(values: Iterable[int]) -> Range:
    values = list(values)
    return (min(values), max(values))


RangeRule = Callable[[Node, list[Range]], Range]


def _by_divisor(rule: Callable[[Range, int], Range], other: Callable[[Range, Range], Range]) -> RangeRule:
    """A FLOORDIV / MOD range rule: `rule` for a constant divisor, `other` from the divisor's range."""

    def apply(n: Node, r: list[Range]) -> Range:
        d = _divisor(n)
        return rule(r[0], d) if d is not None else other(r[0], r[1])

    return apply


def _any_floordiv(a: Range, d: Range) -> Range:
    m = _magnitude(a)  # |x // d| <= |x| for any d != 0 (x // -1 = -x may wrap: the dtype check sees it)
    return (-m, m)


def _any_mod(a: Range, d: Range) -> Range:
    m = _magnitude(d) - 1  # |x % d| < |d|
    return (-m, m)


_RANGE_RULES: dict[Op, RangeRule] = {
    Op.ADD: lambda n, r: (r[0][0] + r[1][0], r[0][1] + r[1][1]),
    Op.SUB: lambda n, r: (r[0][0] - r[1][1], r[0][1] - r[1][0]),
    Op.MUL: lambda n, r: _span(x * y for x in r[0] for y in r[1]),
    Op.NEG: lambda n, r: (-r[0][1], -r[0][0]),
    Op.ABS: lambda n, r: (max(0, r[0][0], -r[0][1]), max(abs(r[0][0]), abs(r[0][1]))),
    Op.SIGN: lambda n, r: (-1, 1),
    Op.MIN: lambda n, r: (min(r[0][0], r[1][0]), min(r[0][1], r[1][1])),
    Op.MAX: lambda n, r: (max(r[0][0], r[1][0]), max(r[0][1], r[1][1])),
    Op.WHERE: lambda n, r: (min(r[1][0], r[2][0]), max(r[1][1], r[2][1])),
    Op.FLOORDIV: _by_divisor(_floordiv_range, _any_floordiv),
    Op.MOD: _by_divisor(_mod_range, _any_mod),
}


def _magnitude(r: Range) -> int:
    return max(abs(r[0]), abs(r[1]))


# -- affine forms --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Var:
    """An integer unknown: q, kv, an opaque subterm, or one introduced by splitting a range."""

    name: str


Divisor = int | Node  # a constant >= 2, or tile-constant int IR (a parameter) that a guard keeps >= 1


@dataclasses.dataclass(frozen=True)
class Div:
    """`arg // d` (floor), as an unknown of the forms it occurs in."""

    arg: Lin
    d: Divisor


@dataclasses.dataclass(frozen=True)
class Mod:
    """`arg % d` for a parameter d (for a constant d, `x % d` is the form `x - d * (x // d)`)."""

    arg: Lin
    d: Node


Key = Var | Div | Mod | Node  # a Node key is tile-constant IR (a "symbol")
Periodic = Div | Mod


class Lin:
    """An affine form `sum(c * key) + const` with integer coefficients; immutable, compared by value."""

    __slots__ = ("_key", "const", "terms")

    def __init__(self, terms: Mapping[Key, int] | None = None, const: int = 0) -> None:
        self.terms: dict[Key, int] = {k: c for k, c in (terms or {}).items() if c}
        self.const = const
        self._key = (frozenset(self.terms.items()), const)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Lin) and self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __repr__(self) -> str:
        return f"Lin({self.terms!r}, {self.const})"

    def __add__(self, other: Lin) -> Lin:
        terms = dict(self.terms)
        for k, c in other.terms.items():
            terms[k] = terms.get(k, 0) + c
        return Lin(terms, self.const + other.const)

    def __sub__(self, other: Lin) -> Lin:
        return self + other.scale(-1)

    def scale(self, c: int) -> Lin:
        return Lin({k: v * c for k, v in self.terms.items()}, self.const * c)

    def shift(self, c: int) -> Lin:
        return Lin(self.terms, self.const + c)

    def unknowns(self) -> list[Var | Periodic]:
        return [k for k in self.terms if not isinstance(k, Node)]

    def symbolic(self) -> Lin:
        """The tile-constant part: symbols and the constant."""
        return Lin({k: c for k, c in self.terms.items() if isinstance(k, Node)}, self.const)


def lin_of(key: Key) -> Lin:
    return Lin({key: 1})


def number(c: int) -> Lin:
    return Lin({}, c)


def sym(n: Node) -> Lin:
    """An int IR node constant over a tile, as a form (int32 values widened to int64 are the same value)."""
    if n.op is Op.CONST:
        return number(int(n.arg))
    if n.op is Op.CAST and n.dtype is I64 and n.src[0].dtype is I32:
        return lin_of(n.src[0])
    return lin_of(n)


def div(arg: Lin, d: Divisor) -> Lin:
    """`arg // d` for d >= 1: terms whose coefficient d divides come out of the floor
    (`(d*x + y) // d = x + y // d`), a tile-constant remainder becomes a FLOORDIV symbol."""
    if isinstance(d, Node):
        return lin_of(Div(arg, d)) if arg.unknowns() else sym(_periodic_ir(Op.FLOORDIV, emit(arg), d))
    if d == 1:
        return arg
    out, rest = {}, {}
    for k, c in arg.terms.items():
        (out if c % d == 0 else rest)[k] = c // d if c % d == 0 else c
    quotient = Lin(out, arg.const // d)
    remainder = Lin(rest, arg.const % d)
    if not remainder.terms:
        return quotient
    if not remainder.unknowns():
        return quotient + sym(_periodic_ir(Op.FLOORDIV, emit(remainder), d))
    return quotient + lin_of(Div(remainder, d))


def mod(arg: Lin, d: Divisor) -> Lin:
    if isinstance(d, Node):
        return lin_of(Mod(arg, d)) if arg.unknowns() else sym(_periodic_ir(Op.MOD, emit(arg), d))
    return arg - div(arg, d).scale(d)  # x % d = x - d * (x // d)


def divide(kind: Op, arg: Lin, d: Divisor) -> Lin:
    return div(arg, d) if kind is Op.FLOORDIV else mod(arg, d)


def free_vars(lin: Lin) -> dict[Var, None]:
    """The variables of a form, also those inside its divisions (an ordered set)."""
    out: dict[Var, None] = {}
    for k in lin.terms:
        if isinstance(k, Var):
            out[k] = None
        elif isinstance(k, Div | Mod):
            out.update(free_vars(k.arg))
    return out


def substitute(lin: Lin, values: Mapping[Var, Lin], divisions: Mapping[Periodic, Lin]) -> Lin:
    """Replace variables by forms and whole divisions by forms (divisions first, before their argument)."""
    out = number(lin.const)
    for k, c in lin.terms.items():
        if isinstance(k, Var):
            out += values.get(k, lin_of(k)).scale(c)
        elif isinstance(k, Div | Mod):
            replaced = divisions.get(k)
            if replaced is None:
                kind = Op.FLOORDIV if isinstance(k, Div) else Op.MOD
                replaced = divide(kind, substitute(k.arg, values, divisions), k.d)
            out += replaced.scale(c)
        else:
            out += lin_of(k).scale(c)
    return out


# -- emitting IR -----------------------------------------------------------------------------------------


def _cast(n: Node, dtype: DType) -> Node:
    return n if n.dtype is dtype else node(Op.CAST, dtype, n)


def _periodic_ir(kind: Op, n: Node, d: Divisor) -> Node:
    """`n // d` or `n % d` as IR, in int64 where either operand needs it (never narrowing the divisor)."""
    if isinstance(d, int):
        wide = not INT32_MIN <= d <= INT32_MAX
    else:
        wide = d.dtype is I64 and _magnitude(static_range(d)) > INT32_MAX
    dtype = I64 if wide else n.dtype
    divisor = const(d, dtype) if isinstance(d, int) else _cast(d, dtype)
    return node(kind, dtype, _cast(n, dtype), divisor)


def _symbol_range(lin: Lin) -> Range:
    lo = hi = lin.const
    for k, c in lin.terms.items():
        a, b = static_range(k)
        lo, hi = lo + min(a * c, b * c), hi + max(a * c, b * c)
    return (lo, hi)


def _fits_int32(terms: Sequence[tuple[Node, int]], c: int) -> bool:
    """Whether `_sum` computes `terms` and `c` in int32 without leaving it: each product and each partial
    sum (in `_sum`'s order) is checked."""
    lo = hi = 0
    for k, coefficient in [*sorted(terms, key=_sum_order), (None, c)]:
        a, b = (1, 1) if k is None else static_range(k)
        products = (a * abs(coefficient), b * abs(coefficient), a * coefficient, b * coefficient)
        lo, hi = lo + min(products[2:]), hi + max(products[2:])
        if min(lo, *products) < INT32_MIN or max(hi, *products) > INT32_MAX:
            return False
    return True


def _sum_order(term: tuple[Node, int]) -> tuple:
    return (term[1] < 0, order_key(term[0]))


def _sum(terms: Sequence[tuple[Node, int]], c: int, dtype: DType) -> Node:
    """`sum(coefficient * node) + c` in `dtype`: positive terms first, then subtractions."""
    out: Node | None = None
    for k, coefficient in sorted(terms, key=_sum_order):
        x = _cast(k, dtype)
        x = x if abs(coefficient) == 1 else node(Op.MUL, dtype, x, const(abs(coefficient), dtype))
        if out is None:
            out = x if coefficient > 0 else node(Op.NEG, dtype, x)
        else:
            out = node(Op.ADD if coefficient > 0 else Op.SUB, dtype, out, x)
    if out is None:
        return const(c, dtype)
    if c:
        out = node(Op.ADD if c > 0 else Op.SUB, dtype, out, const(abs(c), dtype))
    return out


def emit(lin: Lin) -> Node:
    """The IR of a tile-constant form: int32 where no partial sum can overflow it, int64 otherwise."""
    terms = list(lin.terms.items())
    return _sum(terms, lin.const, I32 if _fits_int32(terms, lin.const) else I64)


def emit_ge0(lin: Lin) -> Node:
    """IR for `lin >= 0` (tile-constant), written `left >= right` or `left > right` with non-negative
    coefficients. A form too large to evaluate in int64 gives True: only used where True is the weaker
    answer (a condition for a tile to contain some pair)."""
    if not lin.terms:
        return TRUE_N if lin.const >= 0 else FALSE_N
    if _magnitude(_symbol_range(lin)) > _EMIT_LIMIT:
        return TRUE_N
    c, op = (lin.const + 1, Op.GT) if lin.const < 0 else (lin.const, Op.GE)  # x - 1 >= y  <=>  x > y
    left = [(k, v) for k, v in lin.terms.items() if v > 0]
    right = [(k, -v) for k, v in lin.terms.items() if v < 0]
    lc, rc = max(c, 0), max(-c, 0)
    dtype = I32 if _fits_int32(left, lc) and _fits_int32(right, rc) else I64
    return node(op, BOOL, _sum(left, lc, dtype), _sum(right, rc, dtype))


def guard_holds(lin: Lin) -> Node:
    """IR for a guard `lin >= 0` the analysis relies on: as `emit_ge0`, but False where the form is too large
    to evaluate (for a guard, False is the weaker answer)."""
    return FALSE_N if _magnitude(_symbol_range(lin)) > _EMIT_LIMIT else emit_ge0(lin)


def _extreme(op: Op, lins: Sequence[Lin]) -> Lin:
    """min (op MIN) or max (op MAX) of tile-constant forms, as a form."""
    unique = list(dict.fromkeys(lins))
    if len(unique) == 1:
        return unique[0]
    if all(not x.terms for x in unique):
        return number((min if op is Op.MIN else max)(x.const for x in unique))
    nodes = [emit(x) for x in unique]
    dtype = I64 if any(n.dtype is I64 for n in nodes) else I32
    out = _cast(nodes[0], dtype)
    for n in nodes[1:]:
        out = node(op, dtype, out, _cast(n, dtype))
    return sym(out)


def all_(xs: Iterable[Node]) -> Node:
    return _fold(Op.AND, xs, TRUE_N, FALSE_N)


def any_(xs: Iterable[Node]) -> Node:
    return _fold(Op.OR, xs, FALSE_N, TRUE_N)


def _fold(op: Op, xs: Iterable[Node], unit: Node, zero: Node) -> Node:
    kept: dict[Node, None] = {}
    for x in xs:
        if x is zero:
            return zero
        if x is not unit:
            kept[x] = None
    out = None
    for x in kept:
        out = x if out is None else node(op, BOOL, out, x)
    return unit if out is None else out


def not_(x: Node) -> Node:
    if x is TRUE_N or x is FALSE_N:
        return FALSE_N if x is TRUE_N else TRUE_N
    return x.src[0] if x.op is Op.NOT else node(Op.NOT, BOOL, x)


# -- formulas --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Atom:
    lin: Lin  # lin >= 0


@dataclasses.dataclass(frozen=True)
class Cond:
    node: Node  # a bool constant over a tile: reads b, h, parameters and tile bounds only


@dataclasses.dataclass(frozen=True)
class Tri:
    may_true: Node  # a bool known only through bounds: False when it holds nowhere in the tile
    may_false: Node


@dataclasses.dataclass(frozen=True)
class And:
    parts: tuple[Formula, ...]


@dataclasses.dataclass(frozen=True)
class Or:
    parts: tuple[Formula, ...]


Formula = Atom | Cond | Tri | And | Or
TRUE, FALSE = Cond(TRUE_N), Cond(FALSE_N)
UNKNOWN = Tri(TRUE_N, TRUE_N)


def atom(lin: Lin) -> Formula:
    if not lin.terms:
        return TRUE if lin.const >= 0 else FALSE
    return Atom(lin)


def conj(parts: Iterable[Formula]) -> Formula:
    return _junction(And, parts, TRUE, FALSE)


def disj(parts: Iterable[Formula]) -> Formula:
    return _junction(Or, parts, FALSE, TRUE)


def _junction(kind: type, parts: Iterable[Formula], unit: Formula, zero: Formula) -> Formula:
    flat: dict[Formula, None] = {}
    for p in parts:
        if p == zero:
            return zero
        for q in p.parts if isinstance(p, kind) else (p,):
            if q != unit:
                flat[q] = None
    if not flat:
        return unit
    return next(iter(flat)) if len(flat) == 1 else kind(tuple(flat))


def negate(f: Formula) -> Formula:
    if isinstance(f, Atom):
        return atom(f.lin.scale(-1).shift(-1))  # not (x >= 0)  <=>  -x - 1 >= 0
    if isinstance(f, Cond):
        return Cond(not_(f.node))
    if isinstance(f, Tri):
        return Tri(f.may_false, f.may_true)
    if isinstance(f, And):
        return disj(negate(p) for p in f.parts)
    return conj(negate(p) for p in f.parts)


def formula_vars(f: Formula) -> dict[Var, None]:
    if isinstance(f, Atom):
        return free_vars(f.lin)
    out: dict[Var, None] = {}
    for p in f.parts if isinstance(f, And | Or) else ():
        out.update(formula_vars(p))
    return out


def map_atoms(f: Formula, fn: Callable[[Lin], Lin]) -> Formula:
    if isinstance(f, Atom):
        return atom(fn(f.lin))
    if isinstance(f, And):
        return conj(map_atoms(p, fn) for p in f.parts)
    if isinstance(f, Or):
        return disj(map_atoms(p, fn) for p in f.parts)
    return f


def atoms_of(f: Formula) -> Iterable[Lin]:
    if isinstance(f, Atom):
        yield f.lin
    for p in f.parts if isinstance(f, And | Or) else ():
        yield from atoms_of(p)


# -- piecewise-affine values: trees of min / max / select over forms ---------------------------------------


@dataclasses.dataclass(frozen=True)
class Min:
    parts: tuple[Tree, ...]


@dataclasses.dataclass(frozen=True)
class Max:
    parts: tuple[Tree, ...]


@dataclasses.dataclass(frozen=True)
class Select:
    cond: Formula
    if_true: Tree
    if_false: Tree


Tree = Lin | Min | Max | Select


def t_map(t: Tree, fn: Callable[[Lin], Tree]) -> Tree:
    """Apply `fn` to every leaf (right for additions and monotone non-decreasing functions)."""
    if isinstance(t, Lin):
        return fn(t)
    if isinstance(t, Select):
        return Select(t.cond, t_map(t.if_true, fn), t_map(t.if_false, fn))
    return type(t)(tuple(t_map(p, fn) for p in t.parts))


def t_add(a: Tree, b: Tree) -> Tree:
    if isinstance(b, Lin):
        return t_map(a, lambda x: x + b)
    return t_map(b, lambda y: t_add(a, y))  # min(p, q) + e = min(p + e, q + e)


def t_neg(t: Tree) -> Tree:
    if isinstance(t, Lin):
        return t.scale(-1)
    if isinstance(t, Select):
        return Select(t.cond, t_neg(t.if_true), t_neg(t.if_false))
    flipped = Max if isinstance(t, Min) else Min  # -min(a, b) = max(-a, -b)
    return flipped(tuple(t_neg(p) for p in t.parts))


def t_scale(t: Tree, c: int) -> Tree:
    return t_map(t, lambda x: x.scale(c)) if c >= 0 else t_scale(t_neg(t), -c)


def t_ge0(t: Tree) -> Formula:
    """The formula `t >= 0`: min(a, b) >= 0 is a >= 0 & b >= 0, max is |, select is a case split."""
    if isinstance(t, Lin):
        return atom(t)
    if isinstance(t, Min):
        return conj(t_ge0(p) for p in t.parts)
    if isinstance(t, Max):
        return disj(t_ge0(p) for p in t.parts)
    return disj([conj([t.cond, t_ge0(t.if_true)]), conj([negate(t.cond), t_ge0(t.if_false)])])


def t_selects(t: Tree) -> Tree:
    """The same value with every min / max written as selects (for maps that are not monotone)."""
    if isinstance(t, Lin):
        return t
    if isinstance(t, Select):
        return Select(t.cond, t_selects(t.if_true), t_selects(t.if_false))
    first = t.parts[0]
    rest = t.parts[1] if len(t.parts) == 2 else type(t)(t.parts[1:])
    first_wins = t_add(rest, t_neg(first)) if isinstance(t, Min) else t_add(first, t_neg(rest))
    return Select(t_ge0(first_wins), t_selects(first), t_selects(rest))


def compare(op: Op, a: Tree, b: Tree) -> Formula:
    """`a op b` for integers: a >= b is a - b >= 0, a > b is a - b - 1 >= 0, and so on."""
    return _COMPARE_AS[op](t_add(a, t_neg(b)), t_add(b, t_neg(a)))


def _positive(t: Tree) -> Formula:
    return t_ge0(t_add(t, number(-1)))


_COMPARE_AS: dict[Op, Callable[[Tree, Tree], Formula]] = {  # (a - b, b - a) -> a op b
    Op.GE: lambda d, e: t_ge0(d), Op.GT: lambda d, e: _positive(d),
    Op.LE: lambda d, e: t_ge0(e), Op.LT: lambda d, e: _positive(e),
    Op.EQ: lambda d, e: conj([t_ge0(d), t_ge0(e)]), Op.NE: lambda d, e: disj([_positive(d), _positive(e)]),
}


# -- boxes and symbolic intervals ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Bounds:
    """lowers <= x <= uppers (tile-constant forms). Boxes are non-empty by construction: the tile is, and
    a piece that may be empty carries that condition as a formula of its own."""

    lowers: tuple[Lin, ...]
    uppers: tuple[Lin, ...]


Box = Mapping[Var, Bounds]


def key_interval(k: Key, box: Box) -> tuple[Lin, Lin]:
    if isinstance(k, Var):
        b = box[k]
        return _extreme(Op.MAX, b.lowers), _extreme(Op.MIN, b.uppers)
    if isinstance(k, Div):
        lo, hi = lin_interval(k.arg, box)
        return div(lo, k.d), div(hi, k.d)
    if isinstance(k, Mod):
        return number(0), sym(k.d).shift(-1)
    return lin_of(k), lin_of(k)


def lin_interval(lin: Lin, box: Box) -> tuple[Lin, Lin]:
    """Tile-constant bounds of a form: exact when each unknown occurs once and ranges independently."""
    lo = hi = number(lin.const)
    for k, c in lin.terms.items():
        a, b = key_interval(k, box)
        lo, hi = (lo + a.scale(c), hi + b.scale(c)) if c > 0 else (lo + b.scale(c), hi + a.scale(c))
    return lo, hi


def tree_interval(t: Tree, box: Box) -> tuple[Lin, Lin]:
    if isinstance(t, Lin):
        return lin_interval(t, box)
    if isinstance(t, Select):
        parts = [tree_interval(t.if_true, box), tree_interval(t.if_false, box)]
        return _extreme(Op.MIN, [p[0] for p in parts]), _extreme(Op.MAX, [p[1] for p in parts])
    parts = [tree_interval(p, box) for p in t.parts]
    op = Op.MIN if isinstance(t, Min) else Op.MAX
    return _extreme(op, [p[0] for p in parts]), _extreme(op, [p[1] for p in parts])


# -- exact float values ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Scaled:
    """A float value that is exactly `tree * 2**exp` (exp <= 0) for an integer tree wherever the `guards`
    (tile-constant forms >= 0) hold, |tree| <= limit there: comparing such values is comparing integers
    (`q * 0.5 >= kv` is `q >= 2 * kv`; `|q - kv| < 40.5` is `2 * |q - kv| < 81`). `rounded`: the value is
    also, guards or not, `round(tree) * 2**exp` for one rounding of the exact integer to that float type
    (a cast of an integer index), which compares exactly with any value smaller than 2**precision."""

    tree: Tree
    exp: int
    guards: tuple[Lin, ...] = ()
    limit: int = 0
    rounded: DType | None = None

    def scaled_by(self, sign: int, exp: int) -> Scaled:
        """The value times sign * 2**exp (exact: a power of two scales a float exactly)."""
        return dataclasses.replace(self, tree=t_scale(self.tree, sign), exp=self.exp + exp)


# a cast from the first to the second keeps every value (and so a rounding done in the first)
_WIDENS = {(DType.float16, DType.float32), (DType.float16, DType.float64), (DType.bfloat16, DType.float32),
           (DType.bfloat16, DType.float64), (DType.float32, DType.float64)}


def _dyadic(v: float) -> tuple[int, int] | None:
    """`v` as `m * 2**e` (e <= 0) with an integer m small enough to compute with, or None."""
    if not math.isfinite(v):
        return None
    m, d = v.as_integer_ratio()  # d is a power of two
    e = d.bit_length() - 1
    if d == 1:
        return (m, 0) if abs(m) <= _MAGNITUDE else None
    return (m, -e) if abs(m) <= _MANTISSA_LIMIT and e <= _EXP_LIMIT else None


def _align(a: Scaled, b: Scaled) -> tuple[Tree, Tree, int]:
    """Both values as integer trees over a common power of two."""
    e = min(a.exp, b.exp)
    return t_scale(a.tree, 2 ** (a.exp - e)), t_scale(b.tree, 2 ** (b.exp - e)), e


def _joined(kind: Callable[[Tree, Tree], Tree], a: Scaled, b: Scaled) -> Scaled:
    """A value that is one of a and b (min, max, a select): exact where both are; one rounding where both
    are the same rounding (min(round(x), round(y)) = round(min(x, y)): rounding is monotone) or the other
    is exact and small enough to be its own rounding."""
    ta, tb, e = _align(a, b)
    limit = max(a.limit * 2 ** (a.exp - e), b.limit * 2 ** (b.exp - e))
    return Scaled(kind(ta, tb), e, a.guards + b.guards, limit, _common_rounding(a, b))


def _common_rounding(a: Scaled, b: Scaled) -> DType | None:
    if a.rounded is b.rounded:
        return a.rounded
    for x, y in ((a, b), (b, a)):
        if x.rounded is not None and not y.guards and y.rounded is None and y.limit <= 2 ** _PRECISION[x.rounded]:
            return x.rounded
    return None


@dataclasses.dataclass(frozen=True)
class Plan:
    """What an exact comparison relies on: guards (forms >= 0), checks (bool IR) on the tile; `top`: where a
    threshold compared with the exact side may be clamped."""

    guards: tuple[Lin, ...] = ()
    checks: tuple[Node, ...] = ()
    top: int = 0


def _plan_holds(plan: Plan) -> Node:
    return all_([*(guard_holds(g) for g in plan.guards), *plan.checks])


def _plan_cost(plan: Plan) -> tuple[bool, int]:
    """Prefer plans whose conditions do not read the key tile (closed-form key ranges stay one range), then
    fewer conditions."""
    kv = any("kv" in k.deps for g in plan.guards for k in g.terms) or any("kv" in c.deps for c in plan.checks)
    return kv, len(plan.guards) + len(plan.checks)


def _tree_bounds(t: Tree, box: Box, upper: bool) -> list[Lin]:
    """Tile-constant forms whose largest (`upper`; else smallest: the least) bounds t: a max is at most k
    where each of its parts is, so guards on the parts stay affine (`|q - kv| <= k` is two guards)."""
    if isinstance(t, Lin):
        return [lin_interval(t, box)[1 if upper else 0]]
    if isinstance(t, Select):
        return _tree_bounds(t.if_true, box, upper) + _tree_bounds(t.if_false, box, upper)
    if isinstance(t, Max if upper else Min):
        return [b for p in t.parts for b in _tree_bounds(p, box, upper)]
    return [tree_interval(t, box)[1 if upper else 0]]


def _constant_tree(t: Tree) -> int | None:
    return t.const if isinstance(t, Lin) and not t.terms else None


# -- lowering IR to formulas -----------------------------------------------------------------------------

Q, KV = Var("q"), Var("kv")
_TILE_ENDS = ((var("q_lo"), var("q_hi")), (var("kv_lo"), var("kv_hi")))


class _Lowering:
    """Turns the mask into a formula, recording the variables' boxes and the no-overflow guards."""

    def __init__(self, mask: Node, load_range: LoadRange | None) -> None:
        self.load_range = load_range
        # (dividend, divisor) pairs of the mask, to split `x // (a * b)` as its other divisions of x do
        self.divisions = {(n.src[0], n.src[1]) for n in mask.walk() if n.op in (Op.FLOORDIV, Op.MOD)}
        self.box: dict[Var, Bounds] = {
            Q: Bounds((lin_of(var("q_lo")),), (lin_of(var("q_hi")),)),
            KV: Bounds((lin_of(var("kv_lo")),), (lin_of(var("kv_hi")),)),
        }
        self.ranges: dict[Var, Range] = {Q: INDEX_RANGE, KV: INDEX_RANGE}
        self.guards: dict[Lin, None] = {}  # tile-constant `lin >= 0` that the analysis relies on
        self.checks: dict[Node, None] = {}  # tile-constant bool IR that it relies on as well
        self.alternatives: dict[tuple[Plan, ...], None] = {}  # plans of which one must hold (exact floats)
        self._opaque: dict[Node, Lin | None] = {}
        self._trees: dict[Node, Tree | None] = {}
        self._formulas: dict[Node, Formula] = {}
        self._scaled: dict[Node, Scaled | None] = {}
        self._franges: dict[Node, FRange | None] = {}
        self._thresholds: dict[tuple, Lin] = {}

    # bool nodes

    def formula(self, n: Node) -> Formula:
        if n not in self._formulas:
            self._formulas[n] = Cond(n) if not n.deps & _INDEX else self._formula_of(n)
        return self._formulas[n]

    def _formula_of(self, n: Node) -> Formula:
        if n.op in COMPARE:
            return self._compare(n)
        if n.op in (Op.AND, Op.OR, Op.XOR, Op.NOT, Op.WHERE):
            return _LOGIC[n.op](*(self.formula(s) for s in n.src))
        if n.op is Op.CAST and n.src[0].dtype.is_int:
            t = self.tree(n.src[0])
            return UNKNOWN if t is None else compare(Op.NE, t, number(0))
        if n.op is Op.CAST and n.src[0].dtype.is_float:  # x != 0
            return self._float_compare(Op.NE, n.src[0], const(0.0, n.src[0].dtype))
        if n.op is Op.LOAD:
            bounds = self.load_range(n) if self.load_range else None
            return UNKNOWN if bounds is None else Tri(_truthy(bounds[1]), not_(_truthy(bounds[0])))
        return UNKNOWN

    def _compare(self, n: Node) -> Formula:
        a, b = n.src
        if a.dtype.is_bool:
            return _BOOL_COMPARE[n.op](self.formula(a), self.formula(b))
        if a.dtype.is_float:
            return self._float_compare(n.op, a, b)
        ta, tb = self.tree(a), self.tree(b)
        return UNKNOWN if ta is None or tb is None else compare(n.op, ta, tb)

    # float nodes

    def _float_compare(self, op: Op, a: Node, b: Node) -> Formula:
        """Exact values compare as integers; an exact value against any other float compares with the
        integer rounding of that float's value or bounds (`x < w` is `x < ceil(w)`); other floats compare
        through their bounds (sound; exact for tiles where each side is monotone in q and kv)."""
        sa, sb = self.scaled(a), self.scaled(b)
        if sa is not None and sb is not None:
            self._commit(*self._plans(sa, sb))
            ta, tb, _ = _align(sa, sb)
            return compare(op, ta, tb)
        if sa is not None and a.deps & _INDEX:
            return self._against(op, sa, b)
        if sb is not None and b.deps & _INDEX:
            return self._against(MIRROR[op], sb, a)
        ra, rb = self.frange(a), self.frange(b)
        return UNKNOWN if ra is None or rb is None else Tri(*fr.compare(op, ra, rb))

    def _plans(self, a: Scaled, b: Scaled) -> list[Plan]:
        """Conditions under which comparing a and b as integers is exact: both exact; or one exact and
        smaller than 2**p in magnitude while the other is one p-bit rounding of an exact integer (for |c| <
        2**p, `round(t) < c` iff `t < c`: both sides of c are beyond the rounding's reach)."""
        plans = [Plan(a.guards + b.guards)]
        for x, y in ((a, b), (b, a)):
            k = _PRECISION[y.rounded] + y.exp - x.exp if y.rounded is not None else -1
            if k >= 0:
                plans.append(Plan(x.guards + self.within(x.tree, 2**k - 1)))
        return plans

    def _commit(self, *plans: Plan) -> None:
        """The analysis relies on one of `plans` holding."""
        if len(plans) > 1:
            self.alternatives[plans] = None
            return
        for g in plans[0].guards:
            self.guards[g] = None
        for c in plans[0].checks:
            self.checks[c] = None

    def within(self, t: Tree, k: int) -> tuple[Lin, ...]:
        """Guards for |t| <= k on the tile (none where the compile-time range shows it)."""
        r = self.static(t)
        guards = []
        if r[0] < -k:
            guards += [lo.shift(k) for lo in _tree_bounds(t, self.box, upper=False)]
        if r[1] > k:
            guards += [number(k) - hi for hi in _tree_bounds(t, self.box, upper=True)]
        return tuple(guards)

    def _against(self, op: Op, s: Scaled, other: Node) -> Formula:
        """`s op other` for an exact value s = t * 2**e: t op other * 2**-e, where for an integer t
        `t < x` is `t < ceil(x)`, `t <= x` is `t <= floor(x)`, `t == x` is `ceil(x) <= t <= floor(x)`; a NaN
        makes all but `!=` False."""
        r = self.frange(other)
        if r is None:
            return UNKNOWN
        plans = self._threshold_plans(s, r)
        self._commit(*plans)
        top = max(plan.top for plan in plans)  # a threshold clamped there keeps every plan's comparisons
        up, down = (lambda: self._threshold(r, s.exp, Op.CEIL, top)), (lambda: self._threshold(r, s.exp, Op.FLOOR, top))
        t = s.tree
        if op in (Op.EQ, Op.NE):
            equal = conj([compare(Op.GE, t, up()), compare(Op.LE, t, down())])
            is_number = self._is_number(r)
            return conj([is_number, equal]) if op is Op.EQ else disj([negate(is_number), negate(equal)])
        bound = up() if op in (Op.LT, Op.GE) else down()
        return conj([self._is_number(r), compare(op, t, bound)])

    def _threshold_plans(self, s: Scaled, r: FRange) -> list[Plan]:
        """s exact (thresholds clamped past its limit); or one rounding of an exact integer, compared with
        values smaller than 2**p (a check on a runtime value; nothing for a constant)."""
        plans = [Plan(s.guards, (), s.limit + 1)]
        if s.rounded is None:
            return plans
        p = _PRECISION[s.rounded]
        k = 2.0 ** (p + s.exp)
        if r.exact and r.lo.op is Op.CONST:
            v = fr.value_of(r.lo)
            return [*plans, Plan((), (), 2**p + 1)] if not abs(v) >= k else plans  # NaN: any plan
        t = r.lo.dtype
        if r.exact:  # a NaN passes: it is "not a number" to the comparison
            small = not_(node(Op.GE, BOOL, node(Op.ABS, t, r.lo), const(k, t)))
        else:  # a NaN bound fails
            small = all_([node(Op.GT, BOOL, r.lo, const(-k, t)), node(Op.LT, BOOL, r.hi, const(k, t))])
        return [*plans, Plan((), (small,), 2**p + 1)]

    def _is_number(self, r: FRange) -> Formula:
        """The formula "the value is not NaN"."""
        if r.ordered is TRUE_N and r.some is TRUE_N:
            return TRUE
        return Cond(r.ordered) if r.exact else Tri(r.some, not_(r.ordered))

    def _threshold(self, r: FRange, exp: int, rounding: Op, top: int) -> Lin:
        """ceil (or floor) of the value r bounds, times 2**-exp, clamped to +-top (which keeps every
        comparison the analysis makes with it): a symbol for a tile constant, else an unknown between the
        roundings of r's bounds (a NaN bound: the clamp)."""
        key = (r, exp, rounding, top)
        if key not in self._thresholds:
            if r.exact:
                value = _rounded(r.lo, exp, rounding, top, 0.0)
            else:
                lo, hi = _rounded(r.lo, exp, rounding, top, -top), _rounded(r.hi, exp, rounding, top, top)
                v = Var(f"f{len(self._thresholds)}")
                self.box[v], self.ranges[v] = Bounds((lo,), (hi,)), (-top, top)
                value = lin_of(v)
            self._thresholds[key] = value
        return self._thresholds[key]

    def scaled(self, n: Node) -> Scaled | None:
        """The exact value of a float node (with the guards it needs), or None."""
        if n not in self._scaled:
            self._scaled[n] = self._scaled_of(n)
        return self._scaled[n]

    def _scaled_of(self, n: Node) -> Scaled | None:
        if n.op is Op.CONST:
            d = _dyadic(fr.value_of(n))
            return None if d is None else Scaled(number(d[0]), d[1], (), abs(d[0]))
        if not n.deps & _INDEX:
            return None  # a parameter or a tile-constant load: a threshold, not an exact value
        rule = _SCALED_RULES.get(n.op)
        found = rule(self, n) if rule else None
        if found is not None and found.exp > 0:  # t * 2**e = (t * 2**e) * 2**0, also rounded
            scale = 2**found.exp
            found = dataclasses.replace(found, tree=t_scale(found.tree, scale), exp=0, limit=found.limit * scale)
        if found is None or found.exp < max(-_EXP_LIMIT, _MIN_EXP[n.dtype]):
            return None
        return found if found.limit * 2.0**found.exp <= fr.finite_max(n.dtype) else None

    def fit(self, t: Tree, e: int, dtype: DType, guards: tuple[Lin, ...], exact_inputs: bool) -> Scaled | None:
        """The result `t * 2**e` of an operation in `dtype` on exact operands (exact where `guards` hold):
        exact where |t| <= 2**p as well, and, where the operands are exact unconditionally, one rounding of
        the exact result everywhere."""
        if e > 0:
            t, e = t_scale(t, 2**e), 0
        r = self.static(t)
        if _magnitude(r) > _MAGNITUDE:
            return None
        k = 2 ** _PRECISION[dtype]
        rounded = dtype if exact_inputs and not guards else None
        return Scaled(t, e, guards + self.within(t, k), min(_magnitude(r), k), rounded)

    def scaled_operands(self, n: Node) -> list[Scaled] | None:
        found = [self.scaled(s) for s in n.src]
        return None if None in found else found  # type: ignore[return-value]

    def frange(self, n: Node) -> FRange | None:
        """Bounds of a float node over the tile (`attnc.ir.float_ranges`), or None."""
        if n not in self._franges:
            self._franges[n] = self._frange_of(n)
        return self._franges[n]

    def _frange_of(self, n: Node) -> FRange | None:
        if not n.deps & _INDEX:
            return fr.exactly(n)
        s = self.scaled(n)
        if s is not None:
            return self._scaled_range(s, n.dtype)
        if n.op is Op.LOAD:
            bounds = self.load_range(n) if self.load_range else None
            return None if bounds is None else _load_frange(bounds)
        if n.op is Op.CAST and not n.src[0].dtype.is_float:  # an integer the analysis cannot track
            lo, hi = static_range(n.src[0])
            return FRange(const(lo, n.dtype), const(hi, n.dtype), bound=float(max(-lo, hi)))
        rule = fr.RULES.get(n.op)
        args = [self.frange(s) for s in n.src if s.dtype.is_float]
        return None if rule is None or None in args else rule(n, args)  # type: ignore[arg-type]

    def _scaled_range(self, s: Scaled, dtype: DType) -> FRange:
        """Bounds of an exact value: its tree's bounds, rounded as the value is (rounding is monotone), or
        exact where its guards hold."""
        if s.rounded is None:
            self._commit(Plan(s.guards))
        lo, hi = tree_interval(s.tree, self.box)

        def value(x: Lin) -> Node:
            v = _cast(_cast(emit(x), s.rounded or dtype), dtype)
            return v if s.exp == 0 else node(Op.MUL, dtype, v, const(2.0**s.exp, dtype))

        return FRange(value(lo), value(hi), bound=_magnitude(self.static(s.tree)) * 2.0 ** (s.exp + 1))

    # int nodes

    def tree(self, n: Node) -> Tree | None:
        if n not in self._trees:
            self._trees[n] = self._symbol(n) if not n.deps & _INDEX else self._checked(n, self._tree_of(n))
        return self._trees[n]

    def ok(self) -> Node:
        """IR: every guard and check holds, and one plan of each alternative (where not, the analysis says
        nothing)."""
        chosen = (any_(_plan_holds(p) for p in plans) for plans in self.alternatives)
        return all_([*(guard_holds(g) for g in self.guards), *self.checks, *chosen])

    def for_ranges(self) -> tuple[list[Lin], list[Node]]:
        """(guards, checks) for the closed-form key ranges, which need conditions on the query tile: of each
        alternative, the plans that do not read the key tile (any of them), else the cheapest plan."""
        guards, checks = list(self.guards), list(self.checks)
        for plans in self.alternatives:
            free = [p for p in plans if not _plan_cost(p)[0]]
            if len(free) > 1:
                checks.append(any_(_plan_holds(p) for p in free))
                continue
            plan = free[0] if free else min(plans, key=_plan_cost)
            guards += [g for g in plan.guards if g not in guards]
            checks += plan.checks
        return guards, checks

    def _symbol(self, n: Node) -> Lin | None:
        bounded = self.bounded(n)
        return None if bounded is None else sym(bounded)

    def bounded(self, n: Node) -> Node | None:
        """A tile-constant int node small enough to analyse that equals `n` wherever `self.checks` hold: `n`
        itself, or for an int64 value that its type lets grow past `_MAGNITUDE`, its clamp into +-_WIDE with a
        check that the clamp changes nothing. None: no such node."""
        if _magnitude(static_range(n)) <= _MAGNITUDE:
            return n
        if n.dtype is not I64:
            return None
        lo, hi = const(-_WIDE, I64), const(_WIDE, I64)
        self.checks[all_([node(Op.GE, BOOL, n, lo), node(Op.LE, BOOL, n, hi)])] = None
        return node(Op.MAX, I64, node(Op.MIN, I64, n, hi), lo)

    def _checked(self, n: Node, t: Tree | None) -> Tree | None:
        """`t` if it is the value of `n`: where the value may leave int32 (wrap around), a runtime guard
        checks that it does not on the tile; values that might be too large to track are unknown."""
        if t is None:
            return None
        r = self.static(t)
        if _magnitude(r) > _MAGNITUDE:
            return None
        if n.dtype is I32 and (r[0] < INT32_MIN or r[1] > INT32_MAX):
            lo, hi = tree_interval(t, self.box)
            if r[0] < INT32_MIN:
                self.guards[lo.shift(-INT32_MIN)] = None
            if r[1] > INT32_MAX:
                self.guards[number(INT32_MAX) - hi] = None
        return t

    def _tree_of(self, n: Node) -> Tree | None:
        if n.op is Op.VAR:
            return lin_of(Q if n.arg == "q" else KV)
        rule = _TREE_RULES.get(n.op)
        return rule(self, n) if rule else self.opaque(n)

    def operands(self, n: Node) -> list[Tree] | None:
        trees = [self.tree(s) for s in n.src]
        return None if any(t is None for t in trees) else trees

    def opaque(self, n: Node) -> Lin | None:
        """A subterm that is not piecewise affine: an unknown with bounds (sound, not exact)."""
        if n not in self._opaque:
            self._opaque[n] = self._new_opaque(n)
        return self._opaque[n]

    def _new_opaque(self, n: Node) -> Lin | None:
        bounds = self.load_range(n) if self.load_range and n.op is Op.LOAD else None
        bounded = [self.bounded(b) for b in bounds[:2]] if bounds else [None]
        if None not in bounded:
            lo, hi = sym(bounded[0]), sym(bounded[1])
        else:
            lo, hi = number(static_range(n)[0]), number(static_range(n)[1])
        r = (_symbol_range(lo)[0], _symbol_range(hi)[1])
        if _magnitude(r) > _MAGNITUDE:
            return None
        v = Var(f"u{len(self._opaque)}")
        self.box[v], self.ranges[v] = Bounds((lo,), (hi,)), r
        return lin_of(v)

    def static(self, t: Tree) -> Range:
        if isinstance(t, Lin):
            lo = hi = t.const
            for k, c in t.terms.items():
                a, b = self._key_range(k)
                lo, hi = lo + min(a * c, b * c), hi + max(a * c, b * c)
            return (lo, hi)
        parts = [self.static(p) for p in ((t.if_true, t.if_false) if isinstance(t, Select) else t.parts)]
        if isinstance(t, Select):
            return (min(p[0] for p in parts), max(p[1] for p in parts))
        pick = min if isinstance(t, Min) else max
        return (pick(p[0] for p in parts), pick(p[1] for p in parts))

    def _key_range(self, k: Key) -> Range:
        if isinstance(k, Var):
            return self.ranges[k]
        if isinstance(k, Mod):
            return (0, static_range(k.d)[1] - 1)
        if isinstance(k, Div):
            a, b = self.static(k.arg)
            return _floordiv_range((a, b), k.d) if isinstance(k.d, int) else (min(a, 0), max(b, 0))
        return static_range(k)


def _truthy(n: Node) -> Node:
    return n if n.dtype.is_bool else node(Op.NE, BOOL, n, const(0, n.dtype))


def _xor(a: Formula, b: Formula) -> Formula:
    return disj([conj([a, negate(b)]), conj([negate(a), b])])


_LOGIC: dict[Op, Callable[..., Formula]] = {
    Op.AND: lambda a, b: conj([a, b]),
    Op.OR: lambda a, b: disj([a, b]),
    Op.XOR: _xor,
    Op.NOT: negate,
    Op.WHERE: lambda c, a, b: disj([conj([c, a]), conj([negate(c), b])]),
}

# bools compare as 0 < 1
_BOOL_COMPARE: dict[Op, Callable[[Formula, Formula], Formula]] = {
    Op.EQ: lambda a, b: negate(_xor(a, b)),
    Op.NE: _xor,
    Op.LT: lambda a, b: conj([negate(a), b]),
    Op.LE: lambda a, b: disj([negate(a), b]),
    Op.GT: lambda a, b: conj([a, negate(b)]),
    Op.GE: lambda a, b: disj([a, negate(b)]),
}


def _linear_mul(low: _Lowering, n: Node) -> Tree | None:
    trees = low.operands(n)
    if trees is None:
        return None
    a, b = trees
    if isinstance(b, Lin) and not b.terms:
        return t_scale(a, b.const)
    if isinstance(a, Lin) and not a.terms:
        return t_scale(b, a.const)
    for x, y in (n.src, n.src[::-1]):  # (z // d) * d = z - z % d for a tile-constant d (a parameter too)
        if x.op is Op.FLOORDIV and x.src[1] is y and not y.deps & _INDEX and (z := low.tree(x.src[0])) is not None:
            d = _divisor(x) or low.bounded(y)  # the operands' lowering has already guarded d >= 1
            if d is not None:
                return t_add(z, t_neg(_division_by(Op.MOD, z, d)))
    return low.opaque(n)


def _division(low: _Lowering, n: Node) -> Tree | None:
    arg, d = low.tree(n.src[0]), _divisor(n)
    if d is None and not n.src[1].deps & _INDEX:  # a parameter: analysed where it is >= 1
        d = low.bounded(n.src[1])
        if d is not None:
            low.guards[sym(d).shift(-1)] = None
    if d is None or arg is None:
        return low.opaque(n)
    if n.op is Op.FLOORDIV and isinstance(d, Node) and d.op is Op.MUL and _unwrapped_product(low, d):
        outer, inner = d.src[::-1] if (n.src[0], d.src[0]) in low.divisions else d.src
        for factor in d.src:  # x // (a * b) = (x // b) // a for a, b >= 1
            low.guards[sym(factor).shift(-1)] = None
        return _division_by(Op.FLOORDIV, _division_by(Op.FLOORDIV, arg, inner), outer)
    if isinstance(d, int) and d < 0:  # x // -d = (-x) // d;  x % -d = -((-x) % d)
        negated = _division_by(n.op, t_neg(arg), -d)
        return negated if n.op is Op.FLOORDIV else t_neg(negated)
    return _division_by(n.op, arg, d)


def _unwrapped_product(low: _Lowering, d: Node) -> bool:
    """Whether `d = a * b` may be read as the product of its factors: where it can wrap around its type, a
    check that it does not (factors >= 1, their product at most the type's top, computed in int64); False
    where the product might not fit int64 either."""
    a, b = (static_range(f) for f in d.src)
    lo, hi = _span(x * y for x in a for y in b)
    top = _DTYPE_RANGE[d.dtype][1]
    if _DTYPE_RANGE[d.dtype][0] <= lo and hi <= top:
        return True
    if max(-lo, hi) > _DTYPE_RANGE[I64][1]:
        return False
    product = node(Op.MUL, I64, *(_cast(f, I64) for f in d.src))
    low.checks[node(Op.LE, BOOL, product, const(top, I64))] = None
    return True


def _division_by(kind: Op, arg: Tree, d: Divisor) -> Tree:
    if kind is Op.FLOORDIV:
        return t_map(arg, lambda x: div(x, d))  # floor division by d >= 1 is monotone
    return t_map(t_selects(arg), lambda x: mod(x, d))


def _cast_tree(low: _Lowering, n: Node) -> Tree | None:
    src = n.src[0]
    if src.dtype.is_bool:
        return Select(low.formula(src), number(1), number(0))
    if src.dtype.is_int:
        return low.tree(src)
    s = low.scaled(src)  # float -> int truncates toward zero
    return low.opaque(n) if s is None else _truncated(low, s)


def _truncated(low: _Lowering, s: Scaled) -> Tree:
    low._commit(Plan(s.guards))
    if s.exp == 0:
        return s.tree
    d = 2**-s.exp
    down = _division_by(Op.FLOORDIV, s.tree, d)
    up = t_neg(_division_by(Op.FLOORDIV, t_neg(s.tree), d))
    return Select(t_ge0(s.tree), down, up)


def _sign(t: Tree) -> Tree:
    return Select(_positive(t), number(1), Select(_positive(t_neg(t)), number(-1), number(0)))


def _via(fn: Callable[..., Tree]) -> Callable[[_Lowering, Node], Tree | None]:
    def rule(low: _Lowering, n: Node) -> Tree | None:
        trees = low.operands(n)
        return None if trees is None else fn(*trees)

    return rule


def _select(low: _Lowering, n: Node) -> Tree | None:
    branches = [low.tree(s) for s in n.src[1:]]
    if None in branches:
        return None
    return Select(low.formula(n.src[0]), branches[0], branches[1])


# -- exact float values: rules ----------------------------------------------------------------------------

ScaledRule = Callable[[_Lowering, Node], "Scaled | None"]


def _scaled_cast(low: _Lowering, n: Node) -> Scaled | None:
    src = n.src[0]
    if src.dtype.is_bool:
        return Scaled(Select(low.formula(src), number(1), number(0)), 0, (), 1, n.dtype)
    if src.dtype.is_int:
        t = low.tree(src)
        return None if t is None else low.fit(t, 0, n.dtype, (), exact_inputs=True)
    a = low.scaled(src)
    if a is None or (src.dtype, n.dtype) in _WIDENS:
        return a  # a widening cast keeps the value
    return low.fit(a.tree, a.exp, n.dtype, a.guards, exact_inputs=a.rounded is None)


def _scaled_via(fn: Callable[..., Scaled | None]) -> ScaledRule:
    def rule(low: _Lowering, n: Node) -> Scaled | None:
        operands = low.scaled_operands(n)
        return None if operands is None else fn(*operands)

    return rule


def _exactly(s: Scaled) -> bool:
    """Exact without guards and without a rounding."""
    return not s.guards and s.rounded is None


def _scaled_sum(low: _Lowering, n: Node) -> Scaled | None:
    operands = low.scaled_operands(n)
    if operands is None:
        return None
    a, b = operands
    ta, tb, e = _align(a, b)
    t = t_add(ta, t_scale(tb, 1 if n.op is Op.ADD else -1))
    return low.fit(t, e, n.dtype, a.guards + b.guards, _exactly(a) and _exactly(b))


def _power_of_two(s: Scaled) -> tuple[int, int] | None:
    """(sign, k) for a constant ±2**k, or None."""
    c = _constant_tree(s.tree)
    if not c or abs(c) & (abs(c) - 1):
        return None
    return (1 if c > 0 else -1), s.exp + abs(c).bit_length() - 1


def _scaled_product(low: _Lowering, n: Node) -> Scaled | None:
    """A product with a constant factor: by ±2**k exact (`q * 0.5`), by another a rounding; a product of two
    unknowns is not affine."""
    operands = low.scaled_operands(n)
    if operands is None:
        return None
    a, b = operands
    if _constant_tree(b.tree) is None:
        a, b = b, a
    c = _constant_tree(b.tree)
    if c is None:
        return None
    p = _power_of_two(b)
    if p is not None:
        return a.scaled_by(*p)
    return low.fit(t_scale(a.tree, c), a.exp + b.exp, n.dtype, a.guards, _exactly(a))


def _scaled_quotient(a: Scaled, b: Scaled) -> Scaled | None:
    """Division by a power of two (`q / 2.0`) is exact."""
    p = _power_of_two(b)
    return None if p is None else a.scaled_by(p[0], -p[1])


def _floor(s: Scaled) -> Scaled:
    if s.exp >= 0:
        return s
    return Scaled(_division_by(Op.FLOORDIV, s.tree, 2**-s.exp), 0, s.guards, s.limit >> -s.exp)


def _ceil(s: Scaled) -> Scaled:
    if s.exp >= 0:
        return s
    return Scaled(t_neg(_division_by(Op.FLOORDIV, t_neg(s.tree), 2**-s.exp)), 0, s.guards, s.limit)


def _scaled_floordiv(a: Scaled, b: Scaled) -> Scaled | None:
    q = _scaled_quotient(a, b)
    return None if q is None else _floor(q)


def _scaled_sign(a: Scaled) -> Scaled:
    """sign(round(t)) = sign(t): exact wherever a is exact or one rounding."""
    return Scaled(_sign(a.tree), 0, () if a.rounded is not None else a.guards, 1)


def _scaled_select(low: _Lowering, n: Node) -> Scaled | None:
    a, b = low.scaled(n.src[1]), low.scaled(n.src[2])
    if a is None or b is None:
        return None
    return _joined(lambda x, y: Select(low.formula(n.src[0]), x, y), a, b)


_SCALED_RULES: dict[Op, ScaledRule] = {
    Op.CAST: _scaled_cast,
    Op.ADD: _scaled_sum,
    Op.SUB: _scaled_sum,
    Op.MUL: _scaled_product,
    Op.TRUEDIV: _scaled_via(_scaled_quotient),
    Op.FLOORDIV: _scaled_via(_scaled_floordiv),
    Op.NEG: _scaled_via(lambda a: a.scaled_by(-1, 0)),
    Op.ABS: _scaled_via(lambda a: dataclasses.replace(a, tree=Max((a.tree, t_neg(a.tree))))),
    Op.SIGN: _scaled_via(_scaled_sign),
    Op.FLOOR: _scaled_via(_floor),
    Op.CEIL: _scaled_via(_ceil),
    Op.MIN: _scaled_via(lambda a, b: _joined(lambda x, y: Min((x, y)), a, b)),
    Op.MAX: _scaled_via(lambda a, b: _joined(lambda x, y: Max((x, y)), a, b)),
    Op.WHERE: _scaled_select,
}


def _load_frange(bounds: tuple[Node, ...]) -> FRange:
    """A float load's range from its per-tile tables; a NaN state (third) says where values may be NaN."""
    if len(bounds) == 2:
        return FRange(bounds[0], bounds[1])
    lo, hi, state = bounds
    return FRange(lo, hi, node(Op.EQ, BOOL, state, const(0, state.dtype)),
                  node(Op.NE, BOOL, state, const(2, state.dtype)))


def _rounded(x: Node, e: int, rounding: Op, top: int, nan_as: float) -> Lin:
    """ceil(x * 2**-e) (rounding CEIL) or floor, clamped into [-top, top], as a tile-constant form; a NaN x
    gives `nan_as`. Computed in float64, where scaling a narrower float by a power of two is exact."""
    if x.op is Op.CONST:
        v = fr.value_of(x)
        v = min(max(nan_as if math.isnan(v) else v * 2.0**-e, -top), top)
        return number(math.ceil(v) if rounding is Op.CEIL else math.floor(v))
    y = fr.to_f64(x)
    if e:
        y = node(Op.MUL, F64, y, const(2.0**-e, F64))
    y = node(Op.WHERE, F64, node(Op.EQ, BOOL, y, y), y, const(float(nan_as), F64))
    y = node(rounding, F64, node(Op.MIN, F64, node(Op.MAX, F64, y, const(float(-top), F64)), const(float(top), F64)))
    k = node(Op.MAX, I64, node(Op.MIN, I64, node(Op.CAST, I64, y), const(top, I64)), const(-top, I64))
    return sym(_cast(k, I32) if top <= INT32_MAX else k)


_TREE_RULES: dict[Op, Callable[[_Lowering, Node], Tree | None]] = {
    Op.ADD: _via(t_add),
    Op.SUB: _via(lambda a, b: t_add(a, t_neg(b))),
    Op.NEG: _via(t_neg),
    Op.MUL: _linear_mul,
    Op.FLOORDIV: _division,
    Op.MOD: _division,
    Op.MIN: _via(lambda a, b: Min((a, b))),
    Op.MAX: _via(lambda a, b: Max((a, b))),
    Op.ABS: _via(lambda a: Max((a, t_neg(a)))),
    Op.SIGN: _via(_sign),
    Op.WHERE: _select,
    Op.CAST: _cast_tree,
}


# -- deciding: may a formula hold somewhere in a box? ------------------------------------------------------

Literal = Atom | Cond | Tri
_LOWER, _UPPER = 1, -1


class _Decider:
    """Builds IR for "some point of the box satisfies the formula" (exact within the budgets)."""

    def __init__(self) -> None:
        self._fresh = itertools.count()
        self.pieces = 0
        self.work = 0  # groups and elimination rows so far; past _WORK_BUDGET the answer is "may hold" (sound)

    def fresh(self) -> Var:
        return Var(f"x{next(self._fresh)}")

    def may_true(self, f: Formula, box: Box, depth: int = 0) -> Node:
        if isinstance(f, Cond):
            return f.node
        if isinstance(f, Tri):
            return f.may_true
        if isinstance(f, Or):
            return any_(self.may_true(p, box, depth) for p in f.parts)
        parts = f.parts if isinstance(f, And) else (f,)
        return all_(self._joint(group, box, depth) for group in _components(parts))

    def _joint(self, parts: list[Formula], box: Box, depth: int) -> Node:
        """Conjuncts sharing variables: promote lone divisions, split periods, then DNF and eliminate."""
        if len(parts) == 1 and not isinstance(parts[0], Atom):
            return self.may_true(parts[0], box, depth)
        self.work += 1
        if self.work > _WORK_BUDGET:  # alternating and / or whose DNFs keep overflowing: stop deciding
            return TRUE_N
        parts, box = _promote(parts, box, self.fresh)
        target = _split_target(parts) if depth < _SPLIT_DEPTH and self.pieces < _PIECE_BUDGET else None
        if target is not None:
            pieces = self._split(target, parts, box)
            return any_(self.may_true(piece, piece_box, depth + 1) for piece, piece_box in pieces)
        conjunctions = _dnf(conj(parts))
        if conjunctions is None:  # too many cases: decide conjuncts apart (sound)
            return all_(self.may_true(p, box, depth) for p in parts)
        cases = [c for c in (self._feasible(c, box) for c in conjunctions) if c is not None]
        kept = [c for c in cases if not any(other < c for other in cases)]  # a | (a & b) = a
        return any_(all_(sorted(c, key=order_key)) for c in dict.fromkeys(kept))

    def _split(self, target: Periodic, parts: list[Formula], box: Box) -> list[tuple[Formula, Box]]:
        """The conjunction over each period piece of the division's variable: z = d * X + r."""
        parts, box, z = _change_variable(target, parts, box, self.fresh)
        pieces = _period_pieces(box[z], target.d, self.fresh)
        self.pieces += len(pieces)
        rest = {v: b for v, b in box.items() if v != z}
        return [(conj([piece.condition, *(_replace_period(p, z, target.d, piece) for p in parts)]), rest | piece.box)
                for piece in pieces]

    def _feasible(self, literals: Sequence[Literal], box: Box) -> frozenset[Node] | None:
        """The conditions (all must hold) for a conjunction to hold somewhere; None: it holds nowhere."""
        if self.work > _WORK_BUDGET:
            return frozenset()  # may hold, on no condition: sound
        conditions = [lit.node if isinstance(lit, Cond) else lit.may_true
                      for lit in literals if not isinstance(lit, Atom)]
        rows = _eliminate([lit.lin for lit in literals if isinstance(lit, Atom)], box)
        self.work += 1 + len(rows or ())
        out = frozenset(c for c in [*conditions, *(emit_ge0(r) for r in rows or ())] if c is not TRUE_N)
        return None if rows is None or FALSE_N in out else out


def _components(parts: Sequence[Formula]) -> list[list[Formula]]:
    """Group conjuncts that share variables (transitively); each group is decided on its own."""
    groups: list[tuple[dict[Var, None], list[Formula]]] = []
    for p in parts:
        vs, members = dict(formula_vars(p)), [p]
        for g in [g for g in groups if vs.keys() & g[0].keys()]:
            groups.remove(g)
            vs.update(g[0])
            members = g[1] + members
        groups.append((vs, members))
    return [members for _, members in groups]


def _divisions(parts: Sequence[Formula]) -> dict[Periodic, None]:
    """Every division and remainder in the atoms, inner ones before the ones containing them."""
    out: dict[Periodic, None] = {}

    def visit(lin: Lin) -> None:
        for k in lin.terms:
            if isinstance(k, Div | Mod):
                visit(k.arg)
                out[k] = None

    for p in parts:
        for lin in atoms_of(p):
            visit(lin)
    return out


def _vars_outside(parts: Sequence[Formula], target: Periodic) -> dict[Var, None]:
    """Variables occurring in the atoms other than inside `target`."""
    out: dict[Var, None] = {}

    def visit(lin: Lin) -> None:
        for k in lin.terms:
            if isinstance(k, Var):
                out[k] = None
            elif isinstance(k, Div | Mod) and k != target:
                visit(k.arg)

    for p in parts:
        for lin in atoms_of(p):
            visit(lin)
    return out


def _unit_var(lin: Lin) -> Var | None:
    return next((k for k, c in lin.terms.items() if isinstance(k, Var) and abs(c) == 1), None)


def _promote(parts: list[Formula], box: Box, fresh: Callable[[], Var]) -> tuple[list[Formula], Box]:
    """Divisions that need no split: one whose argument stays inside a period at compile time is a constant;
    `(±v + s) // d` whose v occurs nowhere else takes every integer between its bounds, so it becomes a
    variable of its own (X for `q // F` in `q // F >= kv // F`)."""
    box = dict(box)
    while True:  # replacing a division changes those containing it: start over until none is replaced
        for target in _divisions(parts):
            value = _promoted(target, parts, box, fresh)
            if value is not None:
                parts = [map_atoms(p, lambda lin, t=target, v=value: substitute(lin, {}, {t: v})) for p in parts]
                break
        else:
            return parts, box


def _promoted(target: Periodic, parts: list[Formula], box: dict[Var, Bounds],
              fresh: Callable[[], Var]) -> Lin | None:
    """The value replacing `target` without a split, or None (adds the new variable to `box`)."""
    if isinstance(target, Mod):
        return None
    if isinstance(target.d, int):
        lo, hi = _static(target.arg, box)
        if lo // target.d == hi // target.d:
            return number(lo // target.d)
    unknowns = target.arg.unknowns()
    if len(unknowns) != 1 or _unit_var(target.arg) is None or unknowns[0] in _vars_outside(parts, target):
        return None
    x = fresh()
    lo, hi = key_interval(target, box)
    box[x] = Bounds((lo,), (hi,))
    return lin_of(x)


def _static(lin: Lin, box: Box) -> Range:
    """Compile-time bounds of a form over a box."""
    lo = hi = lin.const
    for k, c in lin.terms.items():
        a, b = _key_static(k, box)
        lo, hi = lo + min(a * c, b * c), hi + max(a * c, b * c)
    return (lo, hi)


def _key_static(k: Key, box: Box) -> Range:
    if isinstance(k, Var):
        b = box[k]
        return max(_symbol_range(x)[0] for x in b.lowers), min(_symbol_range(x)[1] for x in b.uppers)
    if isinstance(k, Div):
        a, b = _static(k.arg, box)
        return _floordiv_range((a, b), k.d) if isinstance(k.d, int) else (min(a, 0), max(b, 0))
    if isinstance(k, Mod):
        return (0, static_range(k.d)[1] - 1)
    return static_range(k)


def _split_target(parts: list[Formula]) -> Periodic | None:
    """An innermost division with a ±1 variable, preferring plain `v // d` and then larger constant divisors
    (so `q // (H * W)` splits before `q // W`, which it then contains whole)."""
    candidates = [t for t in _divisions(parts)
                  if not any(isinstance(k, Div | Mod) for k in t.arg.terms) and _unit_var(t.arg) is not None]
    if not candidates:
        return None
    return min(candidates, key=lambda t: (t.arg != lin_of(_unit_var(t.arg)), isinstance(t.d, Node),
                                          -t.d if isinstance(t.d, int) else 0))


def _change_variable(target: Periodic, parts: list[Formula], box: Box,
                     fresh: Callable[[], Var]) -> tuple[list[Formula], dict[Var, Bounds], Var]:
    """Make the division's argument a variable z: for `(v + e) // d`, v = z - e everywhere and v's bounds
    become constraints on z - e."""
    v = _unit_var(target.arg)
    if target.arg == lin_of(v):
        return parts, dict(box), v
    z, c = fresh(), target.arg.terms[v]
    v_value = (lin_of(z) - (target.arg - Lin({v: c}))).scale(c)  # c = ±1
    links = [atom(v_value - lo) for lo in box[v].lowers] + [atom(hi - v_value) for hi in box[v].uppers]
    lo, hi = lin_interval(target.arg, box)
    new_box = {k: b for k, b in box.items() if k != v} | {z: Bounds((lo,), (hi,))}
    parts = [map_atoms(p, lambda lin: substitute(lin, {v: v_value}, {})) for p in parts] + links
    return parts, new_box, z


@dataclasses.dataclass(frozen=True)
class _Piece:
    """One box of a period split: there z is `value`, z // d is `quotient` and z % d is `remainder`."""

    value: Lin
    quotient: Lin
    remainder: Lin
    box: dict[Var, Bounds]
    condition: Formula  # the box is non-empty


def _period_pieces(bounds: Bounds, d: Divisor, fresh: Callable[[], Var]) -> list[_Piece]:
    """Split lo <= z <= hi into boxes where z = d * X + r with X and r independent: the first period
    (X = lo // d), the whole periods between (a variable X; a condition says there are some), the last
    period (X = hi // d)."""
    lo, hi = _extreme(Op.MAX, bounds.lowers), _extreme(Op.MIN, bounds.uppers)
    first, last = div(lo, d), div(hi, d)
    pieces = _symbolic_pieces(lo, hi, d, fresh) if isinstance(d, Node) else _constant_pieces(lo, hi, d, fresh)
    if first == last:  # one period: the last piece repeats the first, there is no middle
        return pieces[:1]
    return [p for p in pieces if p.condition != FALSE]


def _constant_pieces(lo: Lin, hi: Lin, d: int, fresh: Callable[[], Var]) -> list[_Piece]:
    first, last = div(lo, d), div(hi, d)
    r1, r2, r3, x = fresh(), fresh(), fresh(), fresh()
    return [
        _Piece(first.scale(d) + lin_of(r1), first, lin_of(r1),
               {r1: Bounds((lo - first.scale(d),), (number(d - 1), hi - first.scale(d)))}, TRUE),
        _Piece(last.scale(d) + lin_of(r2), last, lin_of(r2),
               {r2: Bounds((number(0), lo - last.scale(d)), (hi - last.scale(d),))}, TRUE),
        _Piece(lin_of(x).scale(d) + lin_of(r3), lin_of(x), lin_of(r3),
               {x: Bounds((first.shift(1),), (last.shift(-1),)), r3: Bounds((number(0),), (number(d - 1),))},
               atom(last - first.shift(2))),
    ]


def _symbolic_pieces(lo: Lin, hi: Lin, d: Node, fresh: Callable[[], Var]) -> list[_Piece]:
    """As `_constant_pieces` for a parameter d, with d * X written `z - z % d`. In the middle d * X is not
    affine: it becomes a variable y of its own, so the middle piece is exact only where z occurs in
    `z // d` and `z % d` alone (a neighbourhood's row and column), sound elsewhere."""
    first, last, lo_r, hi_r, top = div(lo, d), div(hi, d), mod(lo, d), mod(hi, d), sym(d).shift(-1)
    r1, r2, r3, x, y = fresh(), fresh(), fresh(), fresh(), fresh()
    whole = {x: Bounds((first.shift(1),), (last.shift(-1),)), r3: Bounds((number(0),), (top,)),
             y: Bounds((lo - lo_r + sym(d),), (hi - hi_r - sym(d),))}
    return [
        _Piece(lo - lo_r + lin_of(r1), first, lin_of(r1), {r1: Bounds((lo_r,), (top, hi - lo + lo_r))}, TRUE),
        _Piece(hi - hi_r + lin_of(r2), last, lin_of(r2), {r2: Bounds((number(0), lo - hi + hi_r), (hi_r,))}, TRUE),
        _Piece(lin_of(y) + lin_of(r3), lin_of(x), lin_of(r3), whole, atom(last - first.shift(2))),
    ]


def _replace_period(f: Formula, z: Var, d: Divisor, piece: _Piece) -> Formula:
    """`f` on a piece: z, z // d and z % d replaced by their values there."""
    divisions: dict[Periodic, Lin] = {Div(lin_of(z), d): piece.quotient}
    if isinstance(d, Node):
        divisions[Mod(lin_of(z), d)] = piece.remainder
    return map_atoms(f, lambda lin: substitute(lin, {z: piece.value}, divisions))


def _dnf(f: Formula) -> list[tuple[Literal, ...]] | None:
    """Disjunctive normal form, or None past `_DNF_LIMIT` conjunctions."""
    if isinstance(f, Or):
        out: list[tuple[Literal, ...]] = []
        for p in f.parts:
            d = _dnf(p)
            if d is None or len(out) + len(d) > _DNF_LIMIT:
                return None
            out += d
        return out
    if isinstance(f, And):
        acc: list[tuple[Literal, ...]] = [()]
        for p in f.parts:
            d = _dnf(p)
            if d is None or len(acc) * len(d) > _DNF_LIMIT:
                return None
            acc = [a + b for a in acc for b in d]
        return acc
    return [(f,)]


# -- Fourier-Motzkin elimination on symbolic bounds ----------------------------------------------------------

Tag = tuple[Var | Periodic, int] | None  # (u, _LOWER) / (u, _UPPER): the row is a bound of the unknown u
Rows = dict[Lin, Tag]  # each row means lin >= 0


def _eliminate(atoms: Sequence[Lin], box: Box) -> list[Lin] | None:
    """Tile-constant rows (`lin >= 0`, all must hold) for "some integer point of the box satisfies every atom",
    or None when that is false at compile time: eliminate unknowns one by one, exact while each combined
    pair has a ±1 coefficient, an over-approximation otherwise."""
    rows: Rows = {}
    for lin in atoms:
        _add_row(rows, lin, None)
    for u in dict.fromkeys(k for lin in atoms for k in lin.unknowns()):
        _add_bounds(rows, u, box)
    final: list[Lin] = []
    while rows:
        rows, done = _settle(rows)
        if done is None:
            return None
        final += done
        unknowns = list(dict.fromkeys(k for lin in rows for k in lin.unknowns()))
        if not unknowns or len(rows) > _ROW_LIMIT:
            break
        rows = _eliminate_one(rows, min(unknowns, key=lambda u: _cost(rows, u)))
    return _irredundant(final)


def _irredundant(rows: list[Lin]) -> list[Lin]:
    """Drop rows another row implies (of two equivalent rows, the later one). Only rows with the same
    terms in wide-ranging symbols (parameters) are compared: others rarely imply each other."""
    buckets: dict[frozenset, list[int]] = {}
    for i, r in enumerate(rows):
        buckets.setdefault(_wide_terms(r), []).append(i)

    def redundant(i: int) -> bool:
        bucket = buckets[_wide_terms(rows[i])]
        if len(bucket) > _PAIRWISE_LIMIT:  # quadratic past here; keeping a redundant row is only longer code
            return False
        return any(_implies(rows[j], rows[i]) and (j < i or not _implies(rows[i], rows[j])) for j in bucket if j != i)

    return [r for i, r in enumerate(rows) if not redundant(i)]


def _wide_terms(lin: Lin) -> frozenset:
    ends = {end for pair in _TILE_ENDS for end in pair}
    return frozenset((k, c) for k, c in lin.terms.items() if k not in ends and _magnitude(static_range(k)) >= 2**30)


def _implies(a: Lin, b: Lin) -> bool:
    """Whether `a >= 0` implies `b >= 0` for every tile: b - a is at least 0, tile widths counting as >= 0."""
    terms = dict(b.terms)
    for k, c in a.terms.items():
        terms[k] = terms.get(k, 0) - c
    for lo, hi in _TILE_ENDS:
        c = terms.get(hi, 0)
        if c > 0 and terms.get(lo, 0) == -c:
            del terms[lo], terms[hi]
    low = b.const - a.const
    for k, c in terms.items():
        if c:
            r = static_range(k)
            low += min(r[0] * c, r[1] * c)
    return low >= 0


def _add_row(rows: Rows, lin: Lin, tag: Tag) -> None:
    rows[lin] = rows.get(lin) or tag  # a row that is also a bound keeps the bound's tag


def _add_bounds(rows: Rows, u: Var | Periodic, box: Box) -> None:
    """Bound rows of an unknown, tagged: boxes are non-empty, so a lower and an upper bound of the same
    unknown need not be combined."""
    if isinstance(u, Var):
        lowers, uppers = box[u].lowers, box[u].uppers
    else:
        lo, hi = key_interval(u, box)
        lowers, uppers = (lo,), (hi,)
        if isinstance(u, Div) and isinstance(u.d, int):  # d * D <= arg <= d * D + d - 1
            _add_row(rows, u.arg - lin_of(u).scale(u.d), None)
            _add_row(rows, lin_of(u).scale(u.d).shift(u.d - 1) - u.arg, None)
    for lo in lowers:
        _add_row(rows, lin_of(u) - lo, (u, _LOWER))
    for hi in uppers:
        _add_row(rows, hi - lin_of(u), (u, _UPPER))


def _settle(rows: Rows) -> tuple[Rows, list[Lin] | None]:
    """Tighten rows (divide by the gcd of their unknowns' coefficients, flooring the rest), keep the
    tightest of rows differing only in their constant, and take out tile-constant rows (None: one is false
    at compile time)."""
    tight: dict[frozenset, tuple[Lin, Tag]] = {}
    done: list[Lin] = []
    for lin, tag in rows.items():
        lin = _tighten(lin)
        if not lin.unknowns():
            if _symbol_range(lin)[1] < 0:
                return {}, None
            if _symbol_range(lin)[0] < 0:
                done.append(lin)
            continue
        shape = frozenset(lin.terms.items())
        if shape not in tight or lin.const < tight[shape][0].const:
            tight[shape] = (lin, tag)
    return dict(tight.values()), done


def _tighten(lin: Lin) -> Lin:
    """g * (sum) + s >= 0  <=>  sum + floor(s / g) >= 0 for integers."""
    unknown = {k: c for k, c in lin.terms.items() if not isinstance(k, Node)}
    g = math.gcd(*unknown.values()) if unknown else 1
    if g <= 1 or _magnitude(_symbol_range(lin.symbolic())) > _EMIT_LIMIT:
        return lin
    return Lin({k: c // g for k, c in unknown.items()}) + div(lin.symbolic(), g)


def _pairs(rows: Rows, u: Var | Periodic) -> tuple[list[Lin], list[Lin], list[tuple[Lin, Lin]]]:
    lowers = [lin for lin in rows if lin.terms.get(u, 0) > 0]
    uppers = [lin for lin in rows if lin.terms.get(u, 0) < 0]
    known = (u, _LOWER), (u, _UPPER)
    pairs = [(a, b) for a in lowers for b in uppers if (rows[a], rows[b]) != known]
    return lowers, uppers, pairs


def _cost(rows: Rows, u: Var | Periodic) -> tuple[bool, int]:
    """Prefer exact eliminations (a ±1 coefficient in every pair), then fewer new rows."""
    lowers, uppers, pairs = _pairs(rows, u)
    exact = all(a.terms[u] == 1 or b.terms[u] == -1 for a, b in pairs)
    return (not exact, len(pairs) - len(lowers) - len(uppers))


def _eliminate_one(rows: Rows, u: Var | Periodic) -> Rows:
    """Replace the rows bounding u by every lower-upper combination: a*u + l >= 0, -b*u + h >= 0 give
    b*l + a*h >= 0."""
    _, _, pairs = _pairs(rows, u)
    out = {lin: tag for lin, tag in rows.items() if u not in lin.terms}
    for a, b in pairs:
        _add_row(out, a.scale(-b.terms[u]) + b.scale(a.terms[u]), None)
    return out


# -- public entry points -----------------------------------------------------------------------------------

# The analysis recurses through the mask's structure, and `^`, `where` and comparisons of conditions copy
# their operands into its formulas. A mask nested deeper than MAX_ANALYSED_DEPTH, or whose formula would
# grow past MAX_FORMULA_SIZE atoms (a chain of `^`), gets the answers that assume nothing, which are always
# sound: every tile partial, every key possible, no full range.
MAX_ANALYSED_DEPTH = 64
MAX_FORMULA_SIZE = 512


@functools.lru_cache(maxsize=256)
def beyond_analysis(mask: Node) -> bool:
    """Whether `mask` is too deep or too large for the tile analysis (computed without recursion)."""
    if mask.depth() > MAX_ANALYSED_DEPTH:
        return True
    size: dict[Node, int] = {}
    for n in mask.walk():
        parts = [size[s] for s in n.src if s.dtype.is_bool]
        copies = n.op is Op.XOR or (n.op in COMPARE and bool(parts)) or (n.op is Op.WHERE and n.dtype.is_bool)
        size[n] = min(MAX_FORMULA_SIZE + 1, (2 if copies else 1) * (sum(parts) or 1))
    return size[mask] > MAX_FORMULA_SIZE


def tile_test(mask: Node, *, load_range: LoadRange | None = None) -> TileTest:
    """The tile classification of `mask` as IR over b, h, the tile bounds, parameters and b/h-only loads.

    `load_range(load)` may give IR bounds `(lo, hi)` over the current tile for a LOAD whose indices move with
    q or kv (bool loads: (all, any)); without one such a load is unknown, which is sound."""
    if beyond_analysis(mask):
        return TileTest(TRUE_N, TRUE_N)
    return _tile_test(mask) if load_range is None else _build_tile_test(mask, load_range)


@functools.lru_cache(maxsize=256)
def _tile_test(mask: Node) -> TileTest:
    return _build_tile_test(mask, None)


def _build_tile_test(mask: Node, load_range: LoadRange | None) -> TileTest:
    low = _Lowering(mask, load_range)
    f = low.formula(mask)
    overflow = not_(low.ok())
    decider = _Decider()
    may_true = any_([decider.may_true(f, low.box), overflow])
    may_false = any_([decider.may_true(negate(f), low.box), overflow])
    return TileTest(index_algebra(may_true), index_algebra(may_false))


def classify_grid(mask: Node, *, b: Tensor, h: Tensor, q_lo: Tensor, q_hi: Tensor, kv_lo: Tensor, kv_hi: Tensor,
                  tensors: Sequence[Tensor] = (), params: Sequence[int | float] = (),
                  load_range: LoadRange | None = None) -> Tensor:
    """EMPTY / PARTIAL / FULL (int8) for every tile of the broadcast inputs, by the reference interpreter."""
    test = tile_test(mask, load_range=load_range)
    env = Env(b=b, h=h, q=q_lo, kv=kv_lo, tensors=tensors, params=params, q_lo=q_lo, q_hi=q_hi, kv_lo=kv_lo,
              kv_hi=kv_hi)
    shape = torch.broadcast_shapes(*(t.shape for t in (b, h, q_lo, q_hi, kv_lo, kv_hi)))
    may_true = evaluate(test.may_true, env).expand(shape)
    may_false = evaluate(test.may_false, env).expand(shape)
    out = torch.full(shape, PARTIAL, dtype=torch.int8, device=q_lo.device)
    out[~may_false] = FULL
    out[~may_true] = EMPTY
    return out


# -- closed-form key ranges ----------------------------------------------------------------------------------

Bound = Lin | None  # None: unbounded on that side


def kv_ranges(mask: Node) -> list[tuple[Node | None, Node | None]]:
    """Inclusive int32 key bounds for a query tile [q_lo, q_hi]: every key any query of the tile may attend
    to lies in one of the ranges (None: unbounded on that side). One range per top-level disjunct of the
    mask, merged where the union of two is one range; no ranges when the mask is constant False.

    Bounds come from conjunctions of atoms affine in kv (or in `(kv + c) // d`) whose other terms move
    monotonically with q (q, `q // d`), evaluated at whichever end of the query tile loosens them."""
    if beyond_analysis(mask):
        return [(None, None)]
    low = _Lowering(mask, None)
    f = low.formula(mask)
    if f == FALSE:
        return []
    guards, checks = low.for_ranges()
    key_guards = [g for g in guards if any("kv" in k.deps for k in g.terms)]
    # where query-side arithmetic may wrap around (or a tile constant leaves the range analysed) the bounds
    # do not hold; keys where key-side arithmetic may wrap get a range of their own
    ok = all_([*(guard_holds(g) for g in guards if g not in key_guards), *checks])
    disjuncts = f.parts if isinstance(f, Or) else (f,)
    ranges = _merge([_kv_bounds(d, low.box) for d in disjuncts] + [_wrap_range(g) for g in key_guards])
    return [(_index_bound(lo, ok, INT32_MIN), _index_bound(hi, ok, INT32_MAX)) for lo, hi in ranges]


def kv_full_range(mask: Node) -> tuple[Node | None, Node | None] | None:
    """Inclusive int32 key bounds for a query tile [q_lo, q_hi] inside which every pair of the tile is
    allowed (None: unbounded on that side), so key tiles there need neither the tile test nor the mask (the
    off-band loop of a mask with a diagonal). None where the analysis knows no such keys (data-dependent
    masks, parts it cannot bound); at run time the range is empty (lo > hi) wherever the mask's arithmetic
    might wrap around.

    The dual of `kv_ranges`: each atom's bound is taken at the end of the query tile that tightens it,
    conjunctions intersect, and a disjunction keeps what one of its parts guarantees (or their union where
    they share an end)."""
    if beyond_analysis(mask):
        return None
    low = _Lowering(mask, None)
    full = _full_bounds(low.formula(mask), low.box)
    guards, checks = low.for_ranges()
    if full is None or any("kv" in check.deps for check in checks):
        return None
    (lo, hi), conditions = full
    key_guards = [g for g in guards if any("kv" in k.deps for k in g.terms)]
    for guard in key_guards:  # keys where key-side arithmetic may wrap are never full
        bad_lo, bad_hi = _wrap_range(guard)
        if (bad_lo is None) == (bad_hi is None):
            return None
        if bad_lo is not None:
            hi = _join(Op.MIN, [hi, bad_lo.shift(-1)], any_none=False)
        else:
            lo = _join(Op.MAX, [lo, bad_hi.shift(1)], any_none=False)
    ok = all_([*(guard_holds(g) for g in guards if g not in key_guards), *checks, *conditions])
    if ok is FALSE_N:
        return None
    if ok is not TRUE_N:  # an unbounded side still needs a bound that can make the range empty
        lo, hi = (number(INT32_MIN) if lo is None else lo), (number(INT32_MAX) if hi is None else hi)
    return _index_bound(lo, ok, INT32_MAX), _index_bound(hi, ok, INT32_MIN)


FullBounds = tuple[tuple[Bound, Bound], tuple[Node, ...]]  # (key range, tile-constant conditions)


def _full_bounds(f: Formula, box: Box) -> FullBounds | None:
    if isinstance(f, Atom):
        if not any(KV in free_vars(lin_of(k)) for k in f.lin.unknowns()):  # a condition on the query tile
            weakest = _over_query_tile(f.lin, maximise=False, box=box)
            return None if weakest is None else ((None, None), (guard_holds(weakest),))
        bounds = _atom_kv_bounds(f.lin, tighten=True, box=box)
        return None if bounds == (None, None) else (bounds, ())
    if isinstance(f, Cond | Tri):  # holds everywhere where its condition does (a Tri: where it never fails)
        condition = f.node if isinstance(f, Cond) else not_(f.may_false)
        if condition is FALSE_N or "kv" in condition.deps:
            return None
        return (None, None), (() if condition is TRUE_N else (condition,))
    if isinstance(f, And):
        parts = [_full_bounds(p, box) for p in f.parts]
        if any(p is None for p in parts):
            return None
        lo = _join(Op.MAX, [p[0][0] for p in parts], any_none=False)
        hi = _join(Op.MIN, [p[0][1] for p in parts], any_none=False)
        return (lo, hi), tuple(c for p in parts for c in p[1])
    if isinstance(f, Or):
        known = [p for p in (_full_bounds(part, box) for part in f.parts) if p is not None]
        if not known:
            return None
        plain = [bounds for bounds, conditions in known if not conditions]
        if len(plain) > 1:  # ranges sharing an end unite into one
            los, his = {lo for lo, _ in plain}, {hi for _, hi in plain}
            if len(los) == 1:
                return (plain[0][0], _join(Op.MAX, [hi for _, hi in plain], any_none=True)), ()
            if len(his) == 1:
                return (_join(Op.MIN, [lo for lo, _ in plain], any_none=True), plain[0][1]), ()
        return known[0]  # a subset of the disjunction's full keys is still full
    return None


def _wrap_range(guard: Lin) -> tuple[Bound, Bound]:
    """The keys where a no-wrap-around guard over the key tile fails (a key tile of one key: kv_lo = kv_hi);
    everything when the key tile bounds occur inside other terms."""
    ends = (var("kv_lo"), var("kv_hi"))
    if any("kv" in k.deps for k in guard.terms if k not in ends):
        return None, None
    at_key = Lin({k: c for k, c in guard.terms.items() if k not in ends}, guard.const)
    at_key += Lin({KV: sum(c for k, c in guard.terms.items() if k in ends)})
    return _atom_kv_bounds(at_key.scale(-1).shift(-1))


def _kv_bounds(f: Formula, box: Box) -> tuple[Bound, Bound]:
    if isinstance(f, Atom):
        return _atom_kv_bounds(f.lin, box=box)
    if not isinstance(f, And | Or):
        return None, None
    parts = [_kv_bounds(p, box) for p in f.parts]
    if isinstance(f, And):  # the tightest of each side
        return _join(Op.MAX, [p[0] for p in parts], any_none=False), _join(Op.MIN, [p[1] for p in parts], False)
    return _join(Op.MIN, [p[0] for p in parts], any_none=True), _join(Op.MAX, [p[1] for p in parts], True)


def _join(op: Op, bounds: list[Bound], any_none: bool) -> Bound:
    """min / max of bounds: None (unbounded) absorbs for a union (`any_none`), is skipped for a meet."""
    known = [b for b in bounds if b is not None]
    if not known or (any_none and len(known) < len(bounds)):
        return None
    return _extreme(op, known)


def _atom_kv_bounds(lin: Lin, tighten: bool = False, box: Box | None = None) -> tuple[Bound, Bound]:
    """From `a * K + rest(q) >= 0` with K = kv or (kv + s) // d: K >= ceil(-rest / a) for a > 0,
    K <= floor(rest / -a) for a < 0, loosest over the query tile: the keys some query of the tile may
    attend to (`tighten`: tightest, the keys every query of the tile attends to)."""
    keys = [k for k in lin.unknowns() if KV in free_vars(lin_of(k))]
    if len(keys) != 1 or isinstance(keys[0], Mod):
        return None, None
    key, a = keys[0], lin.terms[keys[0]]
    shift = key.arg - lin_of(KV) if isinstance(key, Div) else number(0)
    rest = _over_query_tile(lin - Lin({key: a}), maximise=not tighten, box=box)
    if rest is None or shift.unknowns() or (isinstance(key, Div) and key.arg.terms[KV] != 1):
        return None, None
    if a > 0:  # (kv + s) // d >= m  <=>  kv >= d * m - s
        m = div(rest, a).scale(-1)
        return (m if key == KV else _times(m, key.d) - shift), None
    m = div(rest, -a)  # (kv + s) // d <= m  <=>  kv <= d * m + d - 1 - s
    return None, (m if key == KV else _times(m.shift(1), key.d).shift(-1) - shift)


def _times(lin: Lin, d: Divisor) -> Lin:
    """d * lin for a tile-constant form (an int64 product for a parameter d)."""
    if isinstance(d, int):
        return lin.scale(d)
    if not lin.terms:
        return sym(d).scale(lin.const)
    return sym(node(Op.MUL, I64, _cast(emit(lin), I64), _cast(d, I64)))


def _over_query_tile(lin: Lin, maximise: bool, box: Box | None = None) -> Lin | None:
    """The largest (or smallest) value of a form over q in [q_lo, q_hi], term by term (each term is monotone
    in q, or an unknown of `box` whose bounds read the query tile only); None if the form has other
    unknowns."""
    out = number(lin.const)
    for k, c in lin.terms.items():
        high = maximise == (c > 0)
        if isinstance(k, Node):
            value = lin_of(k)
        elif k == Q:
            value = lin_of(var("q_hi" if high else "q_lo"))
        elif isinstance(k, Div) and (inner := _over_query_tile(k.arg, high, box)) is not None:
            value = div(inner, k.d)  # floor division is non-decreasing
        elif isinstance(k, Var) and k != KV and box is not None and (found := _query_bound(box[k], high)):
            value = found
        else:
            return None
        out += value.scale(c)
    return out


def _query_bound(bounds: Bounds, high: bool) -> Lin | None:
    """The tightest upper (`high`) or lower bound of an unknown, if it reads no key-tile bound (then it holds
    for the query tile and any key)."""
    sides = bounds.uppers if high else bounds.lowers
    if any("kv" in k.deps for side in sides for k in side.terms):
        return None
    return _extreme(Op.MIN if high else Op.MAX, sides)


def _merge(ranges: list[tuple[Bound, Bound]]) -> list[tuple[Bound, Bound]]:
    """Unite ranges sharing an end: [a, h1] | [a, h2] = [a, max(h1, h2)]."""
    out: list[tuple[Bound, Bound]] = []
    for lo, hi in ranges:
        for i, (a, b) in enumerate(out):
            if a == lo:
                out[i] = (a, _join(Op.MAX, [b, hi], any_none=True))
                break
            if b == hi:
                out[i] = (_join(Op.MIN, [a, lo], any_none=True), b)
                break
        else:
            out.append((lo, hi))
    return [(None, None)] if (None, None) in out else out


def _index_bound(bound: Bound, ok: Node, fallback: int) -> Node | None:
    """A bound as int32 IR: clamped into int32 (a key is an int32, so the clamped bound still holds), and
    `fallback` (no bound) where the guard `ok` fails."""
    if bound is None or ok is FALSE_N:
        return None
    value = emit(bound)
    lo, hi = static_range(value)
    if lo < INT32_MIN:
        value = node(Op.MAX, value.dtype, value, const(INT32_MIN, value.dtype))
    if hi > INT32_MAX:
        value = node(Op.MIN, value.dtype, value, const(INT32_MAX, value.dtype))
    value = _cast(value, I32)
    if ok is not TRUE_N:
        value = node(Op.WHERE, I32, ok, value, const(fallback, I32))
    return index_algebra(value)
