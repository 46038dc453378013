"""Fill the block-map builder skeleton with a variant's mask.

The builder classifies every (query block, key block) of a mask as EMPTY / PARTIAL / FULL on the device,
for masks whose structure does not decide every block on its own: a mask that reads a tensor at a
position given by one index argument moving with both q and kv (`table[q - kv]`) must be evaluated pair by pair
somewhere, and doing it in one generated kernel keeps the work on the GPU, bounded in memory and free of
Python overhead. Blocks the tile test decides are never evaluated element by element.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from attnc.codegen.skeleton import TEMPLATES, Emitter, KernelSource, Level, capture_arg_names, common_holes, fill
from attnc.ir.program import Program

if TYPE_CHECKING:
    from attnc.ir.tiles import TileTest

KERNEL_NAME = "attnc_block_map"


def _tile_test_lines(test: TileTest | None) -> list[str]:
    # Both verdicts become int1 scalars even when they fold to a Python literal, so the skeleton's
    # `tl.where` and `&` see tensors.
    if test is None:
        return ["may_true = tl.full([], 1, tl.int1)", "may_false = tl.full([], 1, tl.int1)"]
    block, (may_true, may_false) = Emitter(prefix="c").emit_inline([test.may_true, test.may_false])
    return [*block, f"may_true = tl.zeros([], tl.int1) | ({may_true})",
            f"may_false = tl.zeros([], tl.int1) | ({may_false})"]


def generate_block_map(program: Program, tile_test: TileTest | None = None) -> KernelSource:
    """The block-map builder for `program.mask` (which must be present). `tile_test` (attnc.ir.tiles)
    decides the blocks it can from the mask's structure; the others are evaluated pair by pair."""
    if program.mask is None:
        raise ValueError("generate_block_map: the program has no mask; every block is full")
    emitter = Emitter()
    tile_lines: list[str] = []
    result = emitter.emit(program.mask, tile_lines)
    tensor_args, param_args = capture_arg_names(program)
    holes = {
        **common_holes(tensor_args + param_args, param_args),
        "hoist_program": emitter.lines[Level.PROGRAM],
        "hoist_q": emitter.lines[Level.QUERY],
        "mask_mod": [*tile_lines, f"mask = {result}"],
        "tile_test": _tile_test_lines(tile_test),
    }
    source = fill((TEMPLATES / "block_map.py").read_text(), holes)
    placement = {
        "once per program (b, h)": tuple(emitter.lines[Level.PROGRAM]),
        "once per query rows (q)": tuple(emitter.lines[Level.QUERY]),
        "per pair, undecided blocks only": tuple(tile_lines),
    }
    return KernelSource(source, KERNEL_NAME, tuple(tensor_args + param_args), tuple(param_args), placement)
