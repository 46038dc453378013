"""Integer division by zero is an error on every backend, checked before a call runs.

PyTorch raises on an integer `//`, `%` or fmod by zero; a GPU kernel would compute garbage silently. So
a constant zero divisor is refused when the mod is traced (`attnc.dsl.semantics`), and every other
integer divisor (one that reads parameters, captured tensors or the indices) is evaluated here, before
either backend runs, at every (b, h, q_idx, kv_idx) of the call: on the grid of the indices it depends on
only, in chunks of rows. As in PyTorch, whose torch.where computes both branches, a zero divisor is an
error even where the quotient is not selected. The result is remembered until the shape, a parameter or
a captured tensor (its version) changes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from attnc.ir.interpret import Env, evaluate, index_grids
from attnc.ir.node import Node
from attnc.ir.ops import INT_DIVISIONS, Op
from attnc.ir.program import Program

_CHUNK_ELEMENTS = 1 << 24  # divisor values held at once
_VERB = {Op.FLOORDIV: "division", Op.MOD: "modulo", Op.FMOD: "fmod"}


class DivisionByZero(ZeroDivisionError, ValueError):
    """An integer divisor of a mod is zero somewhere in a call."""


@dataclasses.dataclass(frozen=True)
class Division:
    node: Node  # the FLOORDIV / MOD / FMOD node
    root: str  # "mask" or "score"


def runtime_divisions(program: Program) -> list[Division]:
    """The integer divisions whose divisor is not a non-zero constant, operands before users."""
    found: list[Division] = []
    for name, root in program.roots().items():
        for n in root.walk():
            if n.op in INT_DIVISIONS and n.dtype.is_int and not (n.src[1].op is Op.CONST and n.src[1].arg != 0):
                found.append(Division(n, name))
    return found


class DivisorCheck:
    """Raises DivisionByZero for a call whose divisors take the value 0; remembers the last call checked."""

    def __init__(self, program: Program) -> None:
        self.program = program
        self.divisions = runtime_divisions(program)
        self._checked: tuple | None = None

    def check(self, sizes: tuple[int, int, int, int], tensors: Sequence[torch.Tensor],
              params: Sequence[int | float], version: tuple, device: torch.device, *, score: bool = True) -> None:
        divisions = [d for d in self.divisions if score or d.root == "mask"]
        if not divisions:
            return
        key = (sizes, tuple(params), version, str(device), score)
        if key == self._checked:
            return
        for division in divisions:
            _check_division(division, sizes, tensors, params, device, self.program)
        self._checked = key


def _check_division(division: Division, sizes: tuple[int, int, int, int], tensors: Sequence[torch.Tensor],
                    params: Sequence[int | float], device: torch.device, program: Program) -> None:
    divisor = division.node.src[1]
    B, H, Q, KV = (n if name in divisor.deps else min(n, 1) for n, name in zip(sizes, ("b", "h", "q", "kv"),
                                                                                 strict=True))
    b, h, q, kv = index_grids(B, H, Q, KV, device)
    rows = max(1, _CHUNK_ELEMENTS // max(1, B * H * KV))
    for start in range(0, Q, rows):
        env = Env(b=b, h=h, q=q[:, :, start:start + rows], kv=kv, tensors=tensors, params=params)
        zero = evaluate(divisor, env) == 0
        if bool(zero.any()):
            where = [int(i) for i in torch.nonzero(zero.expand(*_grid_shape(env)))[0]]
            where[2] += start
            raise DivisionByZero(_message(division, where, program))


def _grid_shape(env: Env) -> tuple[int, ...]:
    return tuple(torch.broadcast_shapes(env.b.shape, env.h.shape, env.q.shape, env.kv.shape))


def _message(division: Division, where: list[int], program: Program) -> str:
    reads = [f"parameter {program.params[n.arg].name!r}" for n in division.node.src[1].walk() if n.op is Op.PARAM]
    reads += [f"captured tensor t{n.arg}" for n in division.node.src[1].walk() if n.op is Op.LOAD]
    names = (("b", "b"), ("h", "h"), ("q_idx", "q"), ("kv_idx", "kv"))
    position = ", ".join(f"{shown}={i}" for (shown, var), i in zip(names, where, strict=True)
                         if var in division.node.src[1].deps)
    return (f"attnc: integer {_VERB[division.node.op]} by zero in the {division.root} mod: the divisor"
            f"{' (reading ' + ', '.join(dict.fromkeys(reads)) + ')' if reads else ''} is 0"
            f"{' at ' + position if position else ''}. As in PyTorch, an integer divisor must not be 0 "
            "anywhere, even where the quotient is not used (torch.where computes both branches)")
