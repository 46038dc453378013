"""Bounds of integer index expressions over every position a call may have, by interval arithmetic.

Rewrites that compute an int32 expression another way (in float, or as the sum of separately converted
parts) are exact only where the mod's own int32 arithmetic cannot wrap around; this says where that holds.
"""

from __future__ import annotations

from attnc.arguments import MAX_LENGTH
from attnc.ir.dtypes import DType
from attnc.ir.node import Node
from attnc.ir.ops import Op

INT32 = (-(2**31), 2**31 - 1)
# b and h: the launch grid's second dimension is B * Hq, at most 65535 on CUDA
_VAR_RANGE = {"q": (0, MAX_LENGTH - 1), "kv": (0, MAX_LENGTH - 1), "b": (0, 65535), "h": (0, 65535)}


def int_range(n: Node) -> tuple[int, int] | None:
    """[lo, hi] of an integer expression of the indices and integer constants, computed without wrapping;
    None where it reads anything else (a parameter, a tensor) or uses another operation."""
    if n.op is Op.VAR:
        return _VAR_RANGE.get(n.arg)
    if n.op is Op.CONST:
        return (n.arg, n.arg) if isinstance(n.arg, int) and not isinstance(n.arg, bool) else None
    if n.op not in (Op.ADD, Op.SUB, Op.MUL, Op.NEG):
        return None
    parts = [int_range(s) for s in n.src]
    if any(p is None for p in parts):
        return None
    if n.op is Op.NEG:
        lo, hi = parts[0]  # type: ignore[misc]
        return -hi, -lo
    (alo, ahi), (blo, bhi) = parts  # type: ignore[misc]
    if n.op is Op.ADD:
        return alo + blo, ahi + bhi
    if n.op is Op.SUB:
        return alo - bhi, ahi - blo
    products = [x * y for x in (alo, ahi) for y in (blo, bhi)]
    return min(products), max(products)


def fits_int32(n: Node) -> bool:
    """Whether the int32 expression `n` never wraps around for any position a call may have."""
    found = int_range(n)
    return found is not None and INT32[0] <= found[0] and found[1] <= INT32[1]


def value_bounds(n: Node) -> tuple[int, int]:
    """Bounds of the value the int32 expression `n` takes, wrap-around included: its `int_range` where that
    fits int32; for floor division, remainders (Python semantics) and min / max, what their operands' bounds
    allow; all of int32 elsewhere (a parameter, a tensor element)."""
    exact = int_range(n)
    if exact is not None and INT32[0] <= exact[0] and exact[1] <= INT32[1]:
        return exact
    if n.dtype is not DType.int32:
        return INT32
    if n.op in (Op.MIN, Op.MAX):
        (alo, ahi), (blo, bhi) = (value_bounds(s) for s in n.src)
        return (min(alo, blo), min(ahi, bhi)) if n.op is Op.MIN else (max(alo, blo), max(ahi, bhi))
    if n.op is Op.FLOORDIV:
        alo, ahi = value_bounds(n.src[0])
        # |a // d| <= |a| for every nonzero d; only INT32_MIN // -1 leaves int32
        if alo > INT32[0]:
            largest = max(-alo, ahi)
            return -largest, largest
    if n.op is Op.MOD:
        # a % d has d's sign and |a % d| < |d| <= 2^31; for a >= 0 it is at most a
        alo, ahi = value_bounds(n.src[0])
        return INT32[0] + 1, ahi if alo >= 0 else INT32[1]
    return INT32
