"""Fill the forward kernel skeleton with a variant's score mod and mask.

Expressions are placed by what they depend on: b/h-only and q-only terms are computed once per program
(outside the key loop) and passed to the tile function; everything else is computed per tile. The
mask's per-tile terms go inside `if apply_mask:` so full tiles never evaluate them.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from pathlib import Path
from typing import TYPE_CHECKING

from attnc.codegen.emit import RENDER, literal
from attnc.ir.dtypes import DType
from attnc.ir.node import Node
from attnc.ir.ops import Op
from attnc.ir.program import Program

if TYPE_CHECKING:
    from attnc.ir.tiles import TileTest

TEMPLATES = Path(__file__).parent / "templates"
CODEGEN_VERSION = "1"
KERNEL_NAME = "attnc_forward"
_HOLE = re.compile(r"(?P<indent>[ \t]*)# HOLE: (?P<name>\w+)")


class Level(enum.IntEnum):
    """Where a value is computed: the outermost place all its inputs are known."""

    PROGRAM = 0  # depends on b, h only
    QUERY = 1  # depends on q, not kv
    TILE = 2  # depends on kv or the score


def level(n: Node) -> Level:
    if n.deps & {"kv", "score"}:
        return Level.TILE
    return Level.QUERY if "q" in n.deps else Level.PROGRAM


@dataclasses.dataclass(frozen=True)
class KernelSource:
    source: str
    kernel_name: str
    capture_args: tuple[str, ...]  # generated arguments, in signature order
    do_not_specialize: tuple[str, ...]
    placement: dict[str, tuple[str, ...]]  # level name -> the generated lines computed there

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


class _Emitter:
    """Names every interior node once and renders it at its level."""

    def __init__(self, prefix: str = "t") -> None:
        self.prefix = prefix
        self.names: dict[Node, str] = {}
        self.lines: dict[Level, list[str]] = {lvl: [] for lvl in Level}
        self.tile_reads: set[Node] = set()

    def expr(self, n: Node) -> str:
        if n.op is Op.VAR:
            return {"b": "b_idx", "h": "h_idx", "q": "q_idx", "kv": "kv_idx"}.get(n.arg, n.arg)
        if n.op is Op.SCORE:
            return "score"
        if n.op is Op.CONST:
            return literal(n.arg, n.dtype)
        if n.op is Op.PARAM:
            return f"param{n.arg}"
        return self.names[n]

    def emit(self, root: Node, tile_lines: list[str]) -> str:
        """Emit every node of `root`'s DAG not yet emitted; return the root's expression."""
        for n in root.walk():
            if n in self.names or n.op in (Op.VAR, Op.SCORE, Op.CONST, Op.PARAM):
                continue
            self.names[n] = f"{self.prefix}{len(self.names)}"
            code = f"{self.names[n]} = {self.render(n)}"
            lvl = level(n)
            (tile_lines if lvl is Level.TILE else self.lines[lvl]).append(code)
            if lvl is Level.TILE:
                self.tile_reads.update(s for s in n.src if s in self.names and level(s) is not Level.TILE)
        if root in self.names and level(root) is not Level.TILE:
            self.tile_reads.add(root)
        return self.expr(root)

    def emit_inline(self, roots: list[Node]) -> tuple[list[str], list[str]]:
        """Emit `roots` as one straight-line block (levels in order, which is a topological order);
        return the block and each root's expression."""
        tile_lines: list[str] = []
        results = [self.emit(root, tile_lines) for root in roots]
        return self.lines[Level.PROGRAM] + self.lines[Level.QUERY] + tile_lines, results

    def render(self, n: Node) -> str:
        if n.op is Op.LOAD:
            return _render_load(n, [self.expr(s) for s in n.src])
        return RENDER[n.op](n, [self.expr(s) for s in n.src])


def _render_load(n: Node, index: list[str]) -> str:
    slot = n.arg
    offsets = " + ".join(
        f"tl.cast(tl.minimum(tl.maximum({i}, 0), buf{slot}_size{d} - 1), tl.int64) * buf{slot}_stride{d}"
        for d, i in enumerate(index)
    )
    value = f"tl.load(buf{slot} + {offsets})"
    # narrow integer tensors (int8, int16, uint8) are read as int32
    return f"tl.cast({value}, tl.int32)" if n.dtype is DType.int32 else value


def _score_lines(emitter: _Emitter, root: Node | None) -> list[str]:
    if root is None:
        return []
    lines: list[str] = []
    result = emitter.emit(root, lines)
    # A score mod that ignores the key index still yields one value per (q, kv) pair.
    broadcast = "" if "kv" in root.deps else " + tl.zeros_like(score)"
    return [*lines, f"score = {result}{broadcast}"]


def _mask_lines(emitter: _Emitter, root: Node | None) -> list[str]:
    if root is None:
        return ["mask = True"]
    lines: list[str] = []
    result = emitter.emit(root, lines)
    return [*lines, f"mask = {result}"]


def _tile_test_lines(test: TileTest | None) -> list[str]:
    if test is None:
        return ["may_true = True", "may_false = True"]
    block, (may_true, may_false) = _Emitter(prefix="c").emit_inline([test.may_true, test.may_false])
    return [*block, f"may_true = {may_true}", f"may_false = {may_false}"]


def _kv_range_lines(ranges: list[tuple[Node | None, Node | None]], visit_args: list[str]) -> list[str]:
    """Closed-form key ranges of the query tile [q_lo, q_hi], then one loop per range over its tiles;
    a tile already covered by an earlier range is not visited again."""
    present = [bound for pair in ranges for bound in pair if bound is not None]
    block, exprs = _Emitter(prefix="r").emit_inline(present)
    lines, values = list(block), iter(exprs)
    for i, (lo, hi) in enumerate(ranges):
        lo_expr = f"tl.maximum({next(values)}, 0)" if lo is not None else "0"
        hi_expr = f"tl.minimum({next(values)}, KV_LEN - 1)" if hi is not None else "KV_LEN - 1"
        lines += [f"range_lo{i} = (tl.cast({lo_expr}, tl.int32) // BLOCK_N) * BLOCK_N",
                  f"range_hi{i} = tl.cast({hi_expr}, tl.int32)"]
    call = ["acc, l_i, m_i = _visit_tile(", *(f"    {arg}" for arg in visit_args), ")"]
    for i in range(len(ranges)):
        lines.append(f"for start_n in range(range_lo{i}, range_hi{i} + 1, BLOCK_N):")
        unseen = " & ".join(f"((start_n < range_lo{j}) | (start_n > range_hi{j}))" for j in range(i))
        body = [f"if {unseen}:", *(f"    {line}" for line in call)] if unseen else call
        lines += [f"    {line}" for line in body]
    return lines


def _visit_args(captures: list[str], hoisted: list[str]) -> list[str]:
    return ["acc, l_i, m_i, q, K_head, V_head, stride_kn, stride_kd, stride_vn, stride_vd,",
            "start_n, b_idx, h_idx, q_idx, q_lo, q_hi, sm_scale, KV_LEN,",
            *(f"{name}," for name in captures + hoisted),
            "HEAD_D, HEAD_DV, D_PAD, DV_PAD, BLOCK_N, KV_EVEN, UPCAST, DOT_PRECISION,"]


def _fill(template: str, holes: dict[str, list[str]]) -> str:
    """Replace each `# HOLE: name` line by the hole's lines at that line's indentation."""
    out: list[str] = []
    for line in template.splitlines():
        match = _HOLE.fullmatch(line)
        out += [match["indent"] + code for code in holes[match["name"]]] if match else [line]
    return "\n".join(out) + "\n"


def _helpers() -> list[str]:
    text = (TEMPLATES / "helpers.py").read_text()
    return [line for line in text.splitlines() if not line.startswith("import ")]


def generate_forward(program: Program, tile_test: TileTest | None = None,
                     kv_ranges: list[tuple[Node | None, Node | None]] | None = None) -> KernelSource:
    """The forward kernel for `program`. `tile_test` and `kv_ranges` (from attnc.ir.tiles) let the kernel
    find its key tiles from the mask's structure when no BlockMask is given; without them it visits
    every tile and masks each."""
    emitter = _Emitter()
    score = _score_lines(emitter, program.score)
    mask = _mask_lines(emitter, program.mask)
    hoisted = sorted((emitter.names[n] for n in emitter.tile_reads), key=lambda name: int(name[1:]))
    tensor_args, param_args = capture_arg_names(program)
    captures = tensor_args + param_args
    holes = {
        "constants": [f"DO_NOT_SPECIALIZE = {param_args!r}"],
        "helpers": _helpers(),
        "capture_args": [f"{name}," for name in captures],
        "capture_pass": [f"{name}," for name in captures],
        "hoisted_params": [f"{name}," for name in hoisted],
        "hoisted_pass": [f"{name}," for name in hoisted],
        "hoist_program": emitter.lines[Level.PROGRAM],
        "hoist_q": emitter.lines[Level.QUERY],
        "score_mod": score,
        "mask_mod": mask,
        "tile_test": _tile_test_lines(tile_test),
        "kv_ranges": _kv_range_lines(kv_ranges or [(None, None)], _visit_args(captures, hoisted)),
    }
    source = _fill((TEMPLATES / "forward.py").read_text(), holes)
    placement = {
        "once per program (b, h)": tuple(emitter.lines[Level.PROGRAM]),
        "once per query tile (q)": tuple(emitter.lines[Level.QUERY]),
        "per tile (kv, score)": tuple(score[:-1]),
        "per partial tile only (mask)": tuple(mask[:-1]),
    }
    return KernelSource(source, KERNEL_NAME, tuple(captures), tuple(param_args), placement)
