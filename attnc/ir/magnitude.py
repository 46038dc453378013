"""A compile-time bound on the magnitude of a float expression, and whether it can be NaN.

The backward kernels multiply the score mod's derivative dz/dscore by p, which is 0 at masked pairs; where the
derivative may be infinite or NaN there (`score / (kv - q)` on the diagonal), 0 * inf would be NaN, so the
kernels select 0 where p is 0, at two instructions per score element. `finite_everywhere` proves the select
unnecessary for derivatives that stay finite whatever the score: a softcap's `1 - tanh(score / cap)^2`.

The inputs (the scaled score, parameters, captured tensors) are taken to be NaN-free but of any magnitude,
infinities included; integers convert to finite floats. A bound above the largest finite value of a node's
dtype counts as infinite, so an overflow anywhere is never hidden by a later division.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from attnc.ir.node import Node
from attnc.ir.ops import Op


@dataclasses.dataclass(frozen=True)
class Magnitude:
    """Every value is at most `bound` in magnitude (inf: unknown or possibly infinite); `nan_free`: no value is
    NaN."""

    bound: float
    nan_free: bool

    @property
    def finite(self) -> bool:
        return self.nan_free and self.bound < math.inf


UNKNOWN = Magnitude(math.inf, False)
_INPUT = Magnitude(math.inf, True)  # the score, a parameter, a captured float: NaN-free, any magnitude
_INT = Magnitude(2.0**63, True)  # an integer or a bool, converted to a float
# functions bounded whatever their argument, and NaN-free on infinities (tanh(inf) = 1)
_SATURATING = {Op.TANH: 1.0, Op.SIGMOID: 1.0, Op.ERF: 1.0, Op.ATAN: math.pi / 2, Op.SIGN: 1.0}
_PERIODIC = {Op.SIN, Op.COS}  # bounded, but NaN on an infinite argument


def finite_everywhere(n: Node, *, params_finite_nonzero: bool = False) -> bool:
    """True when `n` is finite and not NaN for every input (see the module docstring for what inputs are);
    with `params_finite_nonzero`, for every input where the runtime parameters are finite and not zero (a
    softcap's cap, a temperature: what a variant divides by)."""
    return magnitude(n, params_finite_nonzero=params_finite_nonzero).finite


def magnitude(n: Node, memo: dict[Node, Magnitude] | None = None, *,
              params_finite_nonzero: bool = False) -> Magnitude:
    memo = {} if memo is None else memo
    if n not in memo:
        if not n.dtype.is_float:
            memo[n] = _INT
        else:
            args = [magnitude(s, memo, params_finite_nonzero=params_finite_nonzero) for s in n.src]
            found = _magnitude(n, args, params_finite_nonzero)
            largest = float(torch.finfo(n.dtype.torch).max)
            memo[n] = found if found.bound <= largest else Magnitude(math.inf, found.nan_free)
    return memo[n]


def _magnitude(n: Node, args: list[Magnitude], params_finite_nonzero: bool) -> Magnitude:
    op = n.op
    if op is Op.CONST:
        value = float(n.arg)
        return Magnitude(abs(value), True) if not math.isnan(value) else UNKNOWN
    if op in (Op.SCORE, Op.PARAM, Op.LOAD):
        return _INPUT
    if op in _SATURATING:
        return Magnitude(_SATURATING[op], args[0].nan_free)
    if op in _PERIODIC:
        return Magnitude(1.0, args[0].finite)
    if op in (Op.NEG, Op.ABS, Op.CAST):
        return args[0]
    if op in (Op.ADD, Op.SUB):  # inf - inf needs two operands that may be infinite
        a, b = args
        return Magnitude(a.bound + b.bound, a.nan_free and b.nan_free and min(a.bound, b.bound) < math.inf)
    if op is Op.MUL:  # 0 * inf needs an operand that may be infinite
        a, b = args
        return Magnitude(a.bound * b.bound, a.finite and b.finite)
    if op is Op.TRUEDIV and n.src[1].op is Op.CONST:
        divisor = abs(float(n.src[1].arg))
        if divisor >= 2.0**-64 and math.isfinite(divisor):
            return Magnitude(args[0].bound / divisor, args[0].nan_free)
        return UNKNOWN
    if op is Op.TRUEDIV and n.src[1].op is Op.PARAM and params_finite_nonzero:
        return Magnitude(math.inf, args[0].nan_free)  # x / p: NaN only where x is, p being finite and not 0
    if op in (Op.MIN, Op.MAX):
        return Magnitude(max(a.bound for a in args), all(a.nan_free for a in args))
    if op is Op.WHERE:
        return Magnitude(max(args[1].bound, args[2].bound), args[1].nan_free and args[2].nan_free)
    return UNKNOWN
