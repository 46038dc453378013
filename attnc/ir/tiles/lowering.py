"""Lowering IR to formulas over a tile box: bool nodes to formulas, integer nodes to piecewise-affine trees,
exact floats to scaled integers, other floats to interval bounds, with the guards and checks relied on."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

from attnc.ir import float_ranges as fr
from attnc.ir.dtypes import DType
from attnc.ir.float_ranges import FRange
from attnc.ir.node import Node, const, node, var
from attnc.ir.ops import COMPARE, MIRROR, Op
from attnc.ir.tiles.exact_floats import (
    _WIDENS,
    Plan,
    Scaled,
    _align,
    _constant_tree,
    _dyadic,
    _joined,
    _plan_cost,
    _plan_holds,
    _tree_bounds,
)
from attnc.ir.tiles.forms import (
    _DTYPE_RANGE,
    _EXP_LIMIT,
    _INDEX,
    _MAGNITUDE,
    _MIN_EXP,
    _PRECISION,
    _WIDE,
    BOOL,
    F64,
    I32,
    I64,
    INDEX_RANGE,
    INT32_MAX,
    INT32_MIN,
    TRUE,
    TRUE_N,
    UNKNOWN,
    Bounds,
    Cond,
    Div,
    Divisor,
    Formula,
    Key,
    Lin,
    LoadRange,
    Max,
    Min,
    Mod,
    Range,
    Select,
    Tree,
    Tri,
    Var,
    _cast,
    _divisor,
    _floordiv_range,
    _magnitude,
    _positive,
    _span,
    _symbol_range,
    all_,
    any_,
    compare,
    conj,
    disj,
    div,
    emit,
    guard_holds,
    lin_of,
    mod,
    negate,
    not_,
    number,
    static_range,
    sym,
    t_add,
    t_ge0,
    t_map,
    t_neg,
    t_scale,
    t_selects,
    tree_interval,
)

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
