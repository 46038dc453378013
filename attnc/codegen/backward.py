"""Fill the backward skeleton: the dK/dV and dQ kernels of a variant, and its captured-tensor gradients.

The score mod's derivatives come from its IR (`attnc.ir.derivative`): dz/dscore scales the score
gradient, and dz/dL for every floating LOAD node L gives that read's contribution to its tensor's
gradient. Both kernels find their tiles the way the forward does (a BlockMask's lists, closed-form ranges
plus the tile test, or every tile); the dK/dV kernel walks the query side (`attnc.ir.transpose`).

Captured-tensor gradients are accumulated by the dQ kernel with atomic adds into buffers of the compute
dtype (float32; float64 for float64 inputs), after reducing each tile by what the read's index depends on: one
add per tile for a per-(b, h) value, one per row for a per-query value, one per column for a per-key value,
one per pair otherwise. A constexpr flag per
tensor (GRAD<slot>) compiles the accumulation out for tensors that need no gradient.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from attnc.codegen.bias import affine_bias, affine_bias_lines
from attnc.codegen.skeleton import (
    TEMPLATES,
    Emitter,
    Level,
    ScoreLines,
    TileIndex,
    capture_arg_names,
    common_holes,
    fill,
    hoisted_names,
    key_major_level,
    mask_lines,
    range_loop_lines,
    score_value_lines,
    split_tile_test,
    unspecialized_args,
)
from attnc.ir.derivative import derivative, gradient_loads
from attnc.ir.magnitude import finite_everywhere
from attnc.ir.node import Node, score
from attnc.ir.program import Program

if TYPE_CHECKING:
    from attnc.ir.tiles import TileTest

Range = tuple[Node | None, Node | None]
DKDV_KERNEL = "attnc_backward_dkdv"
DQ_KERNEL = "attnc_backward_dq"


@dataclasses.dataclass(frozen=True)
class BackwardSource:
    source: str
    capture_args: tuple[str, ...]
    grad_args: tuple[str, ...]  # per differentiable tensor: buffer pointer and strides (constexpr flags apart)
    grad_slots: tuple[int, ...]  # captured tensors the score mod reads as floats, in argument order
    do_not_specialize: tuple[str, ...]
    # the kernels leave out the masked-pair select on the premise that the runtime parameters are finite and not
    # 0 (`dscore_finite`): a launch with other values takes the module generated without that premise
    assumes_params: bool = False
    # parameter slots dividing the tile index in tile-aligned divisions (`attnc.codegen.skeleton.TileIndex`):
    # the dK/dV kernel's (q, by BLOCK_M) and the dQ kernel's (kv, by BLOCK_N)
    dkdv_tile_divisors: tuple[int, ...] = ()
    dq_tile_divisors: tuple[int, ...] = ()
    score_factor: int | None = None  # as `KernelSource.score_factor`, for both kernels


def dscore_finite(program: Program, *, params_finite_nonzero: bool) -> bool:
    """Whether the score mod's dz/dscore is finite at every score (`attnc.ir.magnitude`), so that the kernels
    need not zero it where p is 0; `params_finite_nonzero`: for parameter values that are finite and not 0."""
    return program.score is not None and finite_everywhere(derivative(program.score, score()),
                                                           params_finite_nonzero=params_finite_nonzero)


def grad_slots(program: Program) -> tuple[int, ...]:
    """Captured tensors whose values reach the score through float reads: they can have gradients."""
    if program.score is None:
        return ()
    return tuple(sorted({n.arg for n in gradient_loads(program.score, program.tensors)}))


def _grad_arg_names(program: Program, slots: tuple[int, ...]) -> tuple[list[str], list[str]]:
    """(signature entries, call entries) for each slot's gradient buffer, strides and flag."""
    pointers = [name for slot in slots
                for name in (f"gbuf{slot}", *(f"gbuf{slot}_stride{d}" for d in range(program.tensors[slot].ndim)))]
    flags = [f"GRAD{slot}" for slot in slots]
    return [*pointers, *(f"{flag}: tl.constexpr" for flag in flags)], [*pointers, *flags]


def _score_lines(emitter: Emitter, program: Program) -> ScoreLines:
    """`dscore` and the modified `score` (broadcast to the tile even where the mod ignores an index)."""
    if program.score is None:
        return ScoreLines([], None)
    lines: list[str] = []
    dscore = emitter.emit(derivative(program.score, score()), lines)
    scored = score_value_lines(emitter, program.score, "raw_score", per_pair={"q", "kv"} <= program.score.deps)
    return ScoreLines([*lines, f"dscore = {dscore}", *scored.lines], scored.factor_slot)


def _address(emitter: Emitter, read: Node) -> str:
    """The gradient buffer element of the read's (clamped) index."""
    slot = read.arg
    terms = []
    for d, index in enumerate(read.src):
        if index in emitter.names and emitter.level_of(index) is not Level.TILE:
            emitter.tile_reads.add(index)  # hoisted: the tile function needs it as an argument
        clamped = f"tl.minimum(tl.maximum({emitter.expr(index)}, 0), buf{slot}_size{d} - 1)"
        terms.append(f"tl.cast({clamped}, tl.int64) * gbuf{slot}_stride{d}")
    return f"gbuf{slot} + " + (" + ".join(terms) or "0")  # a zero-dim tensor has no index terms


def _grad_lines(emitter: Emitter, program: Program, slots: tuple[int, ...]) -> list[str]:
    """Per float read: its contributions dz * dz/dL, reduced within the tile by what its index depends
    on, added to its tensor's gradient buffer."""
    if program.score is None or not slots:
        return []
    lines: list[str] = []
    for i, read in enumerate(gradient_loads(program.score, program.tensors)):
        body: list[str] = []
        partial = derivative(program.score, read)
        # the dQ kernel's p and dz are relative to the row maximum: 1 / l normalises them
        contribution = f"dz * inv_l[:, None] * ({emitter.emit(partial, body)})"
        if not finite_everywhere(partial):  # where p is 0 the pair contributes nothing, even if this is not finite
            contribution = f"tl.where(p == 0.0, 0.0, {contribution})"
        body.append(f"g{i} = {contribution}")
        address = _address(emitter, read)
        moving = read.deps & {"q", "kv"}
        if not moving:
            body.append(f"tl.atomic_add({address}, tl.sum(g{i}))")
        elif moving == {"q"}:
            body.append(f"tl.atomic_add({address}, tl.sum(g{i}, 1)[:, None], mask=q_in[:, None])")
        elif moving == {"kv"}:
            body.append(f"tl.atomic_add({address}, tl.sum(g{i}, 0)[None, :], mask=kv_in[None, :])")
        else:
            body.append(f"tl.atomic_add({address}, g{i}, mask=q_in[:, None] & kv_in[None, :])")
        lines += [f"if GRAD{read.arg}:", *(f"    {line}" for line in body)]
    return lines


def generate_backward(program: Program, tile_test: TileTest | None = None, kv_ranges: list[Range] | None = None,
                      q_ranges: list[Range] | None = None, kv_full: Range | None = None,
                      q_full: Range | None = None, *, params_finite_nonzero: bool = True) -> BackwardSource:
    """Both backward kernels for `program`, in one module. `tile_test`, `kv_ranges` and `q_ranges` (from
    attnc.ir.tiles / attnc.ir.transpose) let them find their tiles from the mask's structure; `kv_full` and
    `q_full` (the full ranges) give them off-band loops, as in the forward. `params_finite_nonzero`: the module
    may rely on the runtime parameters being finite and not 0 (`BackwardSource.assumes_params` says if it does)."""
    tensor_args, param_args = capture_arg_names(program)
    captures = tensor_args + param_args
    slots = grad_slots(program)
    grad_signature, grad_call = _grad_arg_names(program, slots)

    bias = affine_bias(program.score)  # then the kernels add the bias themselves, no score mod per element
    # tile-aligned divisions (`TileIndex`) in both kernels, but not in the dQ kernel of a mod with gradients to
    # scatter: their addresses need an index per pair
    dq_tiles = None if slots and program.score is not None else TileIndex("kv", "start_n", "BLOCK_N")
    by_query = Emitter(score_name="raw_score", tile_index=dq_tiles, unscaled="qk")
    scored_q = _score_lines(by_query, program) if bias is None else ScoreLines([], None)
    mask_q = mask_lines(by_query, program.mask)
    grads = _grad_lines(by_query, program, slots)
    by_key = Emitter(level_of=key_major_level, score_name="raw_score",
                     tile_index=TileIndex("q", "start_m", "BLOCK_M"), unscaled="qkt")
    scored_kv = _score_lines(by_key, program) if bias is None else ScoreLines([], None)
    mask_kv = mask_lines(by_key, program.mask)
    hoisted_q, hoisted_kv = hoisted_names(by_query), hoisted_names(by_key)
    test_q, test_kv = split_tile_test(tile_test), split_tile_test(tile_test, key_major_level)

    dq_visit = ["dq, q, do, m2, inv_l, delta, K_head, V_head, K_desc, V_desc,",
                "stride_kn, stride_kd, stride_vn, stride_vd,",
                "start_n, b_idx, h_idx, q_idx, q_in, q_lo, q_hi, sm_scale, qk_scale, KV_LEN,",
                "q_origin, bias_cols, bias_a,",
                *(f"{name}," for name in captures + grad_call + hoisted_q + test_q.params),
                "HEAD_D, HEAD_DV, D_PAD, DV_PAD, BLOCK_N, KV_EVEN, UPCAST, DOT_PRECISION, USE_TMA,",
                "SCALE_POSITIVE, FAST_MATH, TILE_DIVISORS, SCORE_FACTOR_POSITIVE, COMPUTE,"]
    dkdv_visit = ["dk, dv, k, v, Q_head, DO_head, LSE_head, DELTA_head, Q_desc, DO_desc,",
                  "stride_qm, stride_qd, stride_dom, stride_dod, stride_lm, stride_ls,",
                  "start_m, b_idx, h_idx, kv_idx, kv_lo, kv_hi, sm_scale, qk_scale, Q_LEN,",
                  "kv_origin, bias_rows, bias_b, bias_at_origin,",
                  *(f"{name}," for name in captures + hoisted_kv + test_kv.params),
                  "HEAD_D, HEAD_DV, D_PAD, DV_PAD, BLOCK_M, Q_EVEN, UPCAST, DOT_PRECISION, USE_TMA,",
                  "SCALE_POSITIVE, FAST_MATH, TILE_DIVISORS, SCORE_FACTOR_POSITIVE, COMPUTE,"]
    unspecialized = unspecialized_args(param_args)
    common = common_holes(captures, unspecialized)
    common["constants"].append(f"HAS_SCORE_MOD = tl.constexpr({program.score is not None})")
    common["constants"].append(f"AFFINE_BIAS = tl.constexpr({bias is not None})")
    # dz/dscore finite for every score (a softcap's): the kernels need not zero it where p is 0
    finite = dscore_finite(program, params_finite_nonzero=params_finite_nonzero)
    assumes_params = finite and not dscore_finite(program, params_finite_nonzero=False)
    common["constants"].append(f"DSCORE_FINITE = tl.constexpr({finite})")
    holes = {
        **common,
        "grad_args": [f"{name}," for name in grad_signature],
        "grad_pass": [f"{name}," for name in grad_call],
        "hoisted_params_q": [f"{name}," for name in hoisted_q],
        "hoisted_pass_q": [f"{name}," for name in hoisted_q],
        "hoisted_params_kv": [f"{name}," for name in hoisted_kv],
        "hoisted_pass_kv": [f"{name}," for name in hoisted_kv],
        "hoist_program_q": by_query.lines[Level.PROGRAM],
        "hoist_q": by_query.lines[Level.QUERY],
        "hoist_program_kv": by_key.lines[Level.PROGRAM],
        "hoist_kv": by_key.lines[Level.QUERY],
        "score_mod_q": scored_q.lines,
        "mask_mod_q": mask_q,
        "score_mod_kv": scored_kv.lines,
        "mask_mod_kv": mask_kv,
        "grad_accumulate": grads,
        "affine_bias_q": affine_bias_lines(bias),
        "affine_bias_kv": affine_bias_lines(bias),
        "tile_test_q": test_q.per_tile,
        "tile_test_kv": test_kv.per_tile,
        "hoist_tile_test_q": test_q.hoisted,
        "hoist_tile_test_kv": test_kv.hoisted,
        "tile_test_params_q": [f"{name}," for name in test_q.params],
        "tile_test_params_kv": [f"{name}," for name in test_kv.params],
        "kv_ranges": range_loop_lines(kv_ranges or [(None, None)], "dq = _dq_visit(", dq_visit, full=kv_full),
        "q_ranges": range_loop_lines(q_ranges or [(None, None)], "dk, dv = _dkdv_visit(", dkdv_visit, axis="q",
                                     full=q_full),
    }
    source = fill((TEMPLATES / "backward.py").read_text(), holes)
    grad_pointers = tuple(name for name in grad_call if not name.startswith("GRAD"))
    return BackwardSource(source, tuple(captures), grad_pointers, slots, tuple(unspecialized), assumes_params,
                          tuple(sorted(by_key.tile_divisors)), tuple(sorted(by_query.tile_divisors)),
                          scored_q.factor_slot)
