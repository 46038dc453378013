"""Activations, rounding, predicates and shifts: the pointwise functions mods borrow from model code.

Most are compositions of IR ops, written so that torch's values *and* torch's gradients come out, edge
cases included: `relu` is `where(x <= 0, 0, x)` (NaN passes, gradient 0 at 0), `hardtanh` passes the
gradient strictly inside its bounds only, and branches that would overflow where they are not selected
(softplus's `exp`, elu's `expm1`) read an operand clamped by the same condition, so no `0 * inf` reaches a
gradient. Functions torch computes in float32 for 16-bit inputs are composed in float32 and rounded once.
Integer inputs of float functions are computed in float32, as `torch.exp(int)` is.

`BY_NAME` holds functions that exist as `torch.<name>` and `Tensor.<name>`; `FUNCTIONS` the
`torch.nn.functional` and `torch.special` forms, keyed by the callable `__torch_function__` receives.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from attnc.dsl import semantics as sem
from attnc.dsl.errors import TraceError
from attnc.dsl.semantics import Operand, Typed, cast
from attnc.ir.dtypes import DType
from attnc.ir.node import const
from attnc.ir.ops import Op

Handler = Callable[..., Typed]
Body = Callable[[Typed], Typed]

_SQRT1_2 = 1.0 / math.sqrt(2.0)
_GELU_BETA = math.sqrt(2.0 / math.pi)  # tanh approximation: tanh(beta * (x + kappa * x^3))
_GELU_KAPPA = 0.044715
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


# -- helpers --------------------------------------------------------------------------------------


def in_float(x: Typed, body: Body) -> Typed:
    """`body(x)` in x's float dtype (float32 for integers), computed in float32 for 16-bit floats."""
    dtype = x.node.dtype
    out = dtype if dtype.is_float else DType.float32
    work = DType.float32 if out.is_half else out
    return Typed(cast(body(Typed(cast(x.node, work))).node, out))


def _numeric(x: Typed, name: str) -> Typed:
    if x.node.dtype.is_bool:
        raise TraceError.here(f"{name} of a bool value is not supported (as in PyTorch)",
                              "convert with .to(torch.float32) first")
    return x


def _where(cond: Typed, a: Operand, b: Operand) -> Typed:
    return sem.where(cond, a, b)


def _mul(a: Operand, b: Operand) -> Typed:
    return sem.arith(Op.MUL, a, b)


def _add(a: Operand, b: Operand) -> Typed:
    return sem.arith(Op.ADD, a, b)


def _sub(a: Operand, b: Operand) -> Typed:
    return sem.arith(Op.SUB, a, b)


def _div(a: Operand, b: Operand) -> Typed:
    return sem.arith(Op.TRUEDIV, a, b)


def _lt(a: Operand, b: Operand) -> Typed:
    return sem.compare(Op.LT, a, b)


def _le(a: Operand, b: Operand) -> Typed:
    return sem.compare(Op.LE, a, b)


def _gt(a: Operand, b: Operand) -> Typed:
    return sem.compare(Op.GT, a, b)


def _fn(op: Op, x: Typed) -> Typed:
    return sem.float_math(op, x)


# -- activations ----------------------------------------------------------------------------------


def relu(x: Typed) -> Typed:
    x = _numeric(x, "relu")
    return _where(_le(x, 0), 0, x)


def hardtanh(x: Typed, low: Operand = -1.0, high: Operand = 1.0) -> Typed:
    """Clamped to [low, high]; the gradient passes strictly inside only (torch's hardtanh_backward)."""
    x = _numeric(x, "hardtanh")
    return _where(_le(x, low), low, _where(sem.compare(Op.GE, x, high), high, x))


def leaky_relu(x: Typed, slope: Operand = 0.01) -> Typed:
    return _where(_gt(x, 0), x, _mul(x, slope))


def _negative_part(x: Typed, fn: Body) -> Typed:
    """where(x > 0, x, fn(x)), with fn reading min(x, 0) so that it cannot overflow where unselected."""
    positive = _gt(x, 0)
    return _where(positive, x, fn(_where(positive, 0.0, x)))


def elu(x: Typed, alpha: Operand = 1.0) -> Typed:
    return in_float(x, lambda v: _negative_part(v, lambda z: _mul(alpha, _fn(Op.EXPM1, z))))


def celu(x: Typed, alpha: Operand = 1.0) -> Typed:
    return in_float(x, lambda v: _negative_part(v, lambda z: _mul(alpha, _fn(Op.EXPM1, _div(z, alpha)))))


def selu(x: Typed) -> Typed:
    return in_float(x, lambda v: _mul(_SELU_SCALE, elu(v, _SELU_ALPHA)))


def gelu(x: Typed, approximate: str = "none") -> Typed:
    if approximate == "none":
        return in_float(x, _gelu_exact)
    if approximate == "tanh":
        return in_float(x, _gelu_tanh)
    raise TraceError.here(f"gelu: approximate={approximate!r} is not one of 'none', 'tanh'",
                          "use approximate='none' (erf) or approximate='tanh'")


def _gelu_exact(x: Typed) -> Typed:
    # x * 0.5 * (1 + erf(x / sqrt(2)))
    return _mul(_mul(x, 0.5), _add(1.0, _fn(Op.ERF, _mul(x, _SQRT1_2))))


def _gelu_tanh(x: Typed) -> Typed:
    # 0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3)))
    inner = _mul(_GELU_BETA, _add(x, _mul(_GELU_KAPPA, _mul(_mul(x, x), x))))
    return _mul(_mul(0.5, x), _add(1.0, _fn(Op.TANH, inner)))


def silu(x: Typed) -> Typed:
    return in_float(x, lambda v: _mul(v, _fn(Op.SIGMOID, v)))


def softplus(x: Typed, beta: Operand = 1.0, threshold: Operand = 20.0) -> Typed:
    """log(1 + exp(beta * x)) / beta, and x itself where beta * x > threshold (torch's linear regime)."""

    def body(v: Typed) -> Typed:
        scaled = _mul(v, beta)
        linear = _gt(scaled, threshold)
        soft = _div(_fn(Op.LOG1P, _fn(Op.EXP, _where(linear, 0.0, scaled))), beta)
        return _where(linear, v, soft)

    return in_float(x, body)


def logsigmoid(x: Typed) -> Typed:
    """min(x, 0) - log1p(exp(-|x|)); |x| written as a select so the gradient at 0 is torch's 1/2."""

    def body(v: Typed) -> Typed:
        negative = _lt(v, 0)
        return _sub(_where(negative, v, 0.0), _fn(Op.LOG1P, _fn(Op.EXP, _where(negative, v, sem.negate(v)))))

    return in_float(x, body)


def mish(x: Typed) -> Typed:
    return in_float(x, lambda v: _mul(v, _fn(Op.TANH, softplus(v))))


def softsign(x: Typed) -> Typed:
    return in_float(x, lambda v: _div(v, _add(1.0, sem.absolute(v))))


def tanhshrink(x: Typed) -> Typed:
    return in_float(x, lambda v: _sub(v, _fn(Op.TANH, v)))


def hardsigmoid(x: Typed) -> Typed:
    # torch: gradient 1/6 strictly inside (-3, 3)
    return in_float(x, lambda v: _where(_le(v, -3.0), 0.0,
                                        _where(sem.compare(Op.GE, v, 3.0), 1.0, _add(_div(v, 6.0), 0.5))))


def hardswish(x: Typed) -> Typed:
    # torch: gradient 0 below -3, x / 3 + 1/2 on [-3, 3], 1 above
    return in_float(x, lambda v: _where(_lt(v, -3.0), 0.0,
                                        _where(_le(v, 3.0), _div(_mul(v, _add(v, 3.0)), 6.0), v)))


# -- rounding and remainders ------------------------------------------------------------------------------


def trunc(x: Typed) -> Typed:
    """Toward zero: ceil below 0, floor elsewhere (integers are returned as they are)."""
    if not x.node.dtype.is_float:
        return sem.float_math(Op.FLOOR, x)  # the integer rules of floor: unchanged, bool refused
    return _where(_lt(x, 0), sem.float_math(Op.CEIL, x), sem.float_math(Op.FLOOR, x))


def frac(x: Typed) -> Typed:
    return _sub(x, trunc(x))


def round_(x: Typed, decimals: int = 0) -> Typed:
    """Half to even; with `decimals`, round(x * 10^d) / 10^d (for d < 0: round(x / 10^-d) * 10^-d), as torch."""
    if not isinstance(decimals, int) or isinstance(decimals, bool):
        raise TraceError.here(f"torch.round: decimals must be a Python int, not {type(decimals).__name__}")
    if decimals == 0 or not x.node.dtype.is_float:
        return sem.float_math(Op.ROUND, x)
    scale = 10.0 ** abs(decimals)
    if decimals > 0:
        return in_float(x, lambda v: _div(sem.float_math(Op.ROUND, _mul(v, scale)), scale))
    return in_float(x, lambda v: _mul(sem.float_math(Op.ROUND, _div(v, scale)), scale))


def tan(x: Typed) -> Typed:
    return in_float(x, lambda v: _div(_fn(Op.SIN, v), _fn(Op.COS, v)))


def logaddexp(a: Operand, b: Operand) -> Typed:
    """log(e^a + e^b) as torch: max(a, b) + log1p(exp(-|a - b|)), and a itself when a == b is infinite
    (where the difference, inf - inf, is replaced by 0 so that no NaN reaches a gradient)."""
    dtype, _ = sem.result_dtype((a, b), python=False)
    x, y = Typed(sem.to_node(a, dtype)), Typed(sem.to_node(b, dtype))

    def body(v: Typed) -> Typed:
        u = Typed(cast(y.node, v.node.dtype))
        same_infinity = sem.logic(Op.AND, sem.compare(Op.EQ, v, u), isinf(v))
        gap = sem.absolute(_where(same_infinity, 0.0, _sub(v, u)))
        return _where(same_infinity, v, _add(sem.arith(Op.MAX, v, u), _fn(Op.LOG1P, _fn(Op.EXP, sem.negate(gap)))))

    return in_float(x, body)


def lerp(start: Operand, end: Operand, weight: Operand) -> Typed:
    """torch.lerp: start + w * (end - start) for |w| < 1/2, end - (end - start) * (1 - w) otherwise."""
    dtype, _ = sem.result_dtype((start, end, weight), python=False)
    s, e, w = (Typed(sem.to_node(v, dtype)) for v in (start, end, weight))
    span = _sub(e, s)
    return _where(_lt(sem.absolute(w), 0.5), _add(s, _mul(w, span)), _sub(e, _mul(span, _sub(1.0, w))))


def logit(x: Typed, eps: float | None = None) -> Typed:
    """log(x / (1 - x)), x first clamped to [eps, 1 - eps] when eps is given (gradient 0 outside, as torch)."""

    def body(v: Typed) -> Typed:
        if eps is not None:
            v = _where(_lt(v, eps), eps, _where(_gt(v, 1.0 - eps), 1.0 - eps, v))
        return _fn(Op.LOG, _div(v, _sub(1.0, v)))

    return in_float(x, body)


# -- predicates -------------------------------------------------------------------------------------


def _predicate(on_float: Body, otherwise: bool) -> Body:
    """A test that is constant on integers and bools (which are never NaN or infinite)."""

    def test(x: Typed) -> Typed:
        if x.node.dtype.is_float:
            return on_float(x)
        return Typed(const(otherwise, DType.bool))

    return test


isnan = _predicate(lambda x: sem.compare(Op.NE, x, x), False)
isinf = _predicate(lambda x: sem.compare(Op.EQ, sem.absolute(x), math.inf), False)
isposinf = _predicate(lambda x: sem.compare(Op.EQ, x, math.inf), False)
isneginf = _predicate(lambda x: sem.compare(Op.EQ, x, -math.inf), False)
isfinite = _predicate(lambda x: _lt(sem.absolute(x), math.inf), True)


def nan_to_num(x: Typed, nan: float = 0.0, posinf: float | None = None, neginf: float | None = None) -> Typed:
    dtype = x.node.dtype
    if not dtype.is_float:
        return x
    info = torch.finfo(dtype.torch)
    high = info.max if posinf is None else posinf
    low = info.min if neginf is None else neginf
    return _where(isnan(x), nan, _where(isposinf(x), high, _where(isneginf(x), low, x)))


# -- handlers: traced arguments to IR -----------------------------------------------------------------------


def _no_inplace(name: str, inplace: bool) -> None:
    if inplace:
        raise TraceError.here(f"{name}(..., inplace=True) changes a value in place, which mods cannot do",
                              f"use the result instead: {name}(x)")


def _activation(name: str, build: Callable[..., Typed]) -> Handler:
    """A handler for `F.<name>(input, *options, inplace=False)`: options may be traced values."""

    def handler(tracer: Any, input: object, *options: object, inplace: bool = False, **named: object) -> Typed:
        _no_inplace(name, inplace)
        lifted = [tracer.lift(o) if not isinstance(o, str) else o for o in options]
        keywords = {k: tracer.lift(v) if not isinstance(v, str) else v for k, v in named.items()}
        return build(sem.strong(tracer.lift(input)), *lifted, **keywords)

    return handler


def _renamed(build: Callable[..., Typed], **names: str) -> Callable[..., Typed]:
    """`build` called with torch's keyword names (`min_val=` for `low=`)."""
    return lambda x, *args, **kwargs: build(x, *args, **{names.get(k, k): v for k, v in kwargs.items()})


def _unary(build: Body) -> Handler:
    return lambda tracer, input: build(sem.strong(tracer.lift(input)))


def _round_handler(tracer: Any, input: object, *, decimals: int = 0) -> Typed:
    return round_(sem.strong(tracer.lift(input)), decimals)


def _nan_to_num(tracer: Any, input: object, nan: float = 0.0, posinf: float | None = None,
                neginf: float | None = None) -> Typed:
    return nan_to_num(sem.strong(tracer.lift(input)), nan, posinf, neginf)


def _binary(build: Callable[..., Typed], op: Op) -> Handler:
    return lambda tracer, input, other: build(op, tracer.lift(input), tracer.lift(other))


def _reflected(build: Callable[..., Typed], op: Op) -> Handler:
    return lambda tracer, input, other: build(op, tracer.lift(other), tracer.lift(input))


def _math(op: Op) -> Handler:
    return _unary(lambda x: sem.float_math(op, x))


BY_NAME: dict[str, Handler] = {
    "relu": _activation("relu", relu),
    "erf": _math(Op.ERF), "atan": _math(Op.ATAN), "arctan": _math(Op.ATAN), "expm1": _math(Op.EXPM1),
    "tan": _unary(tan), "round": _round_handler, "trunc": _unary(trunc), "fix": _unary(trunc),
    "frac": _unary(frac), "fmod": lambda tracer, input, other: sem.fmod(tracer.lift(input), tracer.lift(other)),
    "bitwise_left_shift": _binary(sem.shift, Op.SHL), "bitwise_right_shift": _binary(sem.shift, Op.SHR),
    "isnan": _unary(isnan), "isinf": _unary(isinf), "isfinite": _unary(isfinite),
    "isposinf": _unary(isposinf), "isneginf": _unary(isneginf), "nan_to_num": _nan_to_num,
    "square": _unary(lambda x: sem.arith(Op.MUL, x, x)), "reciprocal": _unary(lambda x: sem.arith(Op.TRUEDIV, 1, x)),
    "sgn": _unary(sem.sign), "positive": _unary(sem.positive),
    "logaddexp": lambda tracer, input, other: logaddexp(tracer.lift(input), tracer.lift(other)),
    "lerp": lambda tracer, input, end, weight: lerp(tracer.lift(input), tracer.lift(end), tracer.lift(weight)),
    "logit": lambda tracer, input, eps=None: logit(sem.strong(tracer.lift(input)), eps),
    "deg2rad": _unary(lambda x: in_float(x, lambda v: _mul(v, math.pi / 180.0))),
    "rad2deg": _unary(lambda x: in_float(x, lambda v: _mul(v, 180.0 / math.pi))),
}

DUNDERS: dict[Callable, Handler] = {
    torch.Tensor.__lshift__: _binary(sem.shift, Op.SHL),
    torch.Tensor.__rlshift__: _reflected(sem.shift, Op.SHL),
    torch.Tensor.__rshift__: _binary(sem.shift, Op.SHR),
    torch.Tensor.__rrshift__: _reflected(sem.shift, Op.SHR),
}

FUNCTIONS: dict[Callable, Handler] = {
    F.relu: _activation("relu", relu),
    F.relu6: _activation("relu6", lambda x: hardtanh(x, 0.0, 6.0)),
    F.hardtanh: _activation("hardtanh", _renamed(hardtanh, min_val="low", max_val="high")),
    F.leaky_relu: _activation("leaky_relu", _renamed(leaky_relu, negative_slope="slope")),
    F.elu: _activation("elu", elu),
    F.celu: _activation("celu", celu),
    F.selu: _activation("selu", selu),
    F.gelu: _activation("gelu", gelu),
    F.silu: _activation("silu", silu),
    F.mish: _activation("mish", mish),
    F.softplus: _activation("softplus", softplus),
    F.logsigmoid: _activation("logsigmoid", logsigmoid),
    F.softsign: _activation("softsign", softsign),
    F.tanhshrink: _activation("tanhshrink", tanhshrink),
    F.hardsigmoid: _activation("hardsigmoid", hardsigmoid),
    F.hardswish: _activation("hardswish", hardswish),
    torch.special.erf: _math(Op.ERF),
    torch.special.expm1: _math(Op.EXPM1),
    torch.special.log1p: _math(Op.LOG1P),
    torch.special.round: _round_handler,
    torch.special.logit: BY_NAME["logit"],
}

__all__ = ["BY_NAME", "DUNDERS", "FUNCTIONS", "in_float"]
