"""The optimisation pipeline from traced IR to the IR the analysis and code generator see.

Each step maps a root to an equivalent root; its name is also its debug-dump label. Each step runs the
rules of the steps before it too, so the last one leaves a fixpoint of every rule: optimising an
optimised program changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable

from attnc.ir.fold import fold_constants
from attnc.ir.node import Node
from attnc.ir.program import Program
from attnc.ir.simplify import index_algebra, simplify
from attnc.ir.verify import IRError, verify_program

PIPELINE: tuple[tuple[str, Callable[[Node], Node]], ...] = (
    ("fold", fold_constants),  # operations on constants -> constants
    ("simplify", simplify),  # exact identities (x * 1, where(c, x, x), ~~b, ...) and canonical operand order
    ("index_algebra", index_algebra),  # integer +, -, * through sympy, regrouped by loop level for hoisting
)


def optimize(
    program: Program,
    *,
    check: bool = False,
    on_step: Callable[[str, Program], None] | None = None,
) -> Program:
    """Run `PIPELINE` on the mask and score roots. `check=True` verifies the input and the program after
    every step; `on_step(name, program)` sees the program after each step (debug dumps)."""
    if check:
        _verify("input", program)
    for name, step in PIPELINE:
        program = program.replace(**{key: step(root) for key, root in program.roots().items()})
        if check:
            _verify(name, program)
        if on_step is not None:
            on_step(name, program)
    return program


def _verify(step: str, program: Program) -> None:
    try:
        verify_program(program)
    except IRError as error:
        raise IRError(f"after {step}: {error}") from error
