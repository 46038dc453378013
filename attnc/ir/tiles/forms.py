"""Building blocks of the mask analysis: compile-time ranges of IR values, affine forms over tile-constant
symbols, their emission back to IR, boolean formulas over affine atoms, piecewise-affine trees and boxes."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence

from attnc.ir.dtypes import DType
from attnc.ir.node import Node, const, node
from attnc.ir.ops import Op
from attnc.ir.rewrite import order_key

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
