"""Algebraic simplification, canonical operand order and integer index algebra, as rules.

Every rule is exact under the interpreter's semantics. Integer arithmetic wraps around (it is the ring
of integers modulo 2**32 or 2**64), so ring identities hold for ints even on overflow. Float rules are
only those IEEE makes exact: NaN * 0, inf - inf and the sign of zero rule out `x * 0 -> 0`, `x - x -> 0`
and `x + 0.0 -> x` (which turns -0.0 into 0.0).
"""

from __future__ import annotations

import functools
import math
import operator

import sympy

from attnc.ir.dtypes import DType
from attnc.ir.fold import FOLD_RULES, fold_node
from attnc.ir.node import Node, const, node
from attnc.ir.ops import COMMUTATIVE, COMPARE, NEGATE, Op
from attnc.ir.rewrite import RuleSet, any_, cst, level, op, order_key, ordered, rewrite

X, Y, C = any_("x"), any_("y"), any_("c")
TRUE, FALSE = const(True, DType.bool), const(False, DType.bool)


def _not(x: Node) -> Node:
    return node(Op.NOT, DType.bool, x)


def _exact_compare(n: Node) -> bool:
    return not n.src[0].dtype.is_float  # a float may be NaN, which compares unequal to itself


def _is_int(n: Node) -> bool:
    return n.dtype.is_int


def _same_dtype_cast(n: Node) -> bool:
    return n.dtype is n.src[0].dtype


# Casts that keep every value exactly, so a cast through them can be skipped.
_WIDENS: dict[DType, frozenset[DType]] = {
    DType.bool: frozenset(DType),
    DType.int32: frozenset({DType.int64, DType.float64}),
    DType.float16: frozenset({DType.float32, DType.float64}),
    DType.bfloat16: frozenset({DType.float32, DType.float64}),
    DType.float32: frozenset({DType.float64}),
}


def _skip_widening(n: Node, m: Node, x: Node) -> Node | None:
    # cast_T(cast_U(x)) -> cast_T(x) when x -> U is exact; not float -> int, where NaN/inf are undefined
    if m.dtype not in _WIDENS.get(x.dtype, ()) or (x.dtype.is_float and n.dtype.is_int):
        return None
    return node(Op.CAST, n.dtype, x)


def _is_bool(n: Node) -> bool:
    return n.dtype.is_bool


def _compare_bool_cast(n: Node, m: Node, x: Node, c: Node) -> Node | None:
    # cmp(cast(b), c) depends on one bool b, so it is False, True, b or ~b: try both values of b
    outcomes = [fold_node(node(n.op, DType.bool, node(Op.CAST, m.dtype, const(v, DType.bool)), c))
                for v in (False, True)]
    if None in outcomes:
        return None
    return {(False, False): FALSE, (True, True): TRUE, (False, True): x, (True, False): _not(x)}[
        (outcomes[0].arg, outcomes[1].arg)]


ALGEBRA_RULES = RuleSet(
    # -- arithmetic ---------------------------------------------------------------------------------
    (op(Op.ADD, X, cst(0, -0.0)), lambda x: x),                         # x + 0 -> x  (floats: x + -0.0)
    (op(Op.SUB, X, cst(0, 0.0)), lambda x: x),                          # x - 0 -> x
    (op(Op.SUB, cst(0, -0.0), X), lambda x: node(Op.NEG, x.dtype, x)),  # 0 - x -> -x (floats: -0.0 - x)
    (op(Op.MUL, X, cst(1, 1.0)), lambda x: x),                          # x * 1 -> x
    (op(Op.MUL, X, cst(0, name="z")), lambda x, z: z),                  # x * 0 -> 0  (ints)
    (op(Op.TRUEDIV, X, cst(1.0)), lambda x: x),                         # x / 1 -> x
    (op(Op.FLOORDIV, X, cst(1)), lambda x: x),                          # x // 1 -> x (ints)
    (op(Op.MOD, X, cst(1, -1), name="n"), lambda n, x: const(0, n.dtype)),  # x % ±1 -> 0 (ints)
    (op(Op.POW, X, cst(1, 1.0)), lambda x: x),                          # x ** 1 -> x
    (op(Op.SUB, X, X, name="n", where=_is_int), lambda n, x: const(0, n.dtype)),  # x - x -> 0 (ints)
    (op(Op.NEG, op(Op.NEG, X)), lambda x: x),                           # --x -> x
    (op(Op.ABS, op((Op.ABS, Op.NEG), X)), lambda x: node(Op.ABS, x.dtype, x)),  # |-x|, ||x|| -> |x|
    (op((Op.MIN, Op.MAX), X, X), lambda x: x),                          # min(x, x) -> x
    # -- logic (bool; the int rules are bitwise) ----------------------------------------------------
    (op(Op.AND, X, cst(True, -1)), lambda x: x),                        # x & True -> x
    (op(Op.AND, X, cst(False, 0, name="z")), lambda x, z: z),           # x & False -> False
    (op(Op.OR, X, cst(False, 0)), lambda x: x),                         # x | False -> x
    (op(Op.OR, X, cst(True, -1, name="z")), lambda x, z: z),            # x | True -> True
    (op(Op.XOR, X, cst(False, 0)), lambda x: x),                        # x ^ False -> x
    (op(Op.XOR, X, cst(True)), _not),                                   # x ^ True -> ~x
    (op((Op.AND, Op.OR), X, X), lambda x: x),                           # x & x -> x
    (op(Op.XOR, X, X, name="n"), lambda n, x: const(0, n.dtype)),       # x ^ x -> False
    (op(Op.AND, X, op(Op.NOT, X)), lambda x: FALSE),                    # x & ~x -> False
    (op(Op.OR, X, op(Op.NOT, X)), lambda x: TRUE),                      # x | ~x -> True
    (op(Op.NOT, op(Op.NOT, X)), lambda x: x),                           # ~~x -> x
    (op(Op.NOT, op(COMPARE, X, Y, name="c", where=_exact_compare)),     # ~(a < b) -> a >= b (not floats)
     lambda c, x, y: node(NEGATE[c.op], DType.bool, x, y)),
    # -- select -------------------------------------------------------------------------------------
    (op(Op.WHERE, cst(True), X, Y), lambda x, y: x),                    # where(True, x, y) -> x
    (op(Op.WHERE, cst(False), X, Y), lambda x, y: y),                   # where(False, x, y) -> y
    (op(Op.WHERE, C, X, X), lambda c, x: x),                            # where(c, x, x) -> x
    (op(Op.WHERE, op(Op.NOT, C), X, Y),                                 # where(~c, x, y) -> where(c, y, x)
     lambda c, x, y: node(Op.WHERE, x.dtype, c, y, x)),
    (op(Op.WHERE, C, cst(True), cst(False)), lambda c: c),              # where(c, True, False) -> c
    (op(Op.WHERE, C, cst(False), cst(True)), lambda c: _not(c)),        # where(c, False, True) -> ~c
    (op(Op.WHERE, C, op(Op.WHERE, C, X, any_()), Y),                    # where(c, where(c, x, _), y)
     lambda c, x, y: node(Op.WHERE, x.dtype, c, x, y)),                 #   -> where(c, x, y)
    (op(Op.WHERE, C, X, op(Op.WHERE, C, any_(), Y)),                    # where(c, x, where(c, _, y))
     lambda c, x, y: node(Op.WHERE, x.dtype, c, x, y)),                 #   -> where(c, x, y)
    # -- comparisons --------------------------------------------------------------------------------
    (op((Op.EQ, Op.LE, Op.GE), X, X, where=_exact_compare), lambda x: TRUE),   # x == x -> True (not floats)
    (op((Op.NE, Op.LT, Op.GT), X, X, where=_exact_compare), lambda x: FALSE),  # x < x -> False (not floats)
    (op(Op.EQ, X, cst(True)), lambda x: x),                             # b == True -> b
    (op(Op.NE, X, cst(False)), lambda x: x),                            # b != False -> b
    (op(Op.EQ, X, cst(False)), _not),                                   # b == False -> ~b
    (op(Op.NE, X, cst(True)), _not),                                    # b != True -> ~b
    # -- casts --------------------------------------------------------------------------------------
    (op(Op.CAST, X, where=_same_dtype_cast), lambda x: x),              # cast_T(x: T) -> x
    (op(Op.CAST, op(Op.CAST, X, name="m"), name="n"), _skip_widening),  # cast_T(cast_U(x)) -> cast_T(x)
    (op(COMPARE, op(Op.CAST, any_("x", where=_is_bool), name="m"), cst(name="c"), name="n"),
     _compare_bool_cast),                                                # int(b) > 0 -> b, int(b) == 0 -> ~b
)


ORDER_RULES = RuleSet(
    # a + b -> b + a and a < b -> b > a when b comes first in the canonical order (see `order_key`)
    (op(COMMUTATIVE | COMPARE, X, Y, name="n"), lambda n, x, y: ordered(n.op, n.dtype, x, y)),
)


# -- integer index algebra ------------------------------------------------------------------------

_RING = frozenset({Op.ADD, Op.SUB, Op.MUL, Op.NEG})
_MAX_TERMS = 256  # larger expansions are left as written
_MAX_DEGREE = 8  # and so are polynomials of higher degree (each monomial of degree d is a chain of d factors)


@functools.lru_cache(maxsize=1 << 14)
def normal_ring(n: Node) -> Node | None:
    """An integer +, -, * tree as its expanded polynomial over its other subterms ("atoms"), rebuilt
    grouped by loop level: ((b/h terms) + (q terms)) + (kv terms), the constant in the outermost group.
    `(q - kv) + kv -> q`; `q + 3 - kv - 1 -> (q + 2) - kv`. None (left as written) where expanding
    could produce more than `_MAX_TERMS` terms (as repeated squaring would) or a degree above `_MAX_DEGREE`."""
    terms, degree = _expansion(n)
    if terms > _MAX_TERMS or degree > _MAX_DEGREE:
        return None
    atoms: dict[Node, sympy.Symbol] = {}
    expr = _to_sympy(n, atoms)
    terms = sympy.Poly(expr, *atoms.values()).terms() if atoms else [((), expr)]
    bits = 32 if n.dtype is DType.int32 else 64
    monomials: list[tuple[Node | None, int]] = []
    for powers, coefficient in terms:
        factors = [a for a, k in zip(atoms, powers, strict=True) for _ in range(k)]
        monomials.append((_product(factors, n.dtype), _wrap(int(coefficient), bits)))
    return _sum(monomials, n.dtype, bits)


_EXPANSIONS: dict[Node, tuple[int, int]] = {}  # memo: nodes are interned and immutable


def _expansion(n: Node) -> tuple[int, int]:
    """Upper bounds on the number of terms and on the degree of the expanded polynomial, without expanding
    it (both capped just past their limits). Memoised, so bounding every prefix of a long chain (as
    rewriting bottom-up does) costs linear time in total."""
    stack = [n]
    while stack:
        top = stack[-1]
        missing = [s for s in top.src if s not in _EXPANSIONS] if top.op in _RING else []
        if missing:
            stack.extend(missing)
            continue
        stack.pop()
        if top not in _EXPANSIONS:
            _EXPANSIONS[top] = _expansion_of(top)
    return _EXPANSIONS[n]


def _expansion_of(n: Node) -> tuple[int, int]:
    if n.op not in _RING:
        return 1, 0 if n.op is Op.CONST else 1
    parts = [_EXPANSIONS[s] for s in n.src]
    if n.op is Op.MUL:
        terms, degree = math.prod(t for t, _ in parts), sum(d for _, d in parts)
    else:
        terms, degree = sum(t for t, _ in parts), max(d for _, d in parts)
    return min(terms, _MAX_TERMS + 1), min(degree, _MAX_DEGREE + 1)


def _ring_order(n: Node) -> list[Node]:
    """The +, -, * nodes under `n` and the atoms they combine, operands before users (iteratively: long
    sums do not recurse)."""
    order: list[Node] = []
    seen: set[Node] = set()
    stack: list[tuple[Node, bool]] = [(n, False)]
    while stack:
        m, expanded = stack.pop()
        if expanded:
            order.append(m)
        elif m not in seen:
            seen.add(m)
            stack.append((m, True))
            if m.op in _RING:
                stack.extend((s, False) for s in reversed(m.src))
    return order


_SYMPY_OPS = {Op.ADD: operator.add, Op.SUB: operator.sub, Op.MUL: operator.mul, Op.NEG: operator.neg}


def _to_sympy(n: Node, atoms: dict[Node, sympy.Symbol]) -> sympy.Expr:
    exprs: dict[Node, sympy.Expr] = {}
    for m in _ring_order(n):
        if m.op is Op.CONST:
            exprs[m] = sympy.Integer(m.arg)
        elif m.op in _RING:
            exprs[m] = _SYMPY_OPS[m.op](*(exprs[s] for s in m.src))
        else:  # any other subterm is an opaque atom
            exprs[m] = atoms.setdefault(m, sympy.Symbol(f"a{len(atoms)}"))
    return exprs[n]


def _wrap(value: int, bits: int) -> int:
    """`value` modulo 2**bits as a signed integer: what the wrapping int arithmetic computes."""
    half = 1 << (bits - 1)
    return (value + half) % (1 << bits) - half


def _product(factors: list[Node], dtype: DType) -> Node | None:
    """The monomial of `factors` (None for the constant monomial), multiplied in canonical order."""
    factors = sorted(factors, key=order_key)
    return functools.reduce(lambda a, b: ordered(Op.MUL, dtype, a, b), factors) if factors else None


def _sum(monomials: list[tuple[Node | None, int]], dtype: DType, bits: int) -> Node:
    terms = sorted(((m, c) for m, c in monomials if m is not None and c != 0), key=lambda t: order_key(t[0]))
    constant = sum(c for m, c in monomials if m is None)
    if constant:  # the constant joins the outermost group, as its last term
        outer = sum(1 for m, _ in terms if level(m) == level(terms[0][0])) if terms else 0
        terms.insert(outer, (None, constant))
    result: Node | None = None
    for monomial, coefficient in terms:
        result = _add_term(result, monomial, coefficient, dtype, bits)
    return const(0, dtype) if result is None else result


def _scaled(monomial: Node | None, coefficient: int, dtype: DType) -> Node:
    if monomial is None:
        return const(coefficient, dtype)
    if coefficient == 1:
        return monomial
    return ordered(Op.MUL, dtype, monomial, const(coefficient, dtype))


def _add_term(acc: Node | None, monomial: Node | None, coefficient: int, dtype: DType, bits: int) -> Node:
    negatable = coefficient < 0 and coefficient != -(1 << (bits - 1))  # -MIN does not exist
    if acc is None:
        if coefficient == -1 and monomial is not None:
            return node(Op.NEG, dtype, monomial)
        return _scaled(monomial, coefficient, dtype)
    if negatable:
        return node(Op.SUB, dtype, acc, _scaled(monomial, -coefficient, dtype))
    return ordered(Op.ADD, dtype, acc, _scaled(monomial, coefficient, dtype))


INDEX_RULES = RuleSet(
    (op(_RING, name="n", where=_is_int), normal_ring),  # integer polynomial -> expanded, grouped by level
)


SIMPLIFY_RULES = FOLD_RULES + ALGEBRA_RULES + ORDER_RULES
ALL_RULES = SIMPLIFY_RULES + INDEX_RULES


def simplify(root: Node) -> Node:
    """Constant folding, exact identities and canonical operand order, to a fixpoint."""
    return rewrite(root, SIMPLIFY_RULES)


def index_algebra(root: Node) -> Node:
    """Everything `simplify` does plus integer polynomial normalisation: a fixpoint of every rule."""
    return rewrite(root, ALL_RULES)
