"""Deciding whether a formula may hold somewhere in a box: components, period splits, DNF and
Fourier-Motzkin elimination on symbolic bounds, within work budgets (past them the answer is the sound one)."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence

from attnc.ir.node import Node
from attnc.ir.ops import Op
from attnc.ir.rewrite import order_key
from attnc.ir.tiles.forms import (
    _EMIT_LIMIT,
    FALSE,
    FALSE_N,
    TRUE,
    TRUE_N,
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
    Mod,
    Or,
    Periodic,
    Range,
    Tri,
    Var,
    _extreme,
    _floordiv_range,
    _magnitude,
    _symbol_range,
    all_,
    any_,
    atom,
    atoms_of,
    conj,
    div,
    emit_ge0,
    formula_vars,
    key_interval,
    lin_interval,
    lin_of,
    map_atoms,
    mod,
    number,
    static_range,
    substitute,
    sym,
)
from attnc.ir.tiles.lowering import _TILE_ENDS

# -- deciding: may a formula hold somewhere in a box? ------------------------------------------------------

Literal = Atom | Cond | Tri
_LOWER, _UPPER = 1, -1

# budgets of the decision procedure: past each the answer taken is the sound one
_DNF_LIMIT = 64  # conjunctions per DNF; larger formulas are decided part by part (sound)
_SPLIT_DEPTH = 8  # nested period splits along one path
_PIECE_BUDGET = 4000  # period pieces per analysis
_WORK_BUDGET = 20000  # conjunction groups and elimination rows per decision; past it parts may hold (sound)
_PAIRWISE_LIMIT = 64  # rows compared pairwise for redundancy
_ROW_LIMIT = 400  # Fourier-Motzkin rows; past it a conjunction is taken as satisfiable (sound)


class _Decider:
    """Builds IR for "some point of the box satisfies the formula" (exact within the budgets)."""

    def __init__(self) -> None:
        self._fresh = itertools.count()
        self.pieces = 0
        self.work = 0  # groups and elimination rows so far; past _WORK_BUDGET the answer is "may hold" (sound)

    def fresh(self) -> Var:
        return Var(f"x{next(self._fresh)}")

    def may_true(self, f: Formula, box: Box, depth: int = 0) -> Node:
        if isinstance(f, Cond):
            return f.node
        if isinstance(f, Tri):
            return f.may_true
        if isinstance(f, Or):
            return any_(self.may_true(p, box, depth) for p in f.parts)
        parts = f.parts if isinstance(f, And) else (f,)
        return all_(self._joint(group, box, depth) for group in _components(parts))

    def _joint(self, parts: list[Formula], box: Box, depth: int) -> Node:
        """Conjuncts sharing variables: promote lone divisions, split periods, then DNF and eliminate."""
        if len(parts) == 1 and not isinstance(parts[0], Atom):
            return self.may_true(parts[0], box, depth)
        self.work += 1
        if self.work > _WORK_BUDGET:  # alternating and / or whose DNFs keep overflowing: stop deciding
            return TRUE_N
        parts, box = _promote(parts, box, self.fresh)
        target = _split_target(parts) if depth < _SPLIT_DEPTH and self.pieces < _PIECE_BUDGET else None
        if target is not None:
            pieces = self._split(target, parts, box)
            return any_(self.may_true(piece, piece_box, depth + 1) for piece, piece_box in pieces)
        conjunctions = _dnf(conj(parts))
        if conjunctions is None:  # too many cases: decide conjuncts apart (sound)
            return all_(self.may_true(p, box, depth) for p in parts)
        cases = [c for c in (self._feasible(c, box) for c in conjunctions) if c is not None]
        kept = [c for c in cases if not any(other < c for other in cases)]  # a | (a & b) = a
        return any_(all_(sorted(c, key=order_key)) for c in dict.fromkeys(kept))

    def _split(self, target: Periodic, parts: list[Formula], box: Box) -> list[tuple[Formula, Box]]:
        """The conjunction over each period piece of the division's variable: z = d * X + r."""
        parts, box, z = _change_variable(target, parts, box, self.fresh)
        pieces = _period_pieces(box[z], target.d, self.fresh)
        self.pieces += len(pieces)
        rest = {v: b for v, b in box.items() if v != z}
        return [(conj([piece.condition, *(_replace_period(p, z, target.d, piece) for p in parts)]), rest | piece.box)
                for piece in pieces]

    def _feasible(self, literals: Sequence[Literal], box: Box) -> frozenset[Node] | None:
        """The conditions (all must hold) for a conjunction to hold somewhere; None: it holds nowhere."""
        if self.work > _WORK_BUDGET:
            return frozenset()  # may hold, on no condition: sound
        conditions = [lit.node if isinstance(lit, Cond) else lit.may_true
                      for lit in literals if not isinstance(lit, Atom)]
        rows = _eliminate([lit.lin for lit in literals if isinstance(lit, Atom)], box)
        self.work += 1 + len(rows or ())
        out = frozenset(c for c in [*conditions, *(emit_ge0(r) for r in rows or ())] if c is not TRUE_N)
        return None if rows is None or FALSE_N in out else out


def _components(parts: Sequence[Formula]) -> list[list[Formula]]:
    """Group conjuncts that share variables (transitively); each group is decided on its own."""
    groups: list[tuple[dict[Var, None], list[Formula]]] = []
    for p in parts:
        vs, members = dict(formula_vars(p)), [p]
        for g in [g for g in groups if vs.keys() & g[0].keys()]:
            groups.remove(g)
            vs.update(g[0])
            members = g[1] + members
        groups.append((vs, members))
    return [members for _, members in groups]


def _divisions(parts: Sequence[Formula]) -> dict[Periodic, None]:
    """Every division and remainder in the atoms, inner ones before the ones containing them."""
    out: dict[Periodic, None] = {}

    def visit(lin: Lin) -> None:
        for k in lin.terms:
            if isinstance(k, Div | Mod):
                visit(k.arg)
                out[k] = None

    for p in parts:
        for lin in atoms_of(p):
            visit(lin)
    return out


def _vars_outside(parts: Sequence[Formula], target: Periodic) -> dict[Var, None]:
    """Variables occurring in the atoms other than inside `target`."""
    out: dict[Var, None] = {}

    def visit(lin: Lin) -> None:
        for k in lin.terms:
            if isinstance(k, Var):
                out[k] = None
            elif isinstance(k, Div | Mod) and k != target:
                visit(k.arg)

    for p in parts:
        for lin in atoms_of(p):
            visit(lin)
    return out


def _unit_var(lin: Lin) -> Var | None:
    return next((k for k, c in lin.terms.items() if isinstance(k, Var) and abs(c) == 1), None)


def _promote(parts: list[Formula], box: Box, fresh: Callable[[], Var]) -> tuple[list[Formula], Box]:
    """Divisions that need no split: one whose argument stays inside a period at compile time is a constant;
    `(±v + s) // d` whose v occurs nowhere else takes every integer between its bounds, so it becomes a
    variable of its own (X for `q // F` in `q // F >= kv // F`)."""
    box = dict(box)
    while True:  # replacing a division changes those containing it: start over until none is replaced
        for target in _divisions(parts):
            value = _promoted(target, parts, box, fresh)
            if value is not None:
                parts = [map_atoms(p, lambda lin, t=target, v=value: substitute(lin, {}, {t: v})) for p in parts]
                break
        else:
            return parts, box


def _promoted(target: Periodic, parts: list[Formula], box: dict[Var, Bounds],
              fresh: Callable[[], Var]) -> Lin | None:
    """The value replacing `target` without a split, or None (adds the new variable to `box`)."""
    if isinstance(target, Mod):
        return None
    if isinstance(target.d, int):
        lo, hi = _static(target.arg, box)
        if lo // target.d == hi // target.d:
            return number(lo // target.d)
    unknowns = target.arg.unknowns()
    if len(unknowns) != 1 or _unit_var(target.arg) is None or unknowns[0] in _vars_outside(parts, target):
        return None
    x = fresh()
    lo, hi = key_interval(target, box)
    box[x] = Bounds((lo,), (hi,))
    return lin_of(x)


def _static(lin: Lin, box: Box) -> Range:
    """Compile-time bounds of a form over a box."""
    lo = hi = lin.const
    for k, c in lin.terms.items():
        a, b = _key_static(k, box)
        lo, hi = lo + min(a * c, b * c), hi + max(a * c, b * c)
    return (lo, hi)


def _key_static(k: Key, box: Box) -> Range:
    if isinstance(k, Var):
        b = box[k]
        return max(_symbol_range(x)[0] for x in b.lowers), min(_symbol_range(x)[1] for x in b.uppers)
    if isinstance(k, Div):
        a, b = _static(k.arg, box)
        return _floordiv_range((a, b), k.d) if isinstance(k.d, int) else (min(a, 0), max(b, 0))
    if isinstance(k, Mod):
        return (0, static_range(k.d)[1] - 1)
    return static_range(k)


def _split_target(parts: list[Formula]) -> Periodic | None:
    """An innermost division with a ±1 variable, preferring plain `v // d` and then larger constant divisors
    (so `q // (H * W)` splits before `q // W`, which it then contains whole)."""
    candidates = [t for t in _divisions(parts)
                  if not any(isinstance(k, Div | Mod) for k in t.arg.terms) and _unit_var(t.arg) is not None]
    if not candidates:
        return None
    return min(candidates, key=lambda t: (t.arg != lin_of(_unit_var(t.arg)), isinstance(t.d, Node),
                                          -t.d if isinstance(t.d, int) else 0))


def _change_variable(target: Periodic, parts: list[Formula], box: Box,
                     fresh: Callable[[], Var]) -> tuple[list[Formula], dict[Var, Bounds], Var]:
    """Make the division's argument a variable z: for `(v + e) // d`, v = z - e everywhere and v's bounds
    become constraints on z - e."""
    v = _unit_var(target.arg)
    if target.arg == lin_of(v):
        return parts, dict(box), v
    z, c = fresh(), target.arg.terms[v]
    v_value = (lin_of(z) - (target.arg - Lin({v: c}))).scale(c)  # c = ±1
    links = [atom(v_value - lo) for lo in box[v].lowers] + [atom(hi - v_value) for hi in box[v].uppers]
    lo, hi = lin_interval(target.arg, box)
    new_box = {k: b for k, b in box.items() if k != v} | {z: Bounds((lo,), (hi,))}
    parts = [map_atoms(p, lambda lin: substitute(lin, {v: v_value}, {})) for p in parts] + links
    return parts, new_box, z


@dataclasses.dataclass(frozen=True)
class _Piece:
    """One box of a period split: there z is `value`, z // d is `quotient` and z % d is `remainder`."""

    value: Lin
    quotient: Lin
    remainder: Lin
    box: dict[Var, Bounds]
    condition: Formula  # the box is non-empty


def _period_pieces(bounds: Bounds, d: Divisor, fresh: Callable[[], Var]) -> list[_Piece]:
    """Split lo <= z <= hi into boxes where z = d * X + r with X and r independent: the first period
    (X = lo // d), the whole periods between (a variable X; a condition says there are some), the last
    period (X = hi // d)."""
    lo, hi = _extreme(Op.MAX, bounds.lowers), _extreme(Op.MIN, bounds.uppers)
    first, last = div(lo, d), div(hi, d)
    pieces = _symbolic_pieces(lo, hi, d, fresh) if isinstance(d, Node) else _constant_pieces(lo, hi, d, fresh)
    if first == last:  # one period: the last piece repeats the first, there is no middle
        return pieces[:1]
    return [p for p in pieces if p.condition != FALSE]


def _constant_pieces(lo: Lin, hi: Lin, d: int, fresh: Callable[[], Var]) -> list[_Piece]:
    first, last = div(lo, d), div(hi, d)
    r1, r2, r3, x = fresh(), fresh(), fresh(), fresh()
    return [
        _Piece(first.scale(d) + lin_of(r1), first, lin_of(r1),
               {r1: Bounds((lo - first.scale(d),), (number(d - 1), hi - first.scale(d)))}, TRUE),
        _Piece(last.scale(d) + lin_of(r2), last, lin_of(r2),
               {r2: Bounds((number(0), lo - last.scale(d)), (hi - last.scale(d),))}, TRUE),
        _Piece(lin_of(x).scale(d) + lin_of(r3), lin_of(x), lin_of(r3),
               {x: Bounds((first.shift(1),), (last.shift(-1),)), r3: Bounds((number(0),), (number(d - 1),))},
               atom(last - first.shift(2))),
    ]


def _symbolic_pieces(lo: Lin, hi: Lin, d: Node, fresh: Callable[[], Var]) -> list[_Piece]:
    """As `_constant_pieces` for a parameter d, with d * X written `z - z % d`. In the middle d * X is not
    affine: it becomes a variable y of its own, so the middle piece is exact only where z occurs in
    `z // d` and `z % d` alone (a neighbourhood's row and column), sound elsewhere."""
    first, last, lo_r, hi_r, top = div(lo, d), div(hi, d), mod(lo, d), mod(hi, d), sym(d).shift(-1)
    r1, r2, r3, x, y = fresh(), fresh(), fresh(), fresh(), fresh()
    whole = {x: Bounds((first.shift(1),), (last.shift(-1),)), r3: Bounds((number(0),), (top,)),
             y: Bounds((lo - lo_r + sym(d),), (hi - hi_r - sym(d),))}
    return [
        _Piece(lo - lo_r + lin_of(r1), first, lin_of(r1), {r1: Bounds((lo_r,), (top, hi - lo + lo_r))}, TRUE),
        _Piece(hi - hi_r + lin_of(r2), last, lin_of(r2), {r2: Bounds((number(0), lo - hi + hi_r), (hi_r,))}, TRUE),
        _Piece(lin_of(y) + lin_of(r3), lin_of(x), lin_of(r3), whole, atom(last - first.shift(2))),
    ]


def _replace_period(f: Formula, z: Var, d: Divisor, piece: _Piece) -> Formula:
    """`f` on a piece: z, z // d and z % d replaced by their values there."""
    divisions: dict[Periodic, Lin] = {Div(lin_of(z), d): piece.quotient}
    if isinstance(d, Node):
        divisions[Mod(lin_of(z), d)] = piece.remainder
    return map_atoms(f, lambda lin: substitute(lin, {z: piece.value}, divisions))


def _dnf(f: Formula) -> list[tuple[Literal, ...]] | None:
    """Disjunctive normal form, or None past `_DNF_LIMIT` conjunctions."""
    if isinstance(f, Or):
        out: list[tuple[Literal, ...]] = []
        for p in f.parts:
            d = _dnf(p)
            if d is None or len(out) + len(d) > _DNF_LIMIT:
                return None
            out += d
        return out
    if isinstance(f, And):
        acc: list[tuple[Literal, ...]] = [()]
        for p in f.parts:
            d = _dnf(p)
            if d is None or len(acc) * len(d) > _DNF_LIMIT:
                return None
            acc = [a + b for a in acc for b in d]
        return acc
    return [(f,)]


# -- Fourier-Motzkin elimination on symbolic bounds ----------------------------------------------------------

Tag = tuple[Var | Periodic, int] | None  # (u, _LOWER) / (u, _UPPER): the row is a bound of the unknown u
Rows = dict[Lin, Tag]  # each row means lin >= 0


def _eliminate(atoms: Sequence[Lin], box: Box) -> list[Lin] | None:
    """Tile-constant rows (`lin >= 0`, all must hold) for "some integer point of the box satisfies every atom",
    or None when that is false at compile time: eliminate unknowns one by one, exact while each combined
    pair has a ±1 coefficient, an over-approximation otherwise."""
    rows: Rows = {}
    for lin in atoms:
        _add_row(rows, lin, None)
    for u in dict.fromkeys(k for lin in atoms for k in lin.unknowns()):
        _add_bounds(rows, u, box)
    final: list[Lin] = []
    while rows:
        rows, done = _settle(rows)
        if done is None:
            return None
        final += done
        unknowns = list(dict.fromkeys(k for lin in rows for k in lin.unknowns()))
        if not unknowns or len(rows) > _ROW_LIMIT:
            break
        rows = _eliminate_one(rows, min(unknowns, key=lambda u: _cost(rows, u)))
    return _irredundant(final)


def _irredundant(rows: list[Lin]) -> list[Lin]:
    """Drop rows another row implies (of two equivalent rows, the later one). Only rows with the same
    terms in wide-ranging symbols (parameters) are compared: others rarely imply each other."""
    buckets: dict[frozenset, list[int]] = {}
    for i, r in enumerate(rows):
        buckets.setdefault(_wide_terms(r), []).append(i)

    def redundant(i: int) -> bool:
        bucket = buckets[_wide_terms(rows[i])]
        if len(bucket) > _PAIRWISE_LIMIT:  # quadratic past here; keeping a redundant row is only longer code
            return False
        return any(_implies(rows[j], rows[i]) and (j < i or not _implies(rows[i], rows[j])) for j in bucket if j != i)

    return [r for i, r in enumerate(rows) if not redundant(i)]


def _wide_terms(lin: Lin) -> frozenset:
    ends = {end for pair in _TILE_ENDS for end in pair}
    return frozenset((k, c) for k, c in lin.terms.items() if k not in ends and _magnitude(static_range(k)) >= 2**30)


def _implies(a: Lin, b: Lin) -> bool:
    """Whether `a >= 0` implies `b >= 0` for every tile: b - a is at least 0, tile widths counting as >= 0."""
    terms = dict(b.terms)
    for k, c in a.terms.items():
        terms[k] = terms.get(k, 0) - c
    for lo, hi in _TILE_ENDS:
        c = terms.get(hi, 0)
        if c > 0 and terms.get(lo, 0) == -c:
            del terms[lo], terms[hi]
    low = b.const - a.const
    for k, c in terms.items():
        if c:
            r = static_range(k)
            low += min(r[0] * c, r[1] * c)
    return low >= 0


def _add_row(rows: Rows, lin: Lin, tag: Tag) -> None:
    rows[lin] = rows.get(lin) or tag  # a row that is also a bound keeps the bound's tag


def _add_bounds(rows: Rows, u: Var | Periodic, box: Box) -> None:
    """Bound rows of an unknown, tagged: boxes are non-empty, so a lower and an upper bound of the same
    unknown need not be combined."""
    if isinstance(u, Var):
        lowers, uppers = box[u].lowers, box[u].uppers
    else:
        lo, hi = key_interval(u, box)
        lowers, uppers = (lo,), (hi,)
        if isinstance(u, Div) and isinstance(u.d, int):  # d * D <= arg <= d * D + d - 1
            _add_row(rows, u.arg - lin_of(u).scale(u.d), None)
            _add_row(rows, lin_of(u).scale(u.d).shift(u.d - 1) - u.arg, None)
    for lo in lowers:
        _add_row(rows, lin_of(u) - lo, (u, _LOWER))
    for hi in uppers:
        _add_row(rows, hi - lin_of(u), (u, _UPPER))


def _settle(rows: Rows) -> tuple[Rows, list[Lin] | None]:
    """Tighten rows (divide by the gcd of their unknowns' coefficients, flooring the rest), keep the
    tightest of rows differing only in their constant, and take out tile-constant rows (None: one is false
    at compile time)."""
    tight: dict[frozenset, tuple[Lin, Tag]] = {}
    done: list[Lin] = []
    for lin, tag in rows.items():
        lin = _tighten(lin)
        if not lin.unknowns():
            if _symbol_range(lin)[1] < 0:
                return {}, None
            if _symbol_range(lin)[0] < 0:
                done.append(lin)
            continue
        shape = frozenset(lin.terms.items())
        if shape not in tight or lin.const < tight[shape][0].const:
            tight[shape] = (lin, tag)
    return dict(tight.values()), done


def _tighten(lin: Lin) -> Lin:
    """g * (sum) + s >= 0  <=>  sum + floor(s / g) >= 0 for integers."""
    unknown = {k: c for k, c in lin.terms.items() if not isinstance(k, Node)}
    g = math.gcd(*unknown.values()) if unknown else 1
    if g <= 1 or _magnitude(_symbol_range(lin.symbolic())) > _EMIT_LIMIT:
        return lin
    return Lin({k: c // g for k, c in unknown.items()}) + div(lin.symbolic(), g)


def _pairs(rows: Rows, u: Var | Periodic) -> tuple[list[Lin], list[Lin], list[tuple[Lin, Lin]]]:
    lowers = [lin for lin in rows if lin.terms.get(u, 0) > 0]
    uppers = [lin for lin in rows if lin.terms.get(u, 0) < 0]
    known = (u, _LOWER), (u, _UPPER)
    pairs = [(a, b) for a in lowers for b in uppers if (rows[a], rows[b]) != known]
    return lowers, uppers, pairs


def _cost(rows: Rows, u: Var | Periodic) -> tuple[bool, int]:
    """Prefer exact eliminations (a ±1 coefficient in every pair), then fewer new rows."""
    lowers, uppers, pairs = _pairs(rows, u)
    exact = all(a.terms[u] == 1 or b.terms[u] == -1 for a, b in pairs)
    return (not exact, len(pairs) - len(lowers) - len(uppers))


def _eliminate_one(rows: Rows, u: Var | Periodic) -> Rows:
    """Replace the rows bounding u by every lower-upper combination: a*u + l >= 0, -b*u + h >= 0 give
    b*l + a*h >= 0."""
    _, _, pairs = _pairs(rows, u)
    out = {lin: tag for lin, tag in rows.items() if u not in lin.terms}
    for a, b in pairs:
        _add_row(out, a.scale(-b.terms[u]) + b.scale(a.terms[u]), None)
    return out
