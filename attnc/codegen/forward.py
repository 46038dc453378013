"""Fill the forward kernel skeleton with a variant's score mod and mask.

Expressions are placed by what they depend on: b/h-only and q-only terms are computed once per program
(outside the key loop) and passed to the tile function; everything else is computed per tile. The
mask's per-tile terms go inside `if apply_mask:` so full tiles never evaluate them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from attnc.codegen.bias import affine_bias, affine_bias_lines
from attnc.codegen.skeleton import (
    TEMPLATES,
    Emitter,
    KernelSource,
    Level,
    ScoreLines,
    TileIndex,
    capture_arg_names,
    common_holes,
    fill,
    hoisted_names,
    mask_lines,
    range_loop_lines,
    score_value_lines,
    split_tile_test,
    unspecialized_args,
)
from attnc.ir.node import Node
from attnc.ir.program import Program

if TYPE_CHECKING:
    from attnc.ir.tiles import TileTest

KERNEL_NAME = "attnc_forward"


def score_lines(emitter: Emitter, root: Node | None) -> ScoreLines:
    if root is None:
        return ScoreLines([], None)
    # A score mod that ignores the key index still yields one value per (q, kv) pair.
    return score_value_lines(emitter, root, "score", per_pair="kv" in root.deps)


def _visit_args(captures: list[str], hoisted: list[str], test_params: list[str]) -> list[str]:
    return ["acc, l_i, m_i, q, K_head, V_head, K_desc, V_desc, stride_kn, stride_kd, stride_vn, stride_vd,",
            "start_n, b_idx, h_idx, q_idx, q_lo, q_hi, sm_scale, qk_scale, KV_LEN,",
            "q_origin, bias_cols, bias_kv, bias_at_q0,",
            *(f"{name}," for name in captures + hoisted + test_params),
            "HEAD_D, HEAD_DV, D_PAD, DV_PAD, BLOCK_N, KV_EVEN, UPCAST, DOT_PRECISION, USE_TMA,",
            "SCALE_POSITIVE, FAST_MATH, TILE_DIVISORS, SCORE_FACTOR_POSITIVE, COMPUTE,"]


def generate_forward(program: Program, tile_test: TileTest | None = None,
                     kv_ranges: list[tuple[Node | None, Node | None]] | None = None,
                     kv_full: tuple[Node | None, Node | None] | None = None) -> KernelSource:
    """The forward kernel for `program`. `tile_test` and `kv_ranges` (from attnc.ir.tiles) let the kernel
    find its key tiles from the mask's structure when no BlockMask is given; without them it visits
    every tile and masks each. `kv_full` (`attnc.ir.tiles.kv_full_range`) splits a single key range into
    on-band tiles (tested, masked) and off-band tiles (neither)."""
    emitter = Emitter(tile_index=TileIndex("kv", "start_n", "BLOCK_N"), unscaled="qk")
    bias = affine_bias(program.score)
    scored = score_lines(emitter, None if bias is not None else program.score)
    score = scored.lines
    mask = mask_lines(emitter, program.mask)
    hoisted = hoisted_names(emitter)
    test = split_tile_test(tile_test)
    tensor_args, param_args = capture_arg_names(program)
    captures = tensor_args + param_args
    unspecialized = unspecialized_args(param_args)
    common = common_holes(captures, unspecialized)
    # without a score mod the scale folds into the exponent's multiply-add (see the skeleton)
    common["constants"].append(f"HAS_SCORE_MOD = tl.constexpr({program.score is not None})")
    common["constants"].append(f"AFFINE_BIAS = tl.constexpr({bias is not None})")
    holes = {
        **common,
        "hoisted_params": [f"{name}," for name in hoisted],
        "hoisted_pass": [f"{name}," for name in hoisted],
        "hoist_program": emitter.lines[Level.PROGRAM],
        "hoist_q": emitter.lines[Level.QUERY],
        "score_mod": score,
        "affine_bias": affine_bias_lines(bias),
        "mask_mod": mask,
        "tile_test": test.per_tile,
        "hoist_tile_test": test.hoisted,
        "tile_test_params": [f"{name}," for name in test.params],
        "kv_ranges": range_loop_lines(kv_ranges or [(None, None)], "acc, l_i, m_i = _visit_tile(",
                                      _visit_args(captures, hoisted, test.params), full=kv_full),
    }
    source = fill((TEMPLATES / "forward.py").read_text(), holes)
    placement = {
        "once per program (b, h)": tuple(emitter.lines[Level.PROGRAM]),
        "once per query tile (q)": tuple(emitter.lines[Level.QUERY]),
        "per tile (kv, score)": tuple(line for line in score if not line.startswith(("score =", "score_log2e ="))),
        "per partial tile only (mask)": tuple(mask[:-1]),
    }
    return KernelSource(source, KERNEL_NAME, tuple(captures), tuple(unspecialized), placement,
                        tuple(sorted(emitter.tile_divisors)), scored.factor_slot)
