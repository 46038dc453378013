"""Symbolic differentiation of a score-mod expression, for backward kernels.

`derivative(root, wrt)` is the IR of d(root)/d(wrt), where `wrt` is the score or one LOAD node of a
captured float tensor. A LOAD node is one input however often it occurs in the DAG (interning makes equal
loads one node), so its derivative sums over its uses; a load of the same tensor at another index is a
different input.

The chain rule runs in reverse (adjoints, as autograd does) rather than forward (tangents): a
`where` or `maximum` then masks a gradient after it was multiplied by the local derivatives above it, as
torch does, so `sqrt(clamp(score, min=0))` has gradient 0, not 0/0, where the score is negative. Each
local derivative is the formula torch autograd uses for the interpreter's op (see attnc.ir.interpret),
edge cases included: minimum/maximum split the gradient half and half at ties, abs has gradient 0 at 0,
pow masks the 0 * inf of its power rule. Every node's adjoint is d(root)/d(node), whatever `wrt` is, so
the derivatives of one root with respect to different inputs share their nodes.

Derivatives are float32, the dtype backward kernels work in: half-precision operands are cast up and
half results recomputed in float32, never rounded to half.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from attnc.ir.dtypes import DType
from attnc.ir.node import Node, const, node
from attnc.ir.ops import Op
from attnc.ir.program import TensorSpec

F32, BOOL = DType.float32, DType.bool
ZERO, ONE, HALF = const(0.0, F32), const(1.0, F32), const(0.5, F32)
LN2 = const(math.log(2.0), F32)

# The gradient flowing into operand `i` of node `n`, given the gradient `g` of `n`.
Rule = Callable[[Node, Node, int], Node]


def derivative(root: Node, wrt: Node) -> Node:
    """d(root)/d(wrt) as a float32 expression over the free variables of `root`."""
    if not (wrt.op is Op.SCORE or (wrt.op is Op.LOAD and wrt.dtype.is_float)):
        raise ValueError(f"can only differentiate with respect to the score or a float load, not {wrt!r}")
    order = list(root.walk())
    reaches = _reaching(order, wrt)
    adjoints = {root: ONE}
    for n in reversed(order):
        g = adjoints.get(n, ZERO)
        if n is wrt or _is(g, 0.0) or not n.dtype.is_float or n.op is Op.LOAD:
            continue  # an input, a node without gradient, or a constant (integers, bools, other loads)
        for i, s in enumerate(n.src):
            if reaches[s] and s.dtype.is_float:
                adjoints[s] = _add(adjoints.get(s, ZERO), _RULES[n.op](n, g, i))
    return adjoints.get(wrt, ZERO)


def gradient_loads(root: Node, program_tensors: Sequence[TensorSpec]) -> list[Node]:
    """The LOAD nodes of captured float tensors in `root`, in `root.walk()` order: the inputs a backward
    kernel may accumulate gradients for (a load that only feeds comparisons or casts to int gets a zero
    derivative)."""
    return [n for n in root.walk() if n.op is Op.LOAD and program_tensors[n.arg].dtype.is_float]


def _reaching(order: list[Node], wrt: Node) -> dict[Node, bool]:
    """Which nodes read `wrt` (`order` is topological): only their adjoints are needed."""
    reaches: dict[Node, bool] = {}
    for n in order:
        reaches[n] = n is wrt or any(reaches[s] for s in n.src)
    return reaches


# -- smart constructors: float32 nodes without the trivial `x * 1`, `x + 0`, `0 * y` --------------------


def _is(n: Node, value: float) -> bool:
    return n.op is Op.CONST and n.dtype is F32 and n.arg == value


def _f32(n: Node) -> Node:
    return n if n.dtype is F32 else node(Op.CAST, F32, n)


def _add(a: Node, b: Node) -> Node:
    if _is(a, 0.0):
        return b
    return a if _is(b, 0.0) else node(Op.ADD, F32, a, b)


def _sub(a: Node, b: Node) -> Node:
    if _is(b, 0.0):
        return a
    return _neg(b) if _is(a, 0.0) else node(Op.SUB, F32, a, b)


def _neg(a: Node) -> Node:
    if a.op is Op.CONST:
        return ZERO if a.arg == 0.0 else const(-a.arg, F32)
    return a.src[0] if a.op is Op.NEG else node(Op.NEG, F32, a)


def _mul(a: Node, b: Node) -> Node:
    if _is(a, 0.0) or _is(b, 0.0):
        return ZERO
    if _is(a, 1.0) or _is(b, 1.0):
        return b if _is(a, 1.0) else a
    if _is(a, -1.0) or _is(b, -1.0):
        return _neg(b if _is(a, -1.0) else a)
    if a.op is Op.CONST or b.op is Op.CONST:
        c, x = (a, b) if a.op is Op.CONST else (b, a)
        return _scaled(x, float(c.arg))
    return node(Op.MUL, F32, a, b)


def _div(a: Node, b: Node) -> Node:
    if _is(a, 0.0):
        return ZERO
    if b.op is Op.CONST and b.arg != 0.0 and math.isfinite(b.arg):
        return _scaled(a, 1.0 / b.arg)
    if a.op is Op.MUL and b in a.src and a.dtype is F32:
        # (b * x) / b is x: the chain rule through `cap * tanh(score / cap)` for a runtime cap. Equal wherever b is
        # finite and not 0; where it is not, the quotient would be NaN and x is the better value
        return a.src[1] if a.src[0] is b else a.src[0]
    return a if _is(b, 1.0) else node(Op.TRUEDIV, F32, a, b)


def _scaled(x: Node, factor: float) -> Node:
    """x * factor, with the constant factors of a float32 product or quotient x folded into one: the chain rule
    through `cap * tanh(score / cap)` gives cap * (1 - t^2) / cap, which is 1 - t^2 (a multiply per element
    fewer, and less rounding). Left unfolded where the folded factor is not a normal float32."""
    inner, folded = x, factor
    while (split := _constant_factor(inner)) is not None:
        folded, inner = folded * split[0], split[1]
    if not _normal(folded):
        inner, folded = x, factor
    elif inner.op is Op.CONST and inner.dtype is F32 and _normal(folded * float(inner.arg)):
        return const(folded * float(inner.arg), F32)  # a product of constants (a chain rule's factors)
    if folded == 1.0:
        return inner
    return _neg(inner) if folded == -1.0 else node(Op.MUL, F32, const(folded, F32), inner)


def _normal(value: float) -> bool:
    """A normal float32 number (no overflow to inf, no loss to a subnormal)."""
    return 2.0**-126 <= abs(value) <= 2.0**127


def _constant_factor(n: Node) -> tuple[float, Node] | None:
    """(c, x) with n = c * x when n is x * c, c * x or x / c in float32, for a finite nonzero constant c."""
    if n.dtype is not F32 or n.op not in (Op.MUL, Op.TRUEDIV):
        return None
    a, b = n.src
    if b.op is Op.CONST and float(b.arg) != 0.0 and math.isfinite(b.arg):
        return (float(b.arg) if n.op is Op.MUL else 1.0 / float(b.arg)), a
    if n.op is Op.MUL and a.op is Op.CONST and float(a.arg) != 0.0 and math.isfinite(a.arg):
        return float(a.arg), b
    return None


def _where(cond: Node, a: Node, b: Node) -> Node:
    if a is b:
        return a
    if cond.op is Op.CONST:
        return a if cond.arg else b
    return node(Op.WHERE, F32, cond, a, b)


def _fn(op: Op, *src: Node) -> Node:
    return node(op, F32, *src)


def _test(op: Op, a: Node, b: Node) -> Node:
    return node(op, BOOL, a, b)


# -- the rules: torch autograd's formulas ------------------------------------------------------------


def _x(n: Node) -> Node:
    """The (only or first) operand of `n`, in float32."""
    return _f32(n.src[0])


def _y(n: Node) -> Node:
    return _f32(n.src[1])


def _value(n: Node) -> Node:
    """`n` computed in float32: `n` itself when it is float32 (interning finds it)."""
    return node(n.op, F32, *(_f32(s) for s in n.src))


def _unary(local: Callable[[Node], Node]) -> Rule:
    """g * f'(x), with `local(n)` the float32 IR of f'(x) for the node n = f(x)."""
    return lambda n, g, i: _mul(g, local(n))


def _zero(n: Node, g: Node, i: int) -> Node:
    return ZERO  # piecewise constant: floor, ceil, sign, floor division


def _sub_rule(n: Node, g: Node, i: int) -> Node:
    return g if i == 0 else _neg(g)


def _mul_rule(n: Node, g: Node, i: int) -> Node:
    return _mul(g, _f32(n.src[1 - i]))


def _truediv(n: Node, g: Node, i: int) -> Node:
    # d(a / b) = da / b - db * (a / b) / b
    return _div(g, _y(n)) if i == 0 else _mul(_neg(g), _div(_value(n), _y(n)))


def _mod(n: Node, g: Node, i: int) -> Node:
    # a % b = a - b * floor(a / b)
    return g if i == 0 else _mul(_neg(g), _fn(Op.FLOORDIV, _x(n), _y(n)))


def _pow(n: Node, g: Node, i: int) -> Node:
    return _pow_base(g, _x(n), _y(n)) if i == 0 else _pow_exponent(n, g)


def _pow_base(g: Node, b: Node, e: Node) -> Node:
    """g * e * b ** (e - 1), and 0 where e == 0 (as torch: not g * 0 * inf where b == 0)."""
    if e.op is Op.CONST:
        if e.arg == 0.0:
            return ZERO
        return _mul(g, e if e.arg == 1.0 else _mul(e, _power(b, e.arg - 1.0)))
    local = _mul(g, _mul(e, _fn(Op.POW, b, _sub(e, ONE))))
    return _where(_test(Op.EQ, e, ZERO), ZERO, local)


def _power(b: Node, exponent: float) -> Node:
    return b if exponent == 1.0 else _fn(Op.POW, b, const(exponent, F32))


def _pow_exponent(n: Node, g: Node) -> Node:
    """g * b ** e * log(b), with b ** e * log(b) taken as 0 where b == 0 and e >= 0 (not 0 * -inf)."""
    b, e = _x(n), _y(n)
    local = _mul(_value(n), _fn(Op.LOG, b))
    if b.op is Op.CONST and b.arg != 0.0:
        return _mul(g, local)
    zero_base = node(Op.AND, BOOL, _test(Op.EQ, b, ZERO), _test(Op.GE, e, ZERO))
    return _mul(g, _where(zero_base, ZERO, local))


def _extremum(loses: tuple[Op, Op]) -> Rule:
    """minimum / maximum: the gradient goes to the selected operand, half to each at ties (as torch).
    `loses[i]` compares (a, b) true where operand i is not selected."""
    def rule(n: Node, g: Node, i: int) -> Node:
        a, b = _x(n), _y(n)
        shared = _where(_test(Op.EQ, a, b), _mul(HALF, g), g)
        return _where(_test(loses[i], a, b), ZERO, shared)

    return rule


def _where_rule(n: Node, g: Node, i: int) -> Node:
    return _where(n.src[0], g, ZERO) if i == 1 else _where(n.src[0], ZERO, g)


def _one_minus(x: Node) -> Node:
    return _sub(ONE, x)


def _erf_local(n: Node) -> Node:
    # d erf(x) / dx = 2 / sqrt(pi) * exp(-x^2)
    x = _x(n)
    return _mul(const(2.0 / math.sqrt(math.pi), F32), _fn(Op.EXP, _neg(_mul(x, x))))


def _fmod(n: Node, g: Node, i: int) -> Node:
    # fmod(a, b) = a - b * trunc(a / b), as torch differentiates it
    if i == 0:
        return g
    quotient = _fn(Op.TRUEDIV, _x(n), _y(n))
    truncated = _where(_test(Op.LT, quotient, ZERO), _fn(Op.CEIL, quotient), _fn(Op.FLOOR, quotient))
    return _mul(_neg(g), truncated)


_RULES: dict[Op, Rule] = {
    Op.EXP: _unary(_value),
    Op.EXP2: _unary(lambda n: _mul(_value(n), LN2)),
    Op.LOG: lambda n, g, i: _div(g, _x(n)),
    Op.LOG2: lambda n, g, i: _div(g, _mul(_x(n), LN2)),
    Op.LOG1P: lambda n, g, i: _div(g, _add(_x(n), ONE)),
    Op.SQRT: lambda n, g, i: _div(g, _mul(const(2.0, F32), _value(n))),
    Op.RSQRT: lambda n, g, i: _mul(_mul(const(-0.5, F32), g), _mul(_value(n), _mul(_value(n), _value(n)))),
    Op.TANH: _unary(lambda n: _one_minus(_mul(_value(n), _value(n)))),
    Op.SIGMOID: _unary(lambda n: _mul(_one_minus(_value(n)), _value(n))),
    Op.SIN: _unary(lambda n: _fn(Op.COS, _x(n))),
    Op.COS: _unary(lambda n: _neg(_fn(Op.SIN, _x(n)))),
    Op.ABS: _unary(lambda n: _fn(Op.SIGN, _x(n))),
    Op.NEG: lambda n, g, i: _neg(g),
    Op.CAST: lambda n, g, i: g,  # float to float: the gradient passes (only float operands get one)
    Op.FLOOR: _zero, Op.CEIL: _zero, Op.SIGN: _zero, Op.FLOORDIV: _zero, Op.ROUND: _zero,
    Op.ERF: _unary(_erf_local),
    Op.ATAN: lambda n, g, i: _div(g, _add(ONE, _mul(_x(n), _x(n)))),
    Op.EXPM1: _unary(lambda n: _add(_value(n), ONE)),
    Op.FMOD: _fmod,
    Op.ADD: lambda n, g, i: g,
    Op.SUB: _sub_rule,
    Op.MUL: _mul_rule,
    Op.TRUEDIV: _truediv,
    Op.MOD: _mod,
    Op.POW: _pow,
    Op.MIN: _extremum((Op.GT, Op.LT)),
    Op.MAX: _extremum((Op.LT, Op.GT)),
    Op.WHERE: _where_rule,
}
