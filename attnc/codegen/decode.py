"""Fill the split-KV decode kernel skeleton with a variant's score mod and mask.

Placement follows the forward's levels, with one difference the skeleton makes harmless: a program's rows
span the query heads of a GQA group, so `h_idx` is a column of row values, and "once per program" terms that
read h are computed once per row (still outside the key loop). The mask is evaluated only on tiles the
launcher does not list as full for the whole group.
"""

from __future__ import annotations

from attnc.codegen.forward import score_lines
from attnc.codegen.skeleton import (
    TEMPLATES,
    Emitter,
    KernelSource,
    Level,
    capture_arg_names,
    common_holes,
    fill,
    hoisted_names,
    mask_lines,
)
from attnc.ir.program import Program

DECODE_KERNEL_NAME = "attnc_decode"


def generate_decode(program: Program) -> KernelSource:
    """The split-KV decode kernel for `program` (its key tiles come from per-(batch, kv head) lists)."""
    emitter = Emitter(unscaled="qk")
    scored = score_lines(emitter, program.score)
    score = scored.lines
    mask = mask_lines(emitter, program.mask)
    hoisted = hoisted_names(emitter)
    tensor_args, param_args = capture_arg_names(program)
    captures = tensor_args + param_args
    holes = {
        **common_holes(captures, param_args),
        "hoisted_params": [f"{name}," for name in hoisted],
        "hoisted_pass": [f"{name}," for name in hoisted],
        "hoist_program": emitter.lines[Level.PROGRAM],
        "hoist_q": emitter.lines[Level.QUERY],
        "score_mod": score,
        "mask_mod": mask,
    }
    # without a score mod the scale folds into the exponent's multiply-add (see the skeleton)
    holes["constants"].append(f"HAS_SCORE_MOD = tl.constexpr({program.score is not None})")
    source = fill((TEMPLATES / "decode.py").read_text(), holes)
    placement = {
        "once per program row (b, h)": tuple(emitter.lines[Level.PROGRAM]),
        "once per program row (q)": tuple(emitter.lines[Level.QUERY]),
        "per tile (kv, score)": tuple(line for line in score if not line.startswith(("score =", "score_log2e ="))),
        "per partial tile only (mask)": tuple(mask[:-1]),
    }
    return KernelSource(source, DECODE_KERNEL_NAME, tuple(captures), tuple(param_args), placement,
                        score_factor=scored.factor_slot)
