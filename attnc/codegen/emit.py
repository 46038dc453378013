"""Render IR nodes as Triton expressions, one small function per op in one table.

Each renderer gets the node and the already-rendered operand expressions and returns an expression.
Operands may be bare Python literals, so conversions use `tl.cast(x, T)`, never `x.to(T)`.
16-bit float arithmetic is computed in float32 and rounded back, matching PyTorch on CPU and avoiding
the Triton interpreter's inexact bf16 arithmetic.

One source serves every input dtype: float32 values are written in `COMPUTE`, a constexpr every kernel defines
from its inputs' dtype (float32, or float64 for float64 inputs, where the float64 reference computes every
float in float64), never as `tl.float32`. For float32 inputs the generated code compiles to what it did when
it named tl.float32 (a cast to a value's own type emits nothing). Python float literals stay bare: Triton
materialises a scalar in the dtype of the tensor it meets, so 0.1 next to a float64 value is the double 0.1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from attnc.ir.dtypes import DType
from attnc.ir.node import Node
from attnc.ir.ops import Op


class CodegenError(Exception):
    """A construct the kernel generator cannot express (raised at compile time, never at launch)."""


TL_DTYPE = {
    DType.bool: "tl.int1", DType.int32: "tl.int32", DType.int64: "tl.int64", DType.float16: "tl.float16",
    DType.bfloat16: "tl.bfloat16", DType.float32: "tl.float32", DType.float64: "tl.float64",
}
# the pointer element types triton.compile's signature names
POINTER_TYPE = {
    DType.bool: "*i1", DType.int32: "*i32", DType.int64: "*i64", DType.float16: "*fp16",
    DType.bfloat16: "*bf16", DType.float32: "*fp32", DType.float64: "*fp64",
}

# The constexpr naming the dtype float32 values are computed in (see the module docstring).
COMPUTE = "COMPUTE"

Renderer = Callable[[Node, Sequence[str]], str]


def tl_type(dtype: DType) -> str:
    """The Triton dtype a value of `dtype` is computed in: float32 in the kernel's compute dtype."""
    return COMPUTE if dtype is DType.float32 else TL_DTYPE[dtype]


def narrow(expr: str, dtype: DType) -> str:
    """`expr` as a value of `dtype`: rounded to a 16-bit float through `_half`, which keeps it in float64 in a
    float64 kernel (where the reference never rounds to 16 bits)."""
    if dtype.is_half:
        return f"_half({expr}, {TL_DTYPE[dtype]}, {COMPUTE})"
    return f"tl.cast({expr}, {tl_type(dtype)})"


def literal(value: bool | int | float, dtype: DType) -> str:
    """A Triton literal of exactly `dtype` (bare literals are int32 / float32 / int1)."""
    finite = not isinstance(value, float) or math.isfinite(value)
    text = repr(value) if finite else f'float("{value}")'
    if dtype in (DType.bool, DType.float32) or (dtype is DType.int32 and -(2**31) <= value < 2**31):
        return text
    if dtype.is_half:  # rounded to 16 bits unless the kernel computes in float64
        return narrow(f"tl.full([], {text}, {COMPUTE})", dtype)
    return f"tl.full([], {text}, {TL_DTYPE[dtype]})"


def _in_f32(dtype: DType, expr: Callable[..., str]) -> Renderer:
    """Wrap an arithmetic renderer so half-precision results are computed in float32 and rounded."""

    def render(n: Node, a: Sequence[str]) -> str:
        if not n.dtype.is_half:
            return expr(*a)
        widened = [f"tl.cast({x}, {COMPUTE})" for x in a]
        return narrow(expr(*widened), n.dtype)

    return render


def _arith(fmt: str) -> Renderer:
    return lambda n, a: _in_f32(n.dtype, lambda *x: fmt.format(*x))(n, a)


def _by_kind(int_fmt: str, float_fmt: str) -> Renderer:
    """Ops whose Triton spelling differs between integer and float operands."""

    def render(n: Node, a: Sequence[str]) -> str:
        fmt = float_fmt if n.dtype.is_float else int_fmt
        return _in_f32(n.dtype, lambda *x: fmt.format(*x))(n, a)

    return render


def _compare(symbol: str) -> Renderer:
    def render(n: Node, a: Sequence[str]) -> str:
        if n.src[0].dtype.is_half:
            a = [f"tl.cast({x}, {COMPUTE})" for x in a]
        return f"({a[0]} {symbol} {a[1]})"

    return render


def _minmax(fn: str) -> Renderer:
    def render(n: Node, a: Sequence[str]) -> str:
        if n.dtype.is_float:  # torch.minimum/maximum propagate NaN
            return _in_f32(n.dtype, lambda x, y: f"{fn}({x}, {y}, propagate_nan=tl.PropagateNan.ALL)")(n, a)
        return f"{fn}({a[0]}, {a[1]})"

    return render


def _cast(n: Node, a: Sequence[str]) -> str:
    if n.dtype.is_bool:
        return f"({a[0]} != 0)"
    if n.src[0].dtype.is_bool:
        return narrow(f"tl.cast({a[0]}, tl.int32)", n.dtype)
    return narrow(a[0], n.dtype)


def _sign(n: Node, a: Sequence[str]) -> str:
    t = tl_type(n.dtype)
    # (x > 0) - (x < 0), as torch computes it: sign(NaN) is 0 there, and so here
    return f"(tl.cast({a[0]} > 0, {t}) - tl.cast({a[0]} < 0, {t}))"


def _pow(n: Node, a: Sequence[str]) -> str:
    exponent = n.src[1]
    if exponent.op is Op.CONST and float(exponent.arg).is_integer() and abs(exponent.arg) <= 8:
        return _in_f32(n.dtype, lambda x, _: _integer_power(x, int(exponent.arg)))(n, a)
    if exponent.op is Op.CONST and exponent.arg == 0.5 and n.dtype.is_float:
        return _in_f32(n.dtype, lambda x, _: f"tl.sqrt({x})")(n, a)
    if not n.dtype.is_float:
        raise CodegenError("integer ** with a non-constant exponent is not supported; use a float base")
    return _in_f32(n.dtype, lambda x, y: f"_powf({x}, {y})")(n, a)


def _integer_power(base: str, k: int) -> str:
    if k == 0:
        return f"(tl.zeros_like({base}) + 1)"
    product = " * ".join([base] * abs(k))
    return f"(1.0 / ({product}))" if k < 0 else f"({product})"


def _shift(helper: str, symbol: str) -> Renderer:
    """`<<` / `>>` with torch's meaning for counts outside [0, bits); a constant count inside is one shift."""

    def render(n: Node, a: Sequence[str]) -> str:
        bits = 64 if n.dtype is DType.int64 else 32
        count = n.src[1]
        if count.op is Op.CONST and 0 <= count.arg < bits:
            return f"({a[0]} {symbol} {a[1]})"
        return f"{helper}({a[0]}, {a[1]}, {bits})"

    return render


def _unary(fn: str) -> Renderer:
    return lambda n, a: _in_f32(n.dtype, lambda x: f"{fn}({x})")(n, a)


def _logic(symbol: str) -> Renderer:
    """Bitwise on ints, logical on bools. A bool from a comparison of float scalars is written `(x != 0)`:
    the Triton interpreter keeps such a value in a form its `& | ^` reject (a GPU folds the test away)."""

    def render(n: Node, a: Sequence[str]) -> str:
        if n.dtype is DType.bool:
            a = [f"({x} != 0)" if _float_comparison(s) else x for s, x in zip(n.src, a, strict=True)]
        return f"({a[0]} {symbol} {a[1]})"

    return render


def _where(n: Node, a: Sequence[str]) -> str:
    if_true, if_false = a[1], a[2]
    if n.dtype is DType.float32 and all(s.op is Op.CONST for s in n.src[1:]):
        # two bare literals would make a float32 select: one of them in the compute dtype sets it
        if_true = f"tl.full([], {if_true}, {COMPUTE})"
    return f"tl.where({a[0]}, {if_true}, {if_false})"


def _float_comparison(n: Node) -> bool:
    return n.op in (Op.LT, Op.LE, Op.GT, Op.GE, Op.EQ, Op.NE) and n.src[0].dtype.is_float


RENDER: dict[Op, Renderer] = {
    Op.EXP: _unary("tl.exp"),
    Op.EXP2: _unary("tl.exp2"),
    Op.LOG: _unary("tl.log"),
    Op.LOG2: _unary("tl.log2"),
    Op.LOG1P: _unary("_log1p"),
    Op.SQRT: _unary("tl.sqrt"),
    Op.RSQRT: _unary("_rsqrt"),
    Op.TANH: lambda n, a: _in_f32(n.dtype, lambda x: f"_tanh({x}, FAST_MATH)")(n, a),
    Op.SIGMOID: _unary("tl.sigmoid"),
    Op.SIN: _unary("tl.sin"),
    Op.COS: _unary("tl.cos"),
    Op.FLOOR: _unary("tl.floor"),
    Op.CEIL: _unary("tl.ceil"),
    Op.NEG: _arith("(-{0})"),
    Op.ABS: _unary("tl.abs"),
    Op.SIGN: _sign,
    Op.NOT: lambda n, a: f"({a[0]} == 0)",
    Op.CAST: _cast,
    Op.ADD: _arith("({0} + {1})"),
    Op.SUB: _arith("({0} - {1})"),
    Op.MUL: _arith("({0} * {1})"),
    Op.TRUEDIV: _arith("({0} / {1})"),
    Op.FLOORDIV: _by_kind("_floordiv({0}, {1})", "_floordiv_float({0}, {1})"),
    Op.MOD: _arith("_mod({0}, {1})"),  # Triton's `%` truncates for ints and floats alike
    Op.POW: _pow,
    Op.MIN: _minmax("tl.minimum"),
    Op.MAX: _minmax("tl.maximum"),
    Op.AND: _logic("&"),
    Op.OR: _logic("|"),
    Op.XOR: _logic("^"),
    Op.LT: _compare("<"),
    Op.LE: _compare("<="),
    Op.GT: _compare(">"),
    Op.GE: _compare(">="),
    Op.EQ: _compare("=="),
    Op.NE: _compare("!="),
    Op.WHERE: _where,
    Op.ERF: _unary("tl.erf"),
    Op.ATAN: _unary("_atan"),
    Op.EXPM1: _unary("_expm1"),
    Op.ROUND: _unary("_round_half_even"),
    Op.FMOD: _arith("({0} % {1})"),  # Triton's `%` is C's fmod for ints and floats
    Op.SHL: _shift("_shl", "<<"),
    Op.SHR: _shift("_shr", ">>"),
}
