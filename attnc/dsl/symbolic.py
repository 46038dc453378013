"""`Sym`: the value a mod receives while it is traced.

A Sym stands for one per-(b, h, q, kv) scalar. Python operators and torch functions on it build IR
(through `attnc.dsl.semantics`); anything that needs a concrete Python value (`if`, `int()`, loops)
is an error that names the user's line, except for values computed from closure scalars alone, which
the tracer specialises on (see `Recorder.specialize`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

import torch
import torch.utils._pytree as pytree

from attnc.dsl import semantics as sem
from attnc.dsl import torch_api
from attnc.dsl.errors import TraceError
from attnc.dsl.semantics import Typed
from attnc.ir.ops import Op

_BOOL_HINT = (
    "use torch.where(cond, a, b) for values, `&`, `|`, `~` for conditions, "
    "torch.maximum / torch.minimum for max() / min()"
)
_NUMBER_HINT = "use .to(torch.int32) or .to(torch.float32) to change the dtype of a traced value"
_LOOP_HINT = "a mod sees one (b, h, q_idx, kv_idx) position at a time; write per-position logic with torch.where"


def _binary(build: Callable[..., Typed], op: Op, *, reflected: bool = False) -> Callable[[Sym, Any], Sym]:
    def method(self: Sym, other: Any) -> Sym:
        a, b = self.tracer.lift(self), self.tracer.lift(other)
        if reflected:
            a, b = b, a
        return Sym(build(op, a, b, python=True), self.tracer)

    return method


def _power(*, reflected: bool = False) -> Callable[[Sym, Any], Sym]:
    def method(self: Sym, other: Any) -> Sym:
        base, exponent = self.tracer.lift(self), self.tracer.lift(other)
        if reflected:
            base, exponent = exponent, base
        if isinstance(exponent, Typed) and sem.is_int_power(base, exponent):
            # an integer power needs a constant exponent (and Python's int ** int is a float exactly when the
            # exponent is negative): a closure scalar there becomes a constant
            self.tracer.specialize(exponent.node)
        return Sym(sem.arith(Op.POW, base, exponent, python=True), self.tracer)

    return method


def _unary(build: Callable[[Typed], Typed]) -> Callable[[Sym], Sym]:
    return lambda self: Sym(build(self.typed), self.tracer)


class Sym:
    """A traced scalar. `typed` is its IR value; a closure scalar gets its PARAM slot on first use."""

    __slots__ = ("_leaf", "_typed", "tracer")

    def __init__(self, typed: Typed | None, tracer: Any, leaf: object = None) -> None:
        self._typed = typed
        self._leaf = leaf
        self.tracer = tracer

    @property
    def typed(self) -> Typed:
        if self._typed is None:
            self._typed = self.tracer.param(self._leaf)
        return self._typed

    def __repr__(self) -> str:
        return f"Sym({self.typed.node!r}, weak={self.typed.weak})"

    __hash__ = object.__hash__  # `==` builds IR, so identity is the only usable hash

    # -- what a traced scalar looks like to code that inspects it --------------------------------------

    @property
    def dtype(self) -> torch.dtype:
        return self.typed.node.dtype.torch

    shape = torch.Size([])
    ndim = 0
    device = None  # a traced scalar lives on no device; torch treats device=None as the default

    # -- operators ------------------------------------------------------------------------------------

    __add__ = _binary(sem.arith, Op.ADD)
    __radd__ = _binary(sem.arith, Op.ADD, reflected=True)
    __sub__ = _binary(sem.arith, Op.SUB)
    __rsub__ = _binary(sem.arith, Op.SUB, reflected=True)
    __mul__ = _binary(sem.arith, Op.MUL)
    __rmul__ = _binary(sem.arith, Op.MUL, reflected=True)
    __truediv__ = _binary(sem.arith, Op.TRUEDIV)
    __rtruediv__ = _binary(sem.arith, Op.TRUEDIV, reflected=True)
    __floordiv__ = _binary(sem.arith, Op.FLOORDIV)
    __rfloordiv__ = _binary(sem.arith, Op.FLOORDIV, reflected=True)
    __mod__ = _binary(sem.arith, Op.MOD)
    __rmod__ = _binary(sem.arith, Op.MOD, reflected=True)
    __pow__ = _power()
    __rpow__ = _power(reflected=True)
    __and__ = _binary(sem.logic, Op.AND)
    __rand__ = _binary(sem.logic, Op.AND, reflected=True)
    __or__ = _binary(sem.logic, Op.OR)
    __ror__ = _binary(sem.logic, Op.OR, reflected=True)
    __xor__ = _binary(sem.logic, Op.XOR)
    __rxor__ = _binary(sem.logic, Op.XOR, reflected=True)
    __lshift__ = _binary(sem.shift, Op.SHL)
    __rlshift__ = _binary(sem.shift, Op.SHL, reflected=True)
    __rshift__ = _binary(sem.shift, Op.SHR)
    __rrshift__ = _binary(sem.shift, Op.SHR, reflected=True)
    __lt__ = _binary(sem.compare, Op.LT)
    __le__ = _binary(sem.compare, Op.LE)
    __gt__ = _binary(sem.compare, Op.GT)
    __ge__ = _binary(sem.compare, Op.GE)
    __eq__ = _binary(sem.compare, Op.EQ)  # type: ignore[assignment]
    __ne__ = _binary(sem.compare, Op.NE)  # type: ignore[assignment]
    __neg__ = _unary(sem.negate)
    __pos__ = _unary(sem.positive)
    __abs__ = _unary(sem.absolute)
    __invert__ = _unary(sem.invert)

    # -- torch functions and Tensor methods --------------------------------------------------------------

    @classmethod
    def __torch_function__(cls, func: Callable, types: tuple, args: tuple = (), kwargs: dict | None = None):
        tracer = _find_tracer(args, kwargs or {})
        many = next((x for x in pytree.tree_leaves((args, kwargs)) if getattr(x, "is_many", False)), None)
        if many is not None:  # a vector among the arguments (attnc.dsl.vector): reduced or elementwise
            return many.dispatch(func, args, kwargs or {})
        if func is torch.Tensor.__getitem__:  # a scalar, or a read with dimensions left to index
            return tracer.read(*args)
        return Sym(torch_api.dispatch(tracer, func, args, kwargs or {}), tracer)

    def __getattr__(self, name: str) -> Callable[..., Sym]:
        """`x.exp()`, `x.clamp(min=0)`, `x.to(torch.int32)`: Tensor methods, dispatched like torch.exp."""
        if name.startswith("_"):
            raise AttributeError(name)
        if name in ("item", "tolist"):
            return lambda: self._concrete(f".{name}() needs a concrete number, but this is a traced value",
                                          _NUMBER_HINT)
        func = getattr(torch.Tensor, name, None)
        if not callable(func):
            raise AttributeError(f"traced values have no attribute {name!r}")
        return lambda *args, **kwargs: Sym.__torch_function__(func, (Sym,), (self, *args), kwargs)

    # -- Python protocols that need a concrete value -------------------------------------------------------

    def _concrete(self, problem: str, hint: str) -> NoReturn:
        self.tracer.specialize(self.typed.node)  # returns only if the value depends on the inputs
        raise TraceError.here(problem, hint)

    def __bool__(self) -> bool:
        self._concrete("`if`, `and`, `or`, `not` and bool() need a concrete value, but this is a traced value",
                       _BOOL_HINT)

    def __int__(self) -> int:
        self._concrete("int() needs a concrete number, but this is a traced value", _NUMBER_HINT)

    def __float__(self) -> float:
        self._concrete("float() needs a concrete number, but this is a traced value", _NUMBER_HINT)

    def __index__(self) -> int:
        self._concrete(
            "a traced value cannot be used where Python needs a plain int (list or tuple index, range(), slice)",
            "put the values in a captured torch tensor and index it, e.g. table[q_idx - kv_idx]",
        )

    def __iter__(self) -> NoReturn:
        raise TraceError.here("loops over traced values are not supported", _LOOP_HINT)

    def __len__(self) -> NoReturn:
        raise TraceError.here("len() of a traced value is not supported: loops over traced values are not "
                              "supported", _LOOP_HINT)

    def __getitem__(self, index: object) -> NoReturn:
        raise TraceError.here("a traced value is a scalar and cannot be indexed",
                              "index the captured tensor instead, e.g. bias[h, q_idx]")


def _find_tracer(args: tuple, kwargs: dict) -> Any:
    """The tracer of the first Sym among the arguments (index tuples included)."""
    for value in (*args, *kwargs.values()):
        items = value if isinstance(value, tuple | list) else (value,)
        for item in items:
            if isinstance(item, Sym):
                return item.tracer
    raise TypeError("a traced-value operation was dispatched without a traced value")
