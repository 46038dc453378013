"""Float values that are exactly an integer times a power of two (`Scaled`), and what comparing them as
integers relies on (`Plan`): how floats keep the analysis exact."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

from attnc.ir.dtypes import DType
from attnc.ir.node import Node
from attnc.ir.tiles.forms import (
    _EXP_LIMIT,
    _MAGNITUDE,
    _MANTISSA_LIMIT,
    _PRECISION,
    Box,
    Lin,
    Max,
    Min,
    Select,
    Tree,
    all_,
    guard_holds,
    lin_interval,
    t_scale,
    tree_interval,
)

# -- exact float values ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Scaled:
    """A float value that is exactly `tree * 2**exp` (exp <= 0) for an integer tree wherever the `guards`
    (tile-constant forms >= 0) hold, |tree| <= limit there: comparing such values is comparing integers
    (`q * 0.5 >= kv` is `q >= 2 * kv`; `|q - kv| < 40.5` is `2 * |q - kv| < 81`). `rounded`: the value is
    also, guards or not, `round(tree) * 2**exp` for one rounding of the exact integer to that float type
    (a cast of an integer index), which compares exactly with any value smaller than 2**precision."""

    tree: Tree
    exp: int
    guards: tuple[Lin, ...] = ()
    limit: int = 0
    rounded: DType | None = None

    def scaled_by(self, sign: int, exp: int) -> Scaled:
        """The value times sign * 2**exp (exact: a power of two scales a float exactly)."""
        return dataclasses.replace(self, tree=t_scale(self.tree, sign), exp=self.exp + exp)


# a cast from the first to the second keeps every value (and so a rounding done in the first)
_WIDENS = {(DType.float16, DType.float32), (DType.float16, DType.float64), (DType.bfloat16, DType.float32),
           (DType.bfloat16, DType.float64), (DType.float32, DType.float64)}


def _dyadic(v: float) -> tuple[int, int] | None:
    """`v` as `m * 2**e` (e <= 0) with an integer m small enough to compute with, or None."""
    if not math.isfinite(v):
        return None
    m, d = v.as_integer_ratio()  # d is a power of two
    e = d.bit_length() - 1
    if d == 1:
        return (m, 0) if abs(m) <= _MAGNITUDE else None
    return (m, -e) if abs(m) <= _MANTISSA_LIMIT and e <= _EXP_LIMIT else None


def _align(a: Scaled, b: Scaled) -> tuple[Tree, Tree, int]:
    """Both values as integer trees over a common power of two."""
    e = min(a.exp, b.exp)
    return t_scale(a.tree, 2 ** (a.exp - e)), t_scale(b.tree, 2 ** (b.exp - e)), e


def _joined(kind: Callable[[Tree, Tree], Tree], a: Scaled, b: Scaled) -> Scaled:
    """A value that is one of a and b (min, max, a select): exact where both are; one rounding where both
    are the same rounding (min(round(x), round(y)) = round(min(x, y)): rounding is monotone) or the other
    is exact and small enough to be its own rounding."""
    ta, tb, e = _align(a, b)
    limit = max(a.limit * 2 ** (a.exp - e), b.limit * 2 ** (b.exp - e))
    return Scaled(kind(ta, tb), e, a.guards + b.guards, limit, _common_rounding(a, b))


def _common_rounding(a: Scaled, b: Scaled) -> DType | None:
    if a.rounded is b.rounded:
        return a.rounded
    for x, y in ((a, b), (b, a)):
        if x.rounded is not None and not y.guards and y.rounded is None and y.limit <= 2 ** _PRECISION[x.rounded]:
            return x.rounded
    return None


@dataclasses.dataclass(frozen=True)
class Plan:
    """What an exact comparison relies on: guards (forms >= 0), checks (bool IR) on the tile; `top`: where a
    threshold compared with the exact side may be clamped."""

    guards: tuple[Lin, ...] = ()
    checks: tuple[Node, ...] = ()
    top: int = 0


def _plan_holds(plan: Plan) -> Node:
    return all_([*(guard_holds(g) for g in plan.guards), *plan.checks])


def _plan_cost(plan: Plan) -> tuple[bool, int]:
    """Prefer plans whose conditions do not read the key tile (closed-form key ranges stay one range), then
    fewer conditions."""
    kv = any("kv" in k.deps for g in plan.guards for k in g.terms) or any("kv" in c.deps for c in plan.checks)
    return kv, len(plan.guards) + len(plan.checks)


def _tree_bounds(t: Tree, box: Box, upper: bool) -> list[Lin]:
    """Tile-constant forms whose largest (`upper`; else smallest: the least) bounds t: a max is at most k
    where each of its parts is, so guards on the parts stay affine (`|q - kv| <= k` is two guards)."""
    if isinstance(t, Lin):
        return [lin_interval(t, box)[1 if upper else 0]]
    if isinstance(t, Select):
        return _tree_bounds(t.if_true, box, upper) + _tree_bounds(t.if_false, box, upper)
    if isinstance(t, Max if upper else Min):
        return [b for p in t.parts for b in _tree_bounds(p, box, upper)]
    return [tree_interval(t, box)[1 if upper else 0]]


def _constant_tree(t: Tree) -> int | None:
    return t.const if isinstance(t, Lin) and not t.terms else None
