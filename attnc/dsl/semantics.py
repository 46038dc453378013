"""PyTorch's typing rules for the operations attention mods use, expressed as IR builders.

A value is either a `Typed` IR node or a plain Python scalar (a literal in the user's code). Each builder
computes the result dtype exactly as PyTorch does for zero-dim tensors and Python scalars, then inserts
the CAST nodes that give every operand the dtype its IR op requires (see attnc.ir.ops).

PyTorch treats Python scalars as *weak*: `int32_tensor + 1` stays int32 and `float16_tensor * 0.5`
stays float16. A closure scalar becomes a runtime PARAM, yet must keep promoting like the Python number
it replaces, so `Typed.weak` remembers that Python type until the value meets a real tensor. Two weak
values combined by a Python operator follow Python (`True + True` is an int); inside a torch function
a lone weak value is what `torch.tensor(x)` would make of it (`torch.where(c, 1, 0)` is int64).
"""

from __future__ import annotations

import dataclasses

from attnc.dsl.errors import TraceError
from attnc.ir.dtypes import DType, promote
from attnc.ir.node import Node, const, node
from attnc.ir.ops import INT_DIVISIONS, Op

Scalar = bool | int | float


@dataclasses.dataclass(frozen=True)
class Typed:
    """An IR value; `weak` is bool, int or float while the value still promotes as a Python scalar."""

    node: Node
    weak: type | None = None

    @property
    def key(self) -> DType | type:
        return self.weak or self.node.dtype


Operand = Typed | bool | int | float

# How the IR stores a weak value, and what torch.tensor(x) makes of a Python scalar.
WEAK_DTYPE = {bool: DType.bool, int: DType.int32, float: DType.float32}
TORCH_DEFAULT = {bool: DType.bool, int: DType.int64, float: DType.float32}
_INT_RANGE = {DType.int32: (-(2**31), 2**31 - 1), DType.int64: (-(2**63), 2**63 - 1)}
SYMBOL = {
    Op.ADD: "+", Op.SUB: "-", Op.MUL: "*", Op.TRUEDIV: "/", Op.FLOORDIV: "//", Op.MOD: "%",
    Op.POW: "**", Op.MIN: "torch.minimum", Op.MAX: "torch.maximum", Op.AND: "&", Op.OR: "|", Op.XOR: "^",
    Op.FMOD: "torch.fmod", Op.SHL: "<<", Op.SHR: ">>",
}
# What PyTorch computes for arithmetic on two bools: `+` and maximum are `or`, `*` and minimum are `and`.
_BOOL_ARITH = {Op.ADD: Op.OR, Op.MAX: Op.OR, Op.MUL: Op.AND, Op.MIN: Op.AND}


def key(x: Operand) -> DType | type:
    """What promotion sees: an IR dtype (strong) or a Python type (weak)."""
    return x.key if isinstance(x, Typed) else type(x)


def describe(x: Operand) -> str:
    k = key(x)
    return f"a Python {k.__name__}" if isinstance(k, type) else k.name


def cast(n: Node, dtype: DType) -> Node:
    return n if n.dtype is dtype else node(Op.CAST, dtype, n)


def literal(value: Scalar, dtype: DType) -> Node:
    low, high = _INT_RANGE.get(dtype, (None, None))
    if low is not None and not low <= value <= high:
        raise TraceError.here(
            f"the constant {value} does not fit in {dtype.name}",
            "use a smaller constant, or convert the other operand with .to(torch.int64)",
        )
    return const(value, dtype)


def to_node(x: Operand, dtype: DType) -> Node:
    """`x` as an IR node of `dtype`."""
    return cast(x.node, dtype) if isinstance(x, Typed) else literal(x, dtype)


def strong(x: Operand) -> Typed:
    """`x` as a torch function sees a lone Python scalar: as `torch.tensor(x)` would make it."""
    k = key(x)
    if isinstance(k, DType):
        return x
    return Typed(to_node(x, TORCH_DEFAULT[k]))


def result_dtype(operands: tuple[Operand, ...], *, python: bool) -> tuple[DType, type | None]:
    """The dtype of an elementwise result, and its weak type when every operand is weak."""
    keys = [key(x) for x in operands]
    if any(isinstance(k, DType) for k in keys):
        return promote(*keys), None
    if python:
        weak = float if float in keys else int if int in keys else bool
        return WEAK_DTYPE[weak], weak
    return promote(*(TORCH_DEFAULT[k] for k in keys)), None


# -- binary ---------------------------------------------------------------------------------------


def arith(op: Op, a: Operand, b: Operand, *, python: bool = False) -> Typed:
    """ADD SUB MUL TRUEDIV FLOORDIV MOD POW MIN MAX with PyTorch's result dtype."""
    dtype, weak = _arith_dtype(op, a, b, python)
    if dtype.is_bool:
        return _bool_arith(op, a, b)
    if op is Op.POW and dtype.is_int and _negative_int(b):
        raise TraceError.here(
            "integers to negative integer powers are not allowed (as in PyTorch)",
            "use a float exponent, e.g. x ** -1.0",
        )
    left, right = to_node(a, dtype), to_node(b, dtype)
    if op is Op.POW and dtype.is_int:
        _check_int_exponent(right)
    if op in INT_DIVISIONS and dtype.is_int and right.op is Op.CONST and right.arg == 0:
        raise TraceError.here(f"integer {'division' if op is Op.FLOORDIV else 'modulo'} by zero",
                              "divide by a non-zero constant, or by a float for inf / nan")
    return Typed(node(op, dtype, left, right), weak)


def is_int_power(base: Operand, exponent: Operand) -> bool:
    """Whether `base ** exponent` is an integer power (both operands bool or integer)."""
    def integral(x: Operand) -> bool:
        k = key(x)
        return k in (bool, int) or (isinstance(k, DType) and not k.is_float)

    return integral(base) and integral(exponent)


# Integer powers are computed by repeated multiplication, in the kernels as in the reference.
MAX_INT_EXPONENT = 8


def _check_int_exponent(exponent: Node) -> None:
    if exponent.op is not Op.CONST:
        raise TraceError.here(
            "integer ** needs a constant exponent (kernels compute integer powers by multiplication)",
            "convert the base to float for a computed exponent, e.g. x.float() ** y",
        )
    if exponent.arg < 0:
        raise TraceError.here("integers to negative integer powers are not allowed (as in PyTorch)",
                              "use a float exponent, e.g. x ** -1.0")
    if exponent.arg > MAX_INT_EXPONENT:
        raise TraceError.here(
            f"integer ** {exponent.arg}: integer exponents up to {MAX_INT_EXPONENT} are supported",
            "multiply explicitly, or convert the base to float, e.g. x.float() ** 12",
        )


def _negative_int(x: Operand) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x < 0


def _arith_dtype(op: Op, a: Operand, b: Operand, python: bool) -> tuple[DType, type | None]:
    dtype, weak = result_dtype((a, b), python=python)
    if op is Op.TRUEDIV and not dtype.is_float:
        return DType.float32, (weak and float)
    if weak is not None and op is Op.POW and _negative_int(b):
        return DType.float32, float  # Python: 2 ** -1 == 0.5
    if weak is bool:
        return DType.int32, int  # Python: True + True == 2
    return dtype, weak


def _bool_arith(op: Op, a: Operand, b: Operand) -> Typed:
    if op not in _BOOL_ARITH:
        raise TraceError.here(
            f"`{SYMBOL[op]}` on two bool values is not supported (as in PyTorch)",
            "combine conditions with `&`, `|`, `^`, `~`, or convert with .to(torch.int32) first",
        )
    return Typed(node(_BOOL_ARITH[op], DType.bool, to_node(a, DType.bool), to_node(b, DType.bool)))


def logic(op: Op, a: Operand, b: Operand, *, python: bool = False) -> Typed:
    """`&`, `|`, `^`: logical on bools, bitwise on integers."""
    dtype, weak = result_dtype((a, b), python=python)
    if dtype.is_float:
        raise TraceError.here(
            f"`{SYMBOL[op]}` needs bool or integer operands, not {dtype.name}",
            "compare first (e.g. `x > 0`), or convert with .to(torch.int32)",
        )
    return Typed(node(op, dtype, to_node(a, dtype), to_node(b, dtype)), weak)


def shift(op: Op, a: Operand, b: Operand, *, python: bool = False) -> Typed:
    """`<<`, `>>` on integers, in the dtype both promote to (as torch.bitwise_left_shift)."""
    dtype, weak = result_dtype((a, b), python=python)
    if weak is bool:
        dtype, weak = DType.int32, int  # Python: True << True == 2
    if not dtype.is_int:
        raise TraceError.here(
            f"`{SYMBOL[op]}` needs integer operands, not {dtype.name} (as in PyTorch)",
            "convert with .to(torch.int32) first",
        )
    value, count = to_node(a, dtype), to_node(b, dtype)
    if count.op is Op.CONST and 0 <= count.arg < (64 if dtype is DType.int64 else 32) - 1:
        # x << c is x * 2^c (wrapping alike) and x >> c is x // 2^c (both round down): forms the tile
        # analysis reads exactly, as it reads `q // 8`
        power = const(1 << count.arg, dtype)
        return Typed(node(Op.MUL if op is Op.SHL else Op.FLOORDIV, dtype, value, power), weak)
    return Typed(node(op, dtype, value, count), weak)


def fmod(a: Operand, b: Operand) -> Typed:
    """torch.fmod: the remainder with the sign of the dividend. On integers by a constant c it is written
    with Python's `%` (r = a % |c|, less |c| where a < 0 and r != 0), which the tile analysis reads."""
    dtype, _ = result_dtype((a, b), python=False)
    divisor = None if dtype.is_bool else to_node(b, dtype)
    if dtype.is_int and divisor.op is Op.CONST and divisor.arg != 0 and divisor.arg != _INT_RANGE[dtype][0]:
        x, c = Typed(to_node(a, dtype)), abs(divisor.arg)
        r = arith(Op.MOD, x, Typed(const(c, dtype)))
        behind = logic(Op.AND, compare(Op.LT, x, 0), compare(Op.NE, r, 0))
        return where(behind, arith(Op.SUB, r, c), r)
    return arith(Op.FMOD, a, b)


def compare(op: Op, a: Operand, b: Operand, *, python: bool = False) -> Typed:
    dtype, weak = result_dtype((a, b), python=python)
    return Typed(node(op, DType.bool, to_node(a, dtype), to_node(b, dtype)), weak and bool)


def logical(op: Op, a: Operand, b: Operand) -> Typed:
    """torch.logical_and/or/xor: any operand counts as true when non-zero."""
    return Typed(node(op, DType.bool, to_node(a, DType.bool), to_node(b, DType.bool)))


def where(cond: Operand, a: Operand, b: Operand) -> Typed:
    if key(cond) not in (bool, DType.bool):
        raise TraceError.here(
            f"torch.where needs a bool condition, not {describe(cond)}",
            "compare it first, e.g. torch.where(x != 0, a, b)",
        )
    dtype, _ = result_dtype((a, b), python=False)
    return Typed(node(Op.WHERE, dtype, to_node(cond, DType.bool), to_node(a, dtype), to_node(b, dtype)))


def clamp(x: Operand, low: Operand | None, high: Operand | None) -> Typed:
    """torch.clamp: min(max(x, low), high), in the dtype of all three together."""
    bounds = tuple(v for v in (low, high) if v is not None)
    if not bounds:
        raise TraceError.here("torch.clamp needs min or max", "e.g. torch.clamp(x, min=0)")
    dtype, _ = result_dtype((x, *bounds), python=False)
    out = Typed(to_node(x, dtype))
    if low is not None:
        out = arith(Op.MAX, out, Typed(to_node(low, dtype)))
    if high is not None:
        out = arith(Op.MIN, out, Typed(to_node(high, dtype)))
    return out


def div_trunc(a: Operand, b: Operand) -> Typed:
    """torch.div(a, b, rounding_mode="trunc"), from floor division."""
    dtype, _ = result_dtype((a, b), python=False)
    x, y = Typed(to_node(a, dtype)), Typed(to_node(b, dtype))
    if dtype.is_float:
        q = arith(Op.TRUEDIV, x, y)
        return where(compare(Op.LT, q, 0), float_math(Op.CEIL, q), float_math(Op.FLOOR, q))
    floor = arith(Op.FLOORDIV, x, y)
    # floor and trunc differ by one when the division is inexact and the operands' signs differ
    inexact = compare(Op.NE, arith(Op.MOD, x, y), 0)
    signs_differ = compare(Op.NE, compare(Op.LT, x, 0), compare(Op.LT, y, 0))
    return where(logic(Op.AND, inexact, signs_differ), arith(Op.ADD, floor, 1), floor)


# -- unary ----------------------------------------------------------------------------------------


def _numeric(x: Typed, what: str) -> Typed:
    if x.weak is bool:
        return Typed(cast(x.node, DType.int32), int)  # Python: -True == -1
    if x.node.dtype.is_bool:
        raise TraceError.here(
            f"{what} on a bool value is not supported (as in PyTorch)",
            "use `~` to invert a condition, or convert with .to(torch.int32) first",
        )
    return x


def negate(x: Typed) -> Typed:
    x = _numeric(x, "`-`")
    return Typed(node(Op.NEG, x.node.dtype, x.node), x.weak)


def positive(x: Typed) -> Typed:
    return _numeric(x, "unary `+`")


def absolute(x: Typed) -> Typed:
    x = _numeric(x, "abs()")
    return Typed(node(Op.ABS, x.node.dtype, x.node), x.weak)


def sign(x: Typed) -> Typed:
    if x.node.dtype.is_bool:
        return x  # torch.sign of a bool is the bool itself
    return Typed(node(Op.SIGN, x.node.dtype, x.node), x.weak)


def invert(x: Typed) -> Typed:
    """`~`: NOT on bools (also on a Python bool, whose Python `~` is a deprecated int trick)."""
    dtype = x.node.dtype
    if dtype.is_bool:
        return Typed(node(Op.NOT, dtype, x.node), x.weak)
    if dtype.is_float:
        raise TraceError.here(
            f"`~` needs a bool or integer value, not {dtype.name}", "use `~` on conditions such as `~(q_idx < 8)`"
        )
    return Typed(node(Op.XOR, dtype, x.node, const(-1, dtype)), x.weak)


def logical_not(x: Operand) -> Typed:
    return Typed(node(Op.NOT, DType.bool, to_node(x, DType.bool)))


def float_math(op: Op, x: Typed) -> Typed:
    """exp, log, tanh, ...: integer and bool inputs are computed in float32, as torch.exp(int) is."""
    dtype = x.node.dtype
    if op in (Op.FLOOR, Op.CEIL, Op.ROUND) and not dtype.is_float:
        if dtype.is_bool:
            raise TraceError.here(f"torch.{op.name.lower()} of a bool value is not supported (as in PyTorch)")
        return x  # torch.floor of an integer tensor returns it unchanged
    out = dtype if dtype.is_float else DType.float32
    return Typed(node(op, out, cast(x.node, out)))


def convert(x: Typed, dtype: DType) -> Typed:
    """`.to(dtype)`: float to int truncates toward zero, numeric to bool is `!= 0`."""
    return Typed(cast(x.node, dtype))


def full(value: Scalar, dtype: DType) -> Typed:
    """torch.full_like and friends: the fill value converted to `dtype` as torch does."""
    if dtype.is_int and isinstance(value, float):
        value = int(value)  # torch.full_like(int_tensor, 2.5) is 2
    return Typed(literal(value, dtype))
