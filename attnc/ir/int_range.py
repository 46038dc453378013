"""Bounds of integer index expressions over every position a call may have, by interval arithmetic.

Rewrites that compute an int32 expression another way (in float, or as the sum of separately converted
parts) are exact only where the mod's own int32 arithmetic cannot wrap around; this says where that holds.
"""

from __future__ import annotations

from attnc.arguments import MAX_LENGTH
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
