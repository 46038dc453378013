"""Fill the forward kernel skeleton with a variant's score mod and mask.

Expressions are placed by what they depend on: b/h-only and q-only terms are computed once per program
(outside the key loop) and passed to the tile function; everything else is computed per tile. The
mask's per-tile terms go inside `if APPLY_MASK:` so full tiles never evaluate them.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from pathlib import Path

from attnc.codegen.emit import RENDER, literal
from attnc.ir.dtypes import DType
from attnc.ir.node import Node
from attnc.ir.ops import Op
from attnc.ir.program import Program

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

    def __init__(self) -> None:
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
            self.names[n] = f"t{len(self.names)}"
            code = f"{self.names[n]} = {self.render(n)}"
            lvl = level(n)
            (tile_lines if lvl is Level.TILE else self.lines[lvl]).append(code)
            if lvl is Level.TILE:
                self.tile_reads.update(s for s in n.src if s in self.names and level(s) is not Level.TILE)
        if root in self.names and level(root) is not Level.TILE:
            self.tile_reads.add(root)
        return self.expr(root)

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


def generate_forward(program: Program) -> KernelSource:
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
    }
    source = _fill((TEMPLATES / "forward.py").read_text(), holes)
    placement = {
        "once per program (b, h)": tuple(emitter.lines[Level.PROGRAM]),
        "once per query tile (q)": tuple(emitter.lines[Level.QUERY]),
        "per tile (kv, score)": tuple(score[:-1]),
        "per partial tile only (mask)": tuple(mask[:-1]),
    }
    return KernelSource(source, KERNEL_NAME, tuple(captures), tuple(param_args), placement)
