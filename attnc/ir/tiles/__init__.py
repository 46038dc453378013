"""Tile classification: on a box [q_lo, q_hi] x [kv_lo, kv_hi] of query and key indices (b and h fixed), is
no pair allowed (EMPTY), every pair allowed (FULL), or neither (PARTIAL)?

The answer is IR over the tile bounds `var("q_lo")` ... `var("kv_hi")`, b, h, runtime parameters and loads
indexed by b and h only, so the reference interpreter evaluates it for many tiles at once (`classify_grid`)
and the code generator renders it as a scalar test per tile. `tile_test` gives two predicates: `may_true`
(False: the tile is EMPTY) and `may_false` (False: the tile is FULL). They are always SOUND (False only when
the claim holds) and, for the masks below, EXACT (False whenever it holds). `kv_ranges` gives closed-form key
ranges for a query tile. How (an abstract interpretation, IR to IR):

1. Lowering. The mask becomes a formula in negation normal form over affine atoms `sum(c * x) + s >= 0`:
   the unknowns x are q, kv and floor divisions of affine forms (`x % d` is `x - d * (x // d)`); s is
   tile-constant IR (parameters, b/h-only loads). min / max / abs / where / sign become and / or of atoms
   (`e >= min(a, b)` is `e >= a & e >= b`). Integer arithmetic that may wrap around gets a runtime guard
   (its range over the tile stays inside int32; a failed guard makes the tile PARTIAL), and so does a
   parameter divisor (it must be >= 1) and a product of parameters used as a divisor (it must not wrap). An
   int64 tile constant (an int64 tensor read at b or h) is analysed where it lies within +-2**36 (a runtime
   check), so sums with indices cannot wrap int64 either. What is not affine (products of indices, loads
   indexed by q or kv) becomes an unknown with bounds (`load_range`, or its dtype's range) or an unknown atom.
   Floats: a float that is exactly `t * 2**e` for an integer term t (a cast index, `q * 0.5`, `q / 2.0`,
   `floor`, sums, min / max) compares as an integer (`Scaled`): with another exact value directly, with any
   other float w through an integer rounding of w (`t < w` is `t < ceil(w)`: a symbol for a tile-constant
   w, an unknown between the roundings of its bounds otherwise; `x < 40.5` is `x <= 40`). Exactness holds
   where |t| <= 2**precision, or, for one rounding of an integer (`kv.float()`), against any value below
   2**precision (runtime guards and checks, alternatives of which one must hold; the closed-form key ranges
   use those that read the query tile only). Other floats are bounded by interval arithmetic
   (`attnc.ir.float_ranges`), NaN included: NaN compares False, so a tile is FULL by an ordered argument
   only where no value can be NaN.
2. Splitting. A division `z // d` whose variable also occurs elsewhere is made affine by splitting the range
   of z at multiples of d into three boxes: the first period, the whole periods between, the last period;
   in each, z = d * X + r with X and r independent (`(q - kv) // d` first changes variables to z = q - kv).
   A division whose variable occurs nowhere else is a variable of its own; one whose argument stays inside
   a period at compile time is a constant.
3. Separation. Conjuncts over disjoint variables are decided apart (2-D neighbourhoods: rows, columns).
4. Elimination. Each conjunction (of a bounded DNF) is decided by Fourier-Motzkin elimination on symbolic
   bounds. On integers it is exact when one coefficient of every combined pair is +-1 (Pugh's exact shadow).

Exact: boolean combinations of comparisons of piecewise-affine terms whose atoms, after splitting, bound q,
kv and one difference q - kv (with any integer multiples and constants), and divisions `(±v + c) // d`,
`% d` by constants or parameters; the same compared with float constants, parameters and b/h-only float
loads, or written in float arithmetic that stays exact; comparisons of floats each monotone in q and kv
(`slopes[h] * (q - kv) > -4.0`, `q * 0.3 >= kv`). That covers causal masks (any alignment, parameter
offsets), sliding, bidirectional and per-head windows, prefix LM, chunked and block causal, sinks, dilated
and strided windows, and NATTEN neighbourhoods (clamped windows, dilation, stride, causal) in 1-D, 2-D, 3-D.
Sound only: float results a GPU may round differently (quotients, transcendentals, a multiply-add), which
are widened by a few units in the last place; divisions of forms without a ±1 coefficient (`(2 * q) // 3`);
atoms over both q - kv and q + kv (an integer hull the shadows miss); a parameter divisor whose variable is
also used raw, when the tile spans three periods or more (`d * X` is not affine there); parameter divisors
whose products the IR does not show (`q // plane` next to `q // width` for `plane = height * width`
captured separately); splits, DNFs and elimination rows past their budgets (`_SPLIT_DEPTH`,
`_PIECE_BUDGET`, `_DNF_LIMIT`, `_ROW_LIMIT`).
Divisors that are compile-time constants (`int(size)` in a mod) give much smaller tests than parameters.

Indices and tile bounds are assumed to lie in [0, 2**31 - 1] and tile boxes to be non-empty.

The package, one module per concept: `forms` (ranges, affine forms, formulas, piecewise trees, boxes),
`exact_floats` (floats that compare as integers), `lowering` (IR to formulas), `decide` (may a formula
hold in a box: splits, DNF, Fourier-Motzkin), `key_ranges` (the entry points: `tile_test`, `classify_grid`,
`kv_ranges`, `kv_full_range`).
"""

from attnc.ir.tiles.decide import Literal, Rows, Tag
from attnc.ir.tiles.exact_floats import Plan, Scaled
from attnc.ir.tiles.forms import (
    BOOL,
    EMPTY,
    F64,
    FALSE,
    FALSE_N,
    FULL,
    I32,
    I64,
    INDEX_RANGE,
    INT32_MAX,
    INT32_MIN,
    PARTIAL,
    TRUE,
    TRUE_N,
    UNKNOWN,
    And,
    Atom,
    Bounds,
    Box,
    Cond,
    Div,
    Divisor,
    Formula,
    Key,
    Lin,
    LoadRange,
    Max,
    Min,
    Mod,
    Or,
    Periodic,
    Range,
    RangeRule,
    Select,
    TileTest,
    Tree,
    Tri,
    Var,
    all_,
    any_,
    atom,
    atoms_of,
    compare,
    conj,
    disj,
    div,
    divide,
    emit,
    emit_ge0,
    formula_vars,
    free_vars,
    guard_holds,
    key_interval,
    lin_interval,
    lin_of,
    map_atoms,
    mod,
    negate,
    not_,
    number,
    static_range,
    substitute,
    sym,
    t_add,
    t_ge0,
    t_map,
    t_neg,
    t_scale,
    t_selects,
    tree_interval,
)
from attnc.ir.tiles.key_ranges import (
    MAX_ANALYSED_DEPTH,
    MAX_FORMULA_SIZE,
    Bound,
    FullBounds,
    beyond_analysis,
    classify_grid,
    kv_full_range,
    kv_ranges,
    tile_test,
)
from attnc.ir.tiles.lowering import KV, Q, ScaledRule

__all__ = [
    "BOOL",
    "EMPTY",
    "F64",
    "FALSE",
    "FALSE_N",
    "FULL",
    "I32",
    "I64",
    "INDEX_RANGE",
    "INT32_MAX",
    "INT32_MIN",
    "KV",
    "MAX_ANALYSED_DEPTH",
    "MAX_FORMULA_SIZE",
    "PARTIAL",
    "TRUE",
    "TRUE_N",
    "UNKNOWN",
    "And",
    "Atom",
    "Bound",
    "Bounds",
    "Box",
    "Cond",
    "Div",
    "Divisor",
    "Formula",
    "FullBounds",
    "Key",
    "Lin",
    "Literal",
    "LoadRange",
    "Max",
    "Min",
    "Mod",
    "Or",
    "Periodic",
    "Plan",
    "Q",
    "Range",
    "RangeRule",
    "Rows",
    "Scaled",
    "ScaledRule",
    "Select",
    "Tag",
    "TileTest",
    "Tree",
    "Tri",
    "Var",
    "all_",
    "any_",
    "atom",
    "atoms_of",
    "beyond_analysis",
    "classify_grid",
    "compare",
    "conj",
    "disj",
    "div",
    "divide",
    "emit",
    "emit_ge0",
    "formula_vars",
    "free_vars",
    "guard_holds",
    "key_interval",
    "kv_full_range",
    "kv_ranges",
    "lin_interval",
    "lin_of",
    "map_atoms",
    "mod",
    "negate",
    "not_",
    "number",
    "static_range",
    "substitute",
    "sym",
    "t_add",
    "t_ge0",
    "t_map",
    "t_neg",
    "t_scale",
    "t_selects",
    "tile_test",
    "tree_interval",
]
