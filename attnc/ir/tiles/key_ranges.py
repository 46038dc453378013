"""The public entry points: the tile test (`tile_test`, `classify_grid`) and the closed-form key ranges
of a query tile (`kv_ranges`, `kv_full_range`)."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor

from attnc.ir.interpret import Env, evaluate
from attnc.ir.node import Node, const, node, var
from attnc.ir.ops import COMPARE, Op
from attnc.ir.simplify import index_algebra
from attnc.ir.tiles.decide import _Decider
from attnc.ir.tiles.forms import (
    EMPTY,
    FALSE,
    FALSE_N,
    FULL,
    I32,
    I64,
    INT32_MAX,
    INT32_MIN,
    PARTIAL,
    TRUE_N,
    And,
    Atom,
    Bounds,
    Box,
    Cond,
    Div,
    Divisor,
    Formula,
    Lin,
    LoadRange,
    Mod,
    Or,
    TileTest,
    Tri,
    Var,
    _cast,
    _extreme,
    all_,
    any_,
    div,
    emit,
    emit_ge0,
    free_vars,
    guard_holds,
    lin_of,
    negate,
    not_,
    number,
    static_range,
    sym,
)
from attnc.ir.tiles.lowering import KV, Q, _Lowering

# -- public entry points -----------------------------------------------------------------------------------

# The analysis recurses through the mask's structure, and `^`, `where` and comparisons of conditions copy
# their operands into its formulas. A mask nested deeper than MAX_ANALYSED_DEPTH, or whose formula would
# grow past MAX_FORMULA_SIZE atoms (a chain of `^`), gets the answers that assume nothing, which are always
# sound: every tile partial, every key possible, no full range.
MAX_ANALYSED_DEPTH = 64
MAX_FORMULA_SIZE = 512


@functools.lru_cache(maxsize=256)
def beyond_analysis(mask: Node) -> bool:
    """Whether `mask` is too deep or too large for the tile analysis (computed without recursion)."""
    if mask.depth() > MAX_ANALYSED_DEPTH:
        return True
    size: dict[Node, int] = {}
    for n in mask.walk():
        parts = [size[s] for s in n.src if s.dtype.is_bool]
        copies = n.op is Op.XOR or (n.op in COMPARE and bool(parts)) or (n.op is Op.WHERE and n.dtype.is_bool)
        size[n] = min(MAX_FORMULA_SIZE + 1, (2 if copies else 1) * (sum(parts) or 1))
    return size[mask] > MAX_FORMULA_SIZE


def tile_test(mask: Node, *, load_range: LoadRange | None = None) -> TileTest:
    """The tile classification of `mask` as IR over b, h, the tile bounds, parameters and b/h-only loads.

    `load_range(load)` may give IR bounds `(lo, hi)` over the current tile for a LOAD whose indices move with
    q or kv (bool loads: (all, any)); without one such a load is unknown, which is sound."""
    if beyond_analysis(mask):
        return TileTest(TRUE_N, TRUE_N)
    return _tile_test(mask) if load_range is None else _build_tile_test(mask, load_range)


@functools.lru_cache(maxsize=256)
def _tile_test(mask: Node) -> TileTest:
    return _build_tile_test(mask, None)


def _build_tile_test(mask: Node, load_range: LoadRange | None) -> TileTest:
    low = _Lowering(mask, load_range)
    f = low.formula(mask)
    overflow = not_(low.ok())
    decider = _Decider()
    may_true = any_([decider.may_true(f, low.box), overflow])
    may_false = any_([decider.may_true(negate(f), low.box), overflow])
    return TileTest(index_algebra(may_true), index_algebra(may_false))


def classify_grid(mask: Node, *, b: Tensor, h: Tensor, q_lo: Tensor, q_hi: Tensor, kv_lo: Tensor, kv_hi: Tensor,
                  tensors: Sequence[Tensor] = (), params: Sequence[int | float] = (),
                  load_range: LoadRange | None = None) -> Tensor:
    """EMPTY / PARTIAL / FULL (int8) for every tile of the broadcast inputs, by the reference interpreter."""
    test = tile_test(mask, load_range=load_range)
    env = Env(b=b, h=h, q=q_lo, kv=kv_lo, tensors=tensors, params=params, q_lo=q_lo, q_hi=q_hi, kv_lo=kv_lo,
              kv_hi=kv_hi)
    shape = torch.broadcast_shapes(*(t.shape for t in (b, h, q_lo, q_hi, kv_lo, kv_hi)))
    may_true = evaluate(test.may_true, env).expand(shape)
    may_false = evaluate(test.may_false, env).expand(shape)
    out = torch.full(shape, PARTIAL, dtype=torch.int8, device=q_lo.device)
    out[~may_false] = FULL
    out[~may_true] = EMPTY
    return out


# -- closed-form key ranges ----------------------------------------------------------------------------------

Bound = Lin | None  # None: unbounded on that side


def kv_ranges(mask: Node) -> list[tuple[Node | None, Node | None]]:
    """Inclusive int32 key bounds for a query tile [q_lo, q_hi]: every key any query of the tile may attend
    to lies in one of the ranges (None: unbounded on that side). One range per top-level disjunct of the
    mask, merged where the union of two is one range; no ranges when the mask is constant False.

    Bounds come from conjunctions of atoms affine in kv (or in `(kv + c) // d`) whose other terms move
    monotonically with q (q, `q // d`), evaluated at whichever end of the query tile loosens them."""
    if beyond_analysis(mask):
        return [(None, None)]
    low = _Lowering(mask, None)
    f = low.formula(mask)
    if f == FALSE:
        return []
    guards, checks = low.for_ranges()
    key_guards = [g for g in guards if any("kv" in k.deps for k in g.terms)]
    # where query-side arithmetic may wrap around (or a tile constant leaves the range analysed) the bounds
    # do not hold; keys where key-side arithmetic may wrap get a range of their own
    ok = all_([*(guard_holds(g) for g in guards if g not in key_guards), *checks])
    disjuncts = f.parts if isinstance(f, Or) else (f,)
    reads_key = [_reads_key(d) for d in disjuncts]
    keyed = [d for d, reads in zip(disjuncts, reads_key, strict=True) if reads]
    ranges = _merge([_kv_bounds(d, low.box) for d in keyed] + [_wrap_range(g) for g in key_guards])
    # a disjunct that does not read the key (prefix LM's `kv < prefix`, seen from a key tile) allows every
    # key where some query of the tile satisfies it, and none elsewhere
    keyless = (d for d, reads in zip(disjuncts, reads_key, strict=True) if not reads)
    ranges = _with_keyless(ranges, any_(_may_hold(d, low.box) for d in keyless))
    return [(_index_bound(lo, ok, INT32_MIN), _index_bound(hi, ok, INT32_MAX)) for lo, hi in ranges]


def _reads_key(f: Formula) -> bool:
    """Whether a formula may change with the key (its atoms' unknowns, its conditions' key-tile bounds)."""
    if isinstance(f, Atom):
        return any(("kv" in k.deps) if isinstance(k, Node) else KV in free_vars(lin_of(k)) for k in f.lin.terms)
    if isinstance(f, Cond):
        return "kv" in f.node.deps
    if isinstance(f, And | Or):
        return any(_reads_key(p) for p in f.parts)
    return True  # known through the whole tile's bounds only


def _may_hold(f: Formula, box: Box) -> Node:
    """IR: some query of the tile may satisfy `f`, a formula that does not read the key (True where unknown:
    And is taken part by part, which can only say True more often)."""
    if isinstance(f, Atom):
        most = _over_query_tile(f.lin, maximise=True, box=box)
        return TRUE_N if most is None else emit_ge0(most)
    if isinstance(f, Cond):
        return f.node
    if isinstance(f, And):
        return all_(_may_hold(p, box) for p in f.parts)
    if isinstance(f, Or):
        return any_(_may_hold(p, box) for p in f.parts)
    return TRUE_N


# The bounds of a range without keys: far apart in int32 but such that the kernels' tile arithmetic on them
# (range starts rounded to tiles, band ends, counts of tiles between them) cannot overflow.
_NO_KEYS = (2**30, -1)


def _with_keyless(ranges: list[tuple[Bound, Bound]], some: Node) -> list[tuple[Bound, Bound]]:
    """`ranges` united with every key where `some` holds (a keyless disjunct satisfied by the tile)."""
    if some is FALSE_N:
        return ranges
    if some is TRUE_N:
        return [(None, None)]
    if not ranges:  # every key, or none
        return [(_either(some, INT32_MIN, number(_NO_KEYS[0])), _either(some, INT32_MAX, number(_NO_KEYS[1])))]
    return [(None if lo is None else _either(some, INT32_MIN, lo), None if hi is None else _either(some, INT32_MAX, hi))
            for lo, hi in ranges]


def _either(some: Node, everything: int, bound: Lin) -> Lin:
    """`everything` where `some` holds, else `bound`, as a tile-constant form."""
    return sym(node(Op.WHERE, I64, some, const(everything, I64), _cast(emit(bound), I64)))


def kv_full_range(mask: Node) -> tuple[Node | None, Node | None] | None:
    """Inclusive int32 key bounds for a query tile [q_lo, q_hi] inside which every pair of the tile is
    allowed (None: unbounded on that side), so key tiles there need neither the tile test nor the mask (the
    off-band loop of a mask with a diagonal). None where the analysis knows no such keys (data-dependent
    masks, parts it cannot bound); at run time the range is empty (lo > hi) wherever the mask's arithmetic
    might wrap around.

    The dual of `kv_ranges`: each atom's bound is taken at the end of the query tile that tightens it,
    conjunctions intersect, and a disjunction keeps what one of its parts guarantees (or their union where
    they share an end)."""
    if beyond_analysis(mask):
        return None
    low = _Lowering(mask, None)
    full = _full_bounds(low.formula(mask), low.box)
    guards, checks = low.for_ranges()
    if full is None or any("kv" in check.deps for check in checks):
        return None
    (lo, hi), conditions = full
    key_guards = [g for g in guards if any("kv" in k.deps for k in g.terms)]
    for guard in key_guards:  # keys where key-side arithmetic may wrap are never full
        bad_lo, bad_hi = _wrap_range(guard)
        if (bad_lo is None) == (bad_hi is None):
            return None
        if bad_lo is not None:
            hi = _join(Op.MIN, [hi, bad_lo.shift(-1)], any_none=False)
        else:
            lo = _join(Op.MAX, [lo, bad_hi.shift(1)], any_none=False)
    ok = all_([*(guard_holds(g) for g in guards if g not in key_guards), *checks, *conditions])
    if ok is FALSE_N:
        return None
    if ok is not TRUE_N:  # an unbounded side still needs a bound that can make the range empty
        lo, hi = (number(INT32_MIN) if lo is None else lo), (number(INT32_MAX) if hi is None else hi)
    return _index_bound(lo, ok, INT32_MAX), _index_bound(hi, ok, INT32_MIN)


FullBounds = tuple[tuple[Bound, Bound], tuple[Node, ...]]  # (key range, tile-constant conditions)


def _full_bounds(f: Formula, box: Box) -> FullBounds | None:
    if isinstance(f, Atom):
        if not any(KV in free_vars(lin_of(k)) for k in f.lin.unknowns()):  # a condition on the query tile
            weakest = _over_query_tile(f.lin, maximise=False, box=box)
            return None if weakest is None else ((None, None), (guard_holds(weakest),))
        bounds = _atom_kv_bounds(f.lin, tighten=True, box=box)
        return None if bounds == (None, None) else (bounds, ())
    if isinstance(f, Cond | Tri):  # holds everywhere where its condition does (a Tri: where it never fails)
        condition = f.node if isinstance(f, Cond) else not_(f.may_false)
        if condition is FALSE_N or "kv" in condition.deps:
            return None
        return (None, None), (() if condition is TRUE_N else (condition,))
    if isinstance(f, And):
        parts = [_full_bounds(p, box) for p in f.parts]
        if any(p is None for p in parts):
            return None
        lo = _join(Op.MAX, [p[0][0] for p in parts], any_none=False)
        hi = _join(Op.MIN, [p[0][1] for p in parts], any_none=False)
        return (lo, hi), tuple(c for p in parts for c in p[1])
    if isinstance(f, Or):
        known = [p for p in (_full_bounds(part, box) for part in f.parts) if p is not None]
        if not known:
            return None
        plain = [bounds for bounds, conditions in known if not conditions]
        if len(plain) > 1:  # ranges sharing an end unite into one
            los, his = {lo for lo, _ in plain}, {hi for _, hi in plain}
            if len(los) == 1:
                return (plain[0][0], _join(Op.MAX, [hi for _, hi in plain], any_none=True)), ()
            if len(his) == 1:
                return (_join(Op.MIN, [lo for lo, _ in plain], any_none=True), plain[0][1]), ()
        return known[0]  # a subset of the disjunction's full keys is still full
    return None


def _wrap_range(guard: Lin) -> tuple[Bound, Bound]:
    """The keys where a no-wrap-around guard over the key tile fails (a key tile of one key: kv_lo = kv_hi);
    everything when the key tile bounds occur inside other terms."""
    ends = (var("kv_lo"), var("kv_hi"))
    if any("kv" in k.deps for k in guard.terms if k not in ends):
        return None, None
    at_key = Lin({k: c for k, c in guard.terms.items() if k not in ends}, guard.const)
    at_key += Lin({KV: sum(c for k, c in guard.terms.items() if k in ends)})
    return _atom_kv_bounds(at_key.scale(-1).shift(-1))


def _kv_bounds(f: Formula, box: Box) -> tuple[Bound, Bound]:
    if isinstance(f, Atom):
        return _atom_kv_bounds(f.lin, box=box)
    if not isinstance(f, And | Or):
        return None, None
    parts = [_kv_bounds(p, box) for p in f.parts]
    if isinstance(f, And):  # the tightest of each side
        return _join(Op.MAX, [p[0] for p in parts], any_none=False), _join(Op.MIN, [p[1] for p in parts], False)
    return _join(Op.MIN, [p[0] for p in parts], any_none=True), _join(Op.MAX, [p[1] for p in parts], True)


def _join(op: Op, bounds: list[Bound], any_none: bool) -> Bound:
    """min / max of bounds: None (unbounded) absorbs for a union (`any_none`), is skipped for a meet."""
    known = [b for b in bounds if b is not None]
    if not known or (any_none and len(known) < len(bounds)):
        return None
    return _extreme(op, known)


def _atom_kv_bounds(lin: Lin, tighten: bool = False, box: Box | None = None) -> tuple[Bound, Bound]:
    """From `a * K + rest(q) >= 0` with K = kv or (kv + s) // d: K >= ceil(-rest / a) for a > 0,
    K <= floor(rest / -a) for a < 0, loosest over the query tile: the keys some query of the tile may
    attend to (`tighten`: tightest, the keys every query of the tile attends to)."""
    keys = [k for k in lin.unknowns() if KV in free_vars(lin_of(k))]
    if len(keys) != 1 or isinstance(keys[0], Mod):
        return None, None
    key, a = keys[0], lin.terms[keys[0]]
    shift = key.arg - lin_of(KV) if isinstance(key, Div) else number(0)
    rest = _over_query_tile(lin - Lin({key: a}), maximise=not tighten, box=box)
    if rest is None or shift.unknowns() or (isinstance(key, Div) and key.arg.terms[KV] != 1):
        return None, None
    if a > 0:  # (kv + s) // d >= m  <=>  kv >= d * m - s
        m = div(rest, a).scale(-1)
        return (m if key == KV else _times(m, key.d) - shift), None
    m = div(rest, -a)  # (kv + s) // d <= m  <=>  kv <= d * m + d - 1 - s
    return None, (m if key == KV else _times(m.shift(1), key.d).shift(-1) - shift)


def _times(lin: Lin, d: Divisor) -> Lin:
    """d * lin for a tile-constant form (an int64 product for a parameter d)."""
    if isinstance(d, int):
        return lin.scale(d)
    if not lin.terms:
        return sym(d).scale(lin.const)
    return sym(node(Op.MUL, I64, _cast(emit(lin), I64), _cast(d, I64)))


def _over_query_tile(lin: Lin, maximise: bool, box: Box | None = None) -> Lin | None:
    """The largest (or smallest) value of a form over q in [q_lo, q_hi], term by term (each term is monotone
    in q, or an unknown of `box` whose bounds read the query tile only); None if the form has other
    unknowns."""
    out = number(lin.const)
    for k, c in lin.terms.items():
        high = maximise == (c > 0)
        if isinstance(k, Node):
            value = lin_of(k)
        elif k == Q:
            value = lin_of(var("q_hi" if high else "q_lo"))
        elif isinstance(k, Div) and (inner := _over_query_tile(k.arg, high, box)) is not None:
            value = div(inner, k.d)  # floor division is non-decreasing
        elif isinstance(k, Var) and k != KV and box is not None and (found := _query_bound(box[k], high)):
            value = found
        else:
            return None
        out += value.scale(c)
    return out


def _query_bound(bounds: Bounds, high: bool) -> Lin | None:
    """The tightest upper (`high`) or lower bound of an unknown, if it reads no key-tile bound (then it holds
    for the query tile and any key)."""
    sides = bounds.uppers if high else bounds.lowers
    if any("kv" in k.deps for side in sides for k in side.terms):
        return None
    return _extreme(Op.MIN if high else Op.MAX, sides)


def _merge(ranges: list[tuple[Bound, Bound]]) -> list[tuple[Bound, Bound]]:
    """Unite ranges sharing an end: [a, h1] | [a, h2] = [a, max(h1, h2)]."""
    out: list[tuple[Bound, Bound]] = []
    for lo, hi in ranges:
        for i, (a, b) in enumerate(out):
            if a == lo:
                out[i] = (a, _join(Op.MAX, [b, hi], any_none=True))
                break
            if b == hi:
                out[i] = (_join(Op.MIN, [a, lo], any_none=True), b)
                break
        else:
            out.append((lo, hi))
    return [(None, None)] if (None, None) in out else out


def _index_bound(bound: Bound, ok: Node, fallback: int) -> Node | None:
    """A bound as int32 IR: clamped into int32 (a key is an int32, so the clamped bound still holds), and
    `fallback` (no bound) where the guard `ok` fails."""
    if bound is None or ok is FALSE_N:
        return None
    value = emit(bound)
    lo, hi = static_range(value)
    if lo < INT32_MIN:
        value = node(Op.MAX, value.dtype, value, const(INT32_MIN, value.dtype))
    if hi > INT32_MAX:
        value = node(Op.MIN, value.dtype, value, const(INT32_MAX, value.dtype))
    value = _cast(value, I32)
    if ok is not TRUE_N:
        value = node(Op.WHERE, I32, ok, value, const(fallback, I32))
    return index_algebra(value)
