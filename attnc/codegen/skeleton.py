"""What every generated kernel shares: skeletons that are real Triton with `# HOLE: name` lines, and
the emitter that renders IR into those holes.

The emitter names each interior node once and places it by what it depends on (`Level`): b/h-only terms
are computed once per program, q-only terms once per query tile, the rest per tile. Kernels differ only in
their skeleton and in which holes they fill.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from attnc.codegen.emit import COMPUTE, RENDER, literal, tl_type
from attnc.codegen.intervals import Interval, Term, conjunction_terms
from attnc.ir.dtypes import DType
from attnc.ir.int_range import fits_int32
from attnc.ir.node import Node, const, node
from attnc.ir.ops import Op
from attnc.ir.program import Program

if TYPE_CHECKING:
    from attnc.ir.tiles import TileTest

TEMPLATES = Path(__file__).parent / "templates"
# Part of every cached kernel file's header: bump it when generated code changes meaning.
CODEGEN_VERSION = "5"
_HOLE = re.compile(r"(?P<indent>[ \t]*)# HOLE: (?P<name>\w+)")


class Level(enum.IntEnum):
    """Where a value is computed: the outermost place all its inputs are known."""

    PROGRAM = 0  # depends on b, h only
    QUERY = 1  # depends on q, not kv
    TILE = 2  # depends on kv or the score


def level(n: Node) -> Level:
    """Levels of a kernel whose programs own query rows and loop over key tiles."""
    if n.deps & {"kv", "score"}:
        return Level.TILE
    return Level.QUERY if "q" in n.deps else Level.PROGRAM


def key_major_level(n: Node) -> Level:
    """Levels of a kernel whose programs own key rows and loop over query tiles (the dK/dV backward):
    QUERY then means "once per program strip" of keys."""
    if n.deps & {"q", "score"}:
        return Level.TILE
    return Level.QUERY if "kv" in n.deps else Level.PROGRAM


@dataclasses.dataclass(frozen=True)
class KernelSource:
    source: str
    kernel_name: str
    capture_args: tuple[str, ...]  # generated arguments, in signature order
    do_not_specialize: tuple[str, ...]
    placement: dict[str, tuple[str, ...]]  # level name -> the generated lines computed there
    # parameter slots that divide the key index in tile-aligned divisions (`TileIndex`): the launch tells the
    # kernel what they are (TILE_DIVISORS)
    tile_divisors: tuple[int, ...] = ()
    # the parameter slot of the score mod's last factor, where the launch tells whether it is positive
    # (`score_value_lines`, SCORE_FACTOR_POSITIVE)
    score_factor: int | None = None

    def describe_placement(self) -> str:
        return "\n".join(f"{level}:\n" + "\n".join(f"  {line}" for line in lines) if lines else f"{level}: -"
                         for level, lines in self.placement.items())


def capture_arg_names(program: Program) -> tuple[list[str], list[str]]:
    """(tensor args, param args): pointer, strides and sizes per captured tensor; one per parameter."""
    tensor_args: list[str] = []
    for slot, spec in enumerate(program.tensors):
        tensor_args.append(f"buf{slot}")
        tensor_args += [f"buf{slot}_stride{d}" for d in range(spec.ndim)]
        tensor_args += [f"buf{slot}_size{d}" for d in range(spec.ndim)]
    return tensor_args, [f"param{slot}" for slot in range(len(program.params))]


@dataclasses.dataclass(frozen=True)
class TileIndex:
    """The index a tile function's tiles walk (kv, or q in the dK/dV kernel): its name in the IR, the variable
    holding the tile's first index (a multiple of the tile length in every loop) and the tile length."""

    var: str
    start: str
    block: str


# The constexpr a launch sets to what the parameters dividing the tile index are (`attnc.runtime.launch.
# tile_divisors`): DIVISORS_TILED, every one a positive multiple of the tile's length; DIVISORS_POSITIVE, every one
# positive; else DIVISORS_ANY.
DIVISORS_FLAG = "TILE_DIVISORS"
DIVISORS_ANY, DIVISORS_POSITIVE, DIVISORS_TILED = 0, 1, 2


class Emitter:
    """Names every interior node once and renders it at its level. With `tile_index`, divisions of that index
    by a hoisted divisor get a tile-aligned form too (`_tile_aligned_division`)."""

    def __init__(self, prefix: str = "t", level_of: Callable[[Node], Level] = level,
                 score_name: str = "score", tile_index: TileIndex | None = None, unscaled: str | None = None) -> None:
        self.prefix = prefix
        self.tile_index = tile_index
        self.unscaled = unscaled  # the variable holding q.k before the scale (`score` is q.k * sm_scale)
        self.factors: dict[tuple[Op, Node], str] = {}  # (MUL or TRUEDIV, hoisted operand) -> sm_scale's product
        self.tile_divisors: set[int] = set()  # parameter slots of tile-aligned divisions
        self.aligned_forms = 0  # tile-aligned divisions emitted: their values may be one per tile, not per pair
        self.tile_uniform: set[Node] = set()  # tile-aligned quotients: one value per tile in that form
        self.level_of = level_of
        self.score_name = score_name  # the variable holding the unmodified (scaled) score
        self.names: dict[Node, str] = {}
        self.lines: dict[Level, list[str]] = {lvl: [] for lvl in Level}
        self.tile_reads: set[Node] = set()
        self._tile_lines: list[str] = []
        self.magic: dict[Node, tuple[str, str]] = {}  # divisor -> names of its magic multiplier and shift
        self.widths: dict[Node, str] = {}  # an interval's int64 width -> the name of its uint32 copy
        self._terms: dict[Node, list[Term] | None] = {}  # a per-element AND -> its terms with intervals paired

    def expr(self, n: Node) -> str:
        if n.op is Op.VAR:
            return {"b": "b_idx", "h": "h_idx", "q": "q_idx", "kv": "kv_idx"}.get(n.arg, n.arg)
        if n.op is Op.SCORE:
            return self.score_name
        if n.op is Op.CONST:
            return literal(n.arg, n.dtype)
        if n.op is Op.PARAM:
            # a float parameter: a tensor of the compute dtype (see `_float_param` in the helpers)
            return f"_float_param(param{n.arg}, {COMPUTE})" if n.dtype.is_float else f"param{n.arg}"
        return self.names[n]

    def emit(self, root: Node, tile_lines: list[str]) -> str:
        """Emit every node of `root`'s DAG not yet emitted; return the root's expression."""
        for n in root.walk(self._operands):  # an interval's terms replace its two comparisons
            if n in self.names or n.op in (Op.VAR, Op.SCORE, Op.CONST, Op.PARAM):
                continue
            self.names[n] = f"{self.prefix}{len(self.names)}"
            self._tile_lines = tile_lines  # where a node that rendering adds at tile level goes
            code = f"{self.names[n]} = {self.render(n)}"
            lvl = self.level_of(n)
            (tile_lines if lvl is Level.TILE else self.lines[lvl]).append(code)
            if lvl is Level.TILE:
                self.tile_reads.update(s for s in self._reads(n)
                                       if s in self.names and self.level_of(s) is not Level.TILE)
        if root in self.names and self.level_of(root) is not Level.TILE:
            self.tile_reads.add(root)
        return self.expr(root)

    def _conjunction(self, n: Node) -> list[Term] | None:
        """`n`'s terms with its two-sided bounds paired into intervals, if `n` is a per-element AND with such
        a pair (see attnc.codegen.intervals)."""
        if n not in self._terms:
            self._terms[n] = conjunction_terms(n, lambda m: self.level_of(m) is Level.TILE)
        return self._terms[n]

    def _operands(self, n: Node) -> tuple[Node, ...]:
        """What rendering `n` reads: its sources, or for a conjunction with intervals, its other terms and
        each interval's x, base and width (its paired comparisons are never computed)."""
        terms = self._conjunction(n) if n.op is Op.AND else None
        if terms is None:
            return n.src
        return tuple(m for t in terms for m in ((t.x, t.base, t.width) if isinstance(t, Interval) else (t,)))

    def _reads(self, n: Node) -> tuple[Node, ...]:
        """The values `n`'s line reads (an interval's width through its uint32 copy, in `self.widths`)."""
        return tuple(m for m in self._operands(n) if m not in self.widths)

    def emit_inline(self, roots: list[Node]) -> tuple[list[str], list[str]]:
        """Emit `roots` as one straight-line block (levels in order, which is a topological order);
        return the block and each root's expression."""
        tile_lines: list[str] = []
        results = [self.emit(root, tile_lines) for root in roots]
        return self.lines[Level.PROGRAM] + self.lines[Level.QUERY] + tile_lines, results

    def render(self, n: Node) -> str:
        if n.op is Op.LOAD:
            return render_load(n, [self.expr(s) for s in n.src])
        terms = self._conjunction(n) if n.op is Op.AND else None
        if terms is not None:
            # lo <= x <= hi with lo, hi hoisted: one subtract and one unsigned compare per element instead of two
            # compares and a select. The other terms choose the width of one interval (0 where they fail: no
            # unsigned value is below it), so the pair's mask needs one select on the score, not one per term;
            # with a tile-aligned division (a NATTEN row) those terms are one value per row.
            carrier = next((t for t in terms if isinstance(t, Interval) and t.x not in self.tile_uniform),
                           next(t for t in reversed(terms) if isinstance(t, Interval)))
            others = [self._interval_test(t) if isinstance(t, Interval) else self.expr(t)
                      for t in terms if t is not carrier]
            return self._interval_test(carrier, " & ".join(others))
        if self._converts_a_split_sum(n):
            # float(a ± b) with a and b known at different levels (kv - q in ALiBi and relative biases):
            # float(a) ± float(b), each converted where it is known, one float add per element instead of an
            # integer add and a conversion (a quarter-rate instruction). Exact while |a|, |b| < 2^24.
            a, b = (node(Op.CAST, n.dtype, side) for side in n.src[0].src)
            for side in (a, b):
                self.emit(side, self._tile_lines)
            return RENDER[n.src[0].op](node(n.src[0].op, n.dtype, a, b), [self.expr(a), self.expr(b)])
        aligned = self._tile_aligned_division(n)
        if aligned is not None:
            return aligned
        if self._divides_int_by_hoisted(n):
            return self._magic_division(n, self.expr(n.src[0]))
        rescaled = self._rescaled_score(n)
        if rescaled is not None:
            return rescaled
        if self._divides_by_hoisted(n):
            # x / c with c known outside the loop (a softcap, a temperature): one reciprocal where c is
            # computed, one multiply per element instead of a division (within an ulp of the quotient).
            reciprocal = node(Op.TRUEDIV, n.dtype, const(1.0, n.dtype), n.src[1])
            self.emit(reciprocal, [])  # hoisted: lands in self.lines, never in the tile's lines
            self.tile_reads.add(reciprocal)
            return RENDER[Op.MUL](n, [self.expr(n.src[0]), self.expr(reciprocal)])
        return RENDER[n.op](n, [self.expr(s) for s in n.src])

    def _converts_a_split_sum(self, n: Node) -> bool:
        if n.op is not Op.CAST or n.dtype is not DType.float32 or n.src[0].op not in (Op.ADD, Op.SUB):
            return False
        total = n.src[0]
        if total.dtype is not DType.int32 or self.level_of(n) is not Level.TILE:
            return False
        # the parts' float sum equals the int32 sum's conversion only where that sum cannot wrap around
        return len({self.level_of(side) for side in total.src}) == 2 and fits_int32(total)

    def _divides_int_by_hoisted(self, n: Node) -> bool:
        if n.op not in (Op.FLOORDIV, Op.MOD) or n.dtype is not DType.int32 or n.src[1].op is Op.CONST:
            return False
        return self.level_of(n) is Level.TILE and self.level_of(n.src[1]) is not Level.TILE

    def _magic_division(self, n: Node, numerator: str) -> str:
        # a // d or a % d with d known outside the loop (a canvas width, a chunk size): its magic multiplier
        # once where d is known, one multiply-high per element instead of a division sequence
        m, shift = self._magic(n.src[1])
        helper = "_floordiv_magic" if n.op is Op.FLOORDIV else "_mod_magic"
        return f"{helper}({numerator}, {self.expr(n.src[1])}, {m}, {shift})"

    def _tile_aligned_division(self, n: Node) -> str | None:
        """`idx // d` or `idx % d` of the tile index (never negative) by a divisor known outside the loop, in the
        cheapest form that is exact for the divisor's value. A positive multiple of the tile length L: a tile
        [s, s + L) with s a multiple of L never crosses a multiple of d, so the quotient is the tile's (s // d,
        one scalar per tile) and the remainder s % d + (idx - s), one add per column (a 2-D canvas whose rows
        span whole tiles: the row is the tile's, the column an offset). Any positive d: the magic multiply-high
        without the sign fixes (a canvas 56 wide). For a parameter the kernel has all three forms and the launch
        picks one (DIVISORS_FLAG); for a constant, Triton picks at compile time. None where `n` is no such
        division."""
        if self.tile_index is None or n.op not in (Op.FLOORDIV, Op.MOD) or n.dtype is not DType.int32:
            return None
        index, divisor = n.src
        if index.op is not Op.VAR or index.arg != self.tile_index.var:
            return None
        start, idx, d = self.tile_index.start, self.expr(index), self.expr(divisor)
        if divisor.op is Op.PARAM and divisor.dtype is DType.int32:
            m, shift = self._magic(divisor)
            tile_quotient = f"_floordiv_magic({start}, {d}, {m}, {shift})"
            quotient = f"_floordiv_magic_nonneg({idx}, {m}, {shift})"
            tiled, positive = f"{DIVISORS_FLAG} == {DIVISORS_TILED}", f"{DIVISORS_FLAG} == {DIVISORS_POSITIVE}"
            self.tile_divisors.add(divisor.arg)
        elif divisor.op is Op.CONST and isinstance(divisor.arg, int) and divisor.arg > 0:
            tile_quotient = f"({start} // {d})"  # both non-negative: truncation floors
            quotient = f"tl.cast(tl.cast({idx}, tl.uint32) // {d}, tl.int32)"
            tiled, positive = f"{d} % {self.tile_index.block} == 0", None
        else:
            return None
        self.aligned_forms += 1
        if n.op is Op.FLOORDIV:
            self.tile_uniform.add(n)
            forms = tile_quotient, quotient
        else:
            forms = f"({start} - {tile_quotient} * {d} + ({idx} - {start}))", f"({idx} - {quotient} * {d})"
        if positive is None:
            return f"({forms[0]} if {tiled} else {forms[1]})"
        general = self._magic_division(n, idx)
        return f"({forms[0]} if {tiled} else ({forms[1]} if {positive} else {general}))"

    def _magic(self, divisor: Node) -> tuple[str, str]:
        """The names of `_div_magic(divisor)`, computed once at the divisor's level and read by tile lines."""
        if divisor not in self.magic:
            self.emit(divisor, [])  # hoisted: a name (or a parameter) at its own level
            k = len(self.magic)
            names = (f"{self.prefix}magic{k}", f"{self.prefix}shift{k}")
            self.lines[self.level_of(divisor)].append(f"{names[0]}, {names[1]} = _div_magic({self.expr(divisor)})")
            self.magic[divisor] = names
            if divisor in self.names:
                self.tile_reads.add(divisor)
        return self.magic[divisor]

    def _interval_test(self, interval: Interval, within: str = "") -> str:
        """`(x - base) as uint32 < width`, the width converted to uint32 once where it is computed; with
        `within`, the width where that holds and 0 elsewhere."""
        width = interval.width
        if width not in self.widths:
            name = self.widths[width] = f"{self.prefix}width{len(self.widths)}"
            self.lines[self.level_of(width)].append(f"{name} = tl.cast({self.expr(width)}, tl.uint32)")
        offset = self.expr(interval.x)
        if interval.base is not const(0, DType.int32):
            offset = f"{offset} - {self.expr(interval.base)}"
        bound = self.widths[width]
        if within:
            bound = f"tl.where({within}, {bound}, tl.cast(0, tl.uint32))"
        return f"(tl.cast({offset}, tl.uint32) < {bound})"

    def _rescaled_score(self, n: Node) -> str | None:
        """`score * k` or `score / c` with k, c known outside the loop (a softcap's `score / cap`, a temperature):
        the unscaled q.k times one hoisted factor, sm_scale * k or sm_scale / c, one multiply per element instead
        of two (within an ulp; a zero or infinite c gives the same infinities and NaNs)."""
        if self.unscaled is None or n.op not in (Op.MUL, Op.TRUEDIV) or not n.dtype.is_float:
            return None
        score_side, other = n.src
        if n.op is Op.MUL and other.op is Op.SCORE:
            score_side, other = other, score_side
        if score_side.op is not Op.SCORE or other.op is Op.SCORE or self.level_of(other) is Level.TILE:
            return None
        if (n.op, other) not in self.factors:
            self.emit(other, [])  # hoisted: lands in self.lines, never in the tile's lines
            name = self.factors[n.op, other] = f"{self.prefix}factor{len(self.factors)}"
            operator = "*" if n.op is Op.MUL else "/"
            self.lines[self.level_of(other)].append(f"{name} = sm_scale {operator} {self.expr(other)}")
        return f"{self.unscaled} * {self.factors[n.op, other]}"

    def _divides_by_hoisted(self, n: Node) -> bool:
        if n.op is not Op.TRUEDIV or not n.dtype.is_float or n.src[1].op is Op.CONST:
            return False
        return self.level_of(n) is Level.TILE and self.level_of(n.src[1]) is not Level.TILE


def render_load(n: Node, index: list[str]) -> str:
    slot = n.arg
    offsets = " + ".join(
        f"tl.cast(tl.minimum(tl.maximum({i}, 0), buf{slot}_size{d} - 1), tl.int64) * buf{slot}_stride{d}"
        for d, i in enumerate(index)
    )
    # a zero-dim tensor (a captured `torch.tensor(5)`) has no index: its one element is at the base pointer
    value = f"tl.load(buf{slot} + {offsets or 0})"
    # narrow integer tensors (int8, int16, uint8) are read as int32; float32 tensors in the compute dtype (a
    # float64 kernel computes with them in float64; for float32 the cast emits nothing)
    return f"tl.cast({value}, {tl_type(n.dtype)})" if n.dtype in (DType.int32, DType.float32) else value


def tile_test_lines(test: TileTest | None) -> list[str]:
    if test is None:
        return ["may_true = True", "may_false = True"]
    block, (may_true, may_false) = Emitter(prefix="c").emit_inline([test.may_true, test.may_false])
    return [*block, f"may_true = {may_true}", f"may_false = {may_false}"]


@dataclasses.dataclass(frozen=True)
class SplitTileTest:
    """A tile test placed by what its terms depend on: `hoisted` lines run once per program tile (parameters,
    b, h and this program's own tile bounds), `per_tile` lines in the loop (the other axis' tile bounds);
    `params` are the hoisted values the per-tile lines read, passed to the visit function."""

    hoisted: list[str]
    params: list[str]
    per_tile: list[str]


def split_tile_test(test: TileTest | None, level_of: Callable[[Node], Level] = level) -> SplitTileTest:
    """`tile_test_lines`, with everything that does not move with the loop hoisted out of it (`level_of`:
    the kernel's levels; the tile bounds of the program's own axis count as that axis)."""
    if test is None:
        return SplitTileTest([], [], ["may_true = True", "may_false = True"])
    emitter = Emitter(prefix="c", level_of=level_of)
    per_tile: list[str] = []
    may_true, may_false = (emitter.emit(root, per_tile) for root in (test.may_true, test.may_false))
    hoisted = emitter.lines[Level.PROGRAM] + emitter.lines[Level.QUERY]
    per_tile += [f"may_true = {may_true}", f"may_false = {may_false}"]
    return SplitTileTest(hoisted, hoisted_names(emitter), per_tile)


def fill(template: str, holes: dict[str, list[str]]) -> str:
    """Replace each `# HOLE: name` line by the hole's lines at that line's indentation."""
    out: list[str] = []
    for line in template.splitlines():
        match = _HOLE.fullmatch(line)
        out += [match["indent"] + code for code in holes[match["name"]]] if match else [line]
    return "\n".join(out) + "\n"


def helper_lines() -> list[str]:
    text = (TEMPLATES / "helpers.py").read_text()
    return [line for line in text.splitlines() if not line.startswith("import ")]


def range_loop_lines(ranges: list[tuple[Node | None, Node | None]], call: str, call_args: list[str], *,
                     axis: str = "kv", full: tuple[Node | None, Node | None] | None = None) -> list[str]:
    """Closed-form ranges of the other axis for this program's tile (from attnc.ir.tiles), then loops over
    their tiles, each calling `call` with `call_args` and a last argument, the tile kind (TESTED: the tile
    test decides; a tile already covered by an earlier range is not visited again). `axis` is the axis the
    loops walk: "kv" (query-major kernels) or "q".

    With one range and a `full` range (every pair of the tile allowed inside it), the range's tiles that lie
    wholly inside the full range and the sequence come first, in a loop of their own (OFF_BAND: no test, no
    mask, no branch, so Triton pipelines and may warp-specialize it); the rest of the range, before and after
    the band, follows as one flat loop of masked tiles (ON_BAND), also without a branch. One range without a
    full range is one loop of masked tiles; only several ranges keep the tile test (TESTED)."""
    start, length, block = ("start_n", "KV_LEN", "BLOCK_N") if axis == "kv" else ("start_m", "Q_LEN", "BLOCK_M")
    split = full is not None and len(ranges) == 1
    present = [bound for pair in ranges + ([full] if split else []) for bound in pair if bound is not None]
    block_lines, exprs = Emitter(prefix="r").emit_inline(present)
    lines, values = list(block_lines), iter(exprs)
    for i, (lo, hi) in enumerate(ranges):
        lo_expr = f"tl.maximum({next(values)}, 0)" if lo is not None else "0"
        hi_expr = f"tl.minimum({next(values)}, {length} - 1)" if hi is not None else f"{length} - 1"
        lines += [f"range_lo{i} = (tl.cast({lo_expr}, tl.int32) // {block}) * {block}",
                  f"range_hi{i} = tl.cast({hi_expr}, tl.int32)"]

    def calls(kind: str) -> list[str]:
        return [f"    {line}" for line in [call, *(f"    {arg}" for arg in call_args), f"    {kind},", ")"]]

    if split:
        lines += _band_lines(full, values, start, length, block)
        lines += [f"for {start} in tl.range(band_lo, band_end, {block}, warp_specialize=WARP_SPECIALIZE):",
                  *calls("OFF_BAND")]
        # the on-band tiles: n_before from range_lo0 up to the band, then the rest from band_end
        lines += [f"n_before = (tl.maximum(band_lo - range_lo0, 0) + {block} - 1) // {block}",
                  f"n_on_band = n_before + (tl.maximum(range_hi0 + 1 - band_end, 0) + {block} - 1) // {block}",
                  "for tile in tl.range(0, n_on_band):",
                  f"    {start} = tl.where(tile < n_before, range_lo0 + tile * {block},"
                  f" band_end + (tile - n_before) * {block})",
                  *calls("ON_BAND")]
        return lines
    if len(ranges) == 1:
        # One range and no full range: every tile masked, none tested, so the loop has no branch and Triton
        # pipelines it (a branch around a tile's work keeps its loads out of the pipeline, which costs more
        # than computing the range's few empty tiles)
        return [*lines, f"for {start} in tl.range(range_lo0, range_hi0 + 1, {block}):", *calls("ON_BAND")]
    for i in range(len(ranges)):
        lines.append(f"for {start} in range(range_lo{i}, range_hi{i} + 1, {block}):")
        unseen = " & ".join(f"(({start} < range_lo{j}) | ({start} > range_hi{j}))" for j in range(i))
        body = [f"if {unseen}:", *calls("TESTED")] if unseen else [line[4:] for line in calls("TESTED")]
        lines += [f"    {line}" for line in body]
    return lines


def _band_lines(full: tuple[Node | None, Node | None], values: Iterator[str], start: str, length: str,
                block: str) -> list[str]:
    """`band_lo` / `band_end`: the tile starts [band_lo, band_end) of range 0 whose tiles lie wholly inside the
    full range and before `length`; both range_hi0 + 1 (no off-band tiles) where there are none."""
    lo, hi = full
    lo_expr = f"tl.minimum(tl.maximum({next(values)}, 0), {length})" if lo is not None else "0"
    hi_expr = f"tl.minimum({next(values)}, {length} - 1)" if hi is not None else f"{length} - 1"
    # all values are clamped non-negative before dividing: Triton's integer division truncates
    return [
        f"full_lo = tl.cast({lo_expr}, tl.int32)",
        f"full_end = tl.maximum(tl.cast({hi_expr}, tl.int32) + 1, 0)",
        f"band_lo = tl.maximum(((full_lo + {block} - 1) // {block}) * {block}, range_lo0)",
        f"band_end = tl.minimum((full_end // {block}) * {block}, range_hi0 + 1)",
        "band_none = band_end <= band_lo",
        "band_lo = tl.where(band_none, range_hi0 + 1, band_lo)",
        "band_end = tl.where(band_none, range_hi0 + 1, band_end)",
    ]


# The constexpr a launch sets where the score mod's last factor is a parameter and its value is positive
# (`attnc.runtime.launch.score_factor_positive`).
FACTOR_FLAG = "SCORE_FACTOR_POSITIVE"


@dataclasses.dataclass(frozen=True)
class ScoreLines:
    """The lines computing a tile's `score` (and `score_log2e`, the base-2 factor its exponent takes), and the
    parameter slot of a last factor the launch must find positive to move it into the exponent."""

    lines: list[str]
    factor_slot: int | None


def score_value_lines(emitter: Emitter, root: Node, broadcast_like: str, per_pair: bool) -> ScoreLines:
    """`score = root` for a score mod `root`, one value per pair of the tile (`per_pair`: the mod reads both
    indices, else it is broadcast like `broadcast_like`). A last factor k > 0 (`x * cap` ending a softcap, a
    temperature) leaves the per-pair multiply: the score is x, and k joins log2(e) in `score_log2e`, which the
    exponent's multiply-add applies (the maximum of k x is k times that of x for k > 0, and -inf stays -inf).
    A constant k is checked here; a parameter by the launch (FACTOR_FLAG), the kernel keeping both forms."""
    lines: list[str] = []
    factor = _positive_last_factor(root)
    value = root if factor is None else factor[0]
    aligned_before = emitter.aligned_forms
    result = emitter.emit(value, lines)
    if not per_pair:
        result = f"{result} + tl.zeros_like({broadcast_like})"
    elif emitter.aligned_forms > aligned_before:  # one value per tile where it reads a tile-aligned division
        result = f"tl.broadcast_to({result}, {broadcast_like}.shape)"
    if factor is None:
        return ScoreLines([*lines, f"score = {result}"], None)
    k = emitter.expr(factor[1])
    if factor[1].op is Op.CONST:
        return ScoreLines([*lines, f"score = {result}", f"score_log2e = tl.full([], LOG2E * {k}, {COMPUTE})"], None)
    return ScoreLines([*lines, f"score = {result} if {FACTOR_FLAG} else {result} * {k}",
                       f"score_log2e = LOG2E * {k} if {FACTOR_FLAG} else tl.full([], LOG2E, {COMPUTE})"],
                      factor[1].arg)


def _positive_last_factor(root: Node) -> tuple[Node, Node] | None:
    """(x, k) for a score mod `x * k` (either order) with k a positive finite float constant or a float
    parameter; None otherwise."""
    if root.op is not Op.MUL or not root.dtype.is_float:
        return None
    for x, k in (root.src, root.src[::-1]):
        if k.op is Op.CONST and type(k.arg) in (int, float) and 0 < k.arg < float("inf"):
            return x, k
        if k.op is Op.PARAM and k.dtype.is_float:
            return x, k
    return None


def mask_lines(emitter: Emitter, root: Node | None) -> list[str]:
    """Lines computing `mask` from the mask's IR (tile-level terms only; the rest is hoisted)."""
    if root is None:
        return ["mask = True"]
    lines: list[str] = []
    result = emitter.emit(root, lines)
    return [*lines, f"mask = {result}"]


def hoisted_names(emitter: Emitter) -> list[str]:
    """The hoisted values tile-level lines read, in emission order, then the divisors' magic numbers, the
    intervals' widths and the score's rescaling factors: the tile function's extra parameters."""
    named = sorted((emitter.names[n] for n in emitter.tile_reads), key=lambda name: int(name[len(emitter.prefix):]))
    return (named + [name for pair in emitter.magic.values() for name in pair] + list(emitter.widths.values())
            + list(emitter.factors.values()))


# The attention kernels' own float scalars. A float64 kernel gets each as its 64 bits in an int64
# (`launch.scalar_argument`), which Triton's JIT would specialise like any integer (an alignment hint where the bits
# are a multiple of 16): a new kernel variant for some scales, and no faster code. Floats are never specialised, so
# the other dtypes' kernels compile as before.
FLOAT_SCALAR_ARGS = ("sm_scale",)


def unspecialized_args(param_args: list[str]) -> list[str]:
    """The attention kernels' arguments the JIT must not specialise on: their float scalars and the mods'
    parameters (runtime values: a new value must not compile a new kernel)."""
    return [*FLOAT_SCALAR_ARGS, *param_args]


def common_holes(captures: list[str], unspecialized: list[str]) -> dict[str, list[str]]:
    """The holes every skeleton has: constants (the arguments in `unspecialized` marked do-not-specialize),
    helpers, and the captured tensors' and parameters' arguments."""
    return {
        "constants": [f"DO_NOT_SPECIALIZE = {unspecialized!r}"],
        "helpers": helper_lines(),
        "capture_args": [f"{name}," for name in captures],
        "capture_pass": [f"{name}," for name in captures],
    }
