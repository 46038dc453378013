"""The torch functions and Tensor methods attention mods may call on traced values.

`TABLE` maps each supported torch callable (as `__torch_function__` receives it) to a handler with the
same signature plus a leading `tracer`, which turns arguments into IR operands (`tracer.lift`) and reads
captured tensors (`tracer.load`). Anything else is rejected with the list of what is supported.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import torch

from attnc.dsl import pointwise
from attnc.dsl import semantics as sem
from attnc.dsl.errors import TraceError
from attnc.dsl.semantics import Typed
from attnc.ir.dtypes import DType
from attnc.ir.ops import Op

Handler = Callable[..., Typed]
_NARROW_INTS = (torch.int8, torch.int16, torch.uint8)


def target_dtype(dtype: torch.dtype) -> DType:
    """The IR dtype for a `.to(dtype)` target."""
    if dtype in _NARROW_INTS:
        raise TraceError.here(
            f"converting to {dtype} is not supported: attention mods compute with 32- and 64-bit integers",
            "use .to(torch.int32)",
        )
    try:
        return DType.from_torch(dtype)
    except TypeError as exc:
        raise TraceError.here(str(exc)) from None


# -- handler factories ------------------------------------------------------------------------------


def _binary(build: Callable[..., Typed], op: Op, *, reflected: bool = False) -> Handler:
    def handler(tracer: Any, input: object, other: object) -> Typed:
        a, b = tracer.lift(input), tracer.lift(other)
        return build(op, b, a) if reflected else build(op, a, b)

    return handler


def _power(*, reflected: bool = False) -> Handler:
    """torch.pow: an integer power needs a constant exponent, so a closure scalar there becomes one."""
    def handler(tracer: Any, input: object, other: object) -> Typed:
        base, exponent = tracer.lift(input), tracer.lift(other)
        if reflected:
            base, exponent = exponent, base
        if isinstance(exponent, Typed) and sem.is_int_power(base, exponent):
            tracer.specialize(exponent.node)
        return sem.arith(Op.POW, base, exponent)

    return handler


def _unary(build: Callable[[Typed], Typed]) -> Handler:
    return lambda tracer, input: build(sem.strong(tracer.lift(input)))


def _math(op: Op) -> Handler:
    return _unary(lambda x: sem.float_math(op, x))


def _conversion(dtype: torch.dtype) -> Handler:
    return lambda tracer, self: sem.convert(sem.strong(tracer.lift(self)), DType.from_torch(dtype))


def _like(tracer: Any, input: object, fill_value: object, dtype: torch.dtype | None) -> Typed:
    """A value shaped like `input` (a scalar, like everything here) filled with `fill_value`."""
    target = target_dtype(dtype) if dtype is not None else sem.strong(tracer.lift(input)).node.dtype
    fill = tracer.lift(fill_value)
    if isinstance(fill, Typed):
        return sem.convert(fill, target)
    return sem.full(fill, target)


def _full_like(tracer: Any, input: object, fill_value: object, *, dtype: torch.dtype | None = None,
               device: object = None) -> Typed:
    return _like(tracer, input, fill_value, dtype)


def _constant_like(value: int) -> Handler:
    """zeros_like / ones_like."""

    def handler(tracer: Any, input: object, *, dtype: torch.dtype | None = None, device: object = None) -> Typed:
        return _like(tracer, input, value, dtype)

    return handler


def _scalar_size(size: object) -> None:
    if tuple(size) != ():
        raise TraceError.here(f"only zero-dim values exist in attention mods, not size {tuple(size)}",
                              "use size=()")


def _new_full(tracer: Any, self: object, size: object, fill_value: object, *,
              dtype: torch.dtype | None = None, device: object = None) -> Typed:
    _scalar_size(size)
    return _like(tracer, self, fill_value, dtype)


def _new_constant(value: int) -> Handler:
    """Tensor.new_zeros / new_ones, as FlexAttention's noop_mask and and_masks use them."""

    def handler(tracer: Any, self: object, size: object, *, dtype: torch.dtype | None = None,
                device: object = None) -> Typed:
        _scalar_size(size)
        return _like(tracer, self, value, dtype)

    return handler


# -- handlers with their own signatures -----------------------------------------------------------------


def _where(tracer: Any, condition: object, input: object, other: object) -> Typed:
    return sem.where(tracer.lift(condition), tracer.lift(input), tracer.lift(other))


def _tensor_where(tracer: Any, self: object, condition: object, other: object) -> Typed:
    return _where(tracer, condition, self, other)


def _div(tracer: Any, input: object, other: object, *, rounding_mode: str | None = None) -> Typed:
    a, b = tracer.lift(input), tracer.lift(other)
    if rounding_mode is None:
        return sem.arith(Op.TRUEDIV, a, b)
    if rounding_mode == "floor":
        return sem.arith(Op.FLOORDIV, a, b)
    if rounding_mode == "trunc":
        return sem.div_trunc(a, b)
    raise TraceError.here(f"unknown rounding_mode {rounding_mode!r}", 'use None, "floor" or "trunc"')


def _min_max(op: Op) -> Handler:
    """torch.min / torch.max with two values; with a dim they are reductions, which mods do not have."""

    def handler(tracer: Any, input: object, other: object = None) -> Typed:
        if not isinstance(other, torch.Tensor) and not hasattr(other, "__torch_function__"):
            name = "minimum" if op is Op.MIN else "maximum"
            raise TraceError.here(
                f"torch.{name[:3]} over a dimension is not supported: traced values are scalars",
                f"use torch.{name}(a, b) for the elementwise {name}",
            )
        return sem.arith(op, tracer.lift(input), tracer.lift(other))

    return handler


def _clamp(tracer: Any, input: object, min: object = None, max: object = None) -> Typed:
    low = None if min is None else tracer.lift(min)
    high = None if max is None else tracer.lift(max)
    return sem.clamp(tracer.lift(input), low, high)


def _clamp_min(tracer: Any, input: object, min: object) -> Typed:
    return _clamp(tracer, input, min=min)


def _clamp_max(tracer: Any, input: object, max: object) -> Typed:
    return _clamp(tracer, input, max=max)


def _logical(op: Op) -> Handler:
    return lambda tracer, input, other: sem.logical(op, tracer.lift(input), tracer.lift(other))


def _logical_not(tracer: Any, input: object) -> Typed:
    return sem.logical_not(tracer.lift(input))


def _to(tracer: Any, self: object, *args: object, dtype: torch.dtype | None = None, device: object = None,
        non_blocking: bool = False, copy: bool = False) -> Typed:
    """`.to(dtype)`, `.to(other)` and `.to(device, dtype)`; devices mean nothing for a traced scalar."""
    for arg in args:
        if isinstance(arg, torch.dtype):
            dtype = arg
        elif isinstance(arg, torch.Tensor) or hasattr(arg, "__torch_function__"):
            dtype = arg.dtype
    value = sem.strong(tracer.lift(self))
    return value if dtype is None else sem.convert(value, target_dtype(dtype))


def _getitem(tracer: Any, self: torch.Tensor, index: object) -> Typed:
    return tracer.load(self, index)


# -- the table ----------------------------------------------------------------------------------------

_FLOAT_MATH = {
    "exp": Op.EXP, "exp2": Op.EXP2, "log": Op.LOG, "log2": Op.LOG2, "log1p": Op.LOG1P, "sqrt": Op.SQRT,
    "rsqrt": Op.RSQRT, "tanh": Op.TANH, "sigmoid": Op.SIGMOID, "sin": Op.SIN, "cos": Op.COS,
    "floor": Op.FLOOR, "ceil": Op.CEIL,
}
_ARITH = {
    "add": Op.ADD, "sub": Op.SUB, "subtract": Op.SUB, "mul": Op.MUL, "multiply": Op.MUL,
    "true_divide": Op.TRUEDIV, "floor_divide": Op.FLOORDIV, "remainder": Op.MOD, "pow": Op.POW,
    "minimum": Op.MIN, "maximum": Op.MAX,
}
_COMPARE = {"eq": Op.EQ, "ne": Op.NE, "lt": Op.LT, "le": Op.LE, "gt": Op.GT, "ge": Op.GE}
_BITWISE = {"bitwise_and": Op.AND, "bitwise_or": Op.OR, "bitwise_xor": Op.XOR}
_CONVERSIONS = {
    "float": torch.float32, "double": torch.float64, "half": torch.float16, "bfloat16": torch.bfloat16,
    "int": torch.int32, "long": torch.int64, "bool": torch.bool,
}


def _by_name() -> dict[str, Handler]:
    """Handlers for names that exist both as torch.<name> and as Tensor.<name>."""
    out: dict[str, Handler] = {name: _math(op) for name, op in _FLOAT_MATH.items()}
    out |= {name: _binary(sem.arith, op) for name, op in _ARITH.items() if op is not Op.POW}
    out["pow"] = _power()
    out |= {name: _binary(sem.compare, op) for name, op in _COMPARE.items()}
    out |= {name: _binary(sem.logic, op) for name, op in _BITWISE.items()}
    out |= {"logical_and": _logical(Op.AND), "logical_or": _logical(Op.OR), "logical_xor": _logical(Op.XOR)}
    out |= {"logical_not": _logical_not, "bitwise_not": _unary(sem.invert), "div": _div, "divide": _div}
    out |= {"abs": _unary(sem.absolute), "absolute": _unary(sem.absolute), "neg": _unary(sem.negate),
            "negative": _unary(sem.negate), "sign": _unary(sem.sign)}
    out |= {"clamp": _clamp, "clip": _clamp, "clamp_min": _clamp_min, "clamp_max": _clamp_max}
    out |= {"min": _min_max(Op.MIN), "max": _min_max(Op.MAX)}
    out |= pointwise.BY_NAME
    return out


def _build_table() -> dict[Callable, Handler]:
    table: dict[Callable, Handler] = {}
    for name, handler in _by_name().items():
        for owner in (torch, torch.Tensor):
            if hasattr(owner, name):
                table[getattr(owner, name)] = handler
    table |= {torch.where: _where, torch.Tensor.where: _tensor_where, torch.Tensor.__getitem__: _getitem}
    table |= {torch.special.expit: _math(Op.SIGMOID), torch.special.exp2: _math(Op.EXP2)}
    table |= {torch.zeros_like: _constant_like(0), torch.ones_like: _constant_like(1), torch.full_like: _full_like}
    table |= {torch.Tensor.new_zeros: _new_constant(0), torch.Tensor.new_ones: _new_constant(1),
              torch.Tensor.new_full: _new_full, torch.Tensor.to: _to}
    table |= {getattr(torch.Tensor, name): _conversion(dtype) for name, dtype in _CONVERSIONS.items()}
    table |= _dunders() | pointwise.DUNDERS | pointwise.FUNCTIONS
    return table


def _dunders() -> dict[Callable, Handler]:
    """Operators with a real tensor on the left reach us as these Tensor methods."""
    return {
        torch.Tensor.__floordiv__: _binary(sem.arith, Op.FLOORDIV),
        torch.Tensor.__rfloordiv__: _binary(sem.arith, Op.FLOORDIV, reflected=True),
        torch.Tensor.__pow__: _power(),
        torch.Tensor.__rpow__: _power(reflected=True),
        torch.Tensor.__mod__: _binary(sem.arith, Op.MOD),
        torch.Tensor.__and__: _binary(sem.logic, Op.AND),
        torch.Tensor.__or__: _binary(sem.logic, Op.OR),
        torch.Tensor.__xor__: _binary(sem.logic, Op.XOR),
        torch.rsub: _binary(sem.arith, Op.SUB, reflected=True),
        # `tensor == traced` reaches us as Tensor.__eq__ (not torch.eq)
        **{getattr(torch.Tensor, f"__{name}__"): _binary(sem.compare, op) for name, op in _COMPARE.items()},
    }


TABLE: types.MappingProxyType[Callable, Handler] = types.MappingProxyType(_build_table())


def _public_name(func: Callable) -> str:
    return torch.overrides.resolve_name(func) or getattr(func, "__name__", repr(func))


SUPPORTED = ", ".join(sorted({n for n in map(_public_name, TABLE) if not n.startswith("torch.Tensor.")}))


def dispatch(tracer: Any, func: Callable, args: tuple, kwargs: dict) -> Typed:
    """Apply the handler for `func`, or explain that it is not supported."""
    handler = TABLE.get(func)
    if handler is None:
        raise TraceError.here(
            f"{_public_name(func)} is not supported in attention mods",
            f"supported: {SUPPORTED}, the matching Tensor methods, and .to(dtype), .float(), .int(), ...",
        )
    return handler(tracer, *args, **kwargs)


__all__ = ["SUPPORTED", "TABLE", "dispatch", "target_dtype"]
