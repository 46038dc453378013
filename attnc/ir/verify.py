"""The verifier: checks the IR conventions every pass, the interpreter and the code generator rely on.

It is a pass like any other: tests run it after every step of the pipeline. A failure means a bug in
the front end or in a pass, never a user error, so the messages name the offending node precisely.
"""

from __future__ import annotations

from collections.abc import Callable

from attnc.ir.dtypes import INDEX, SCORE, DType
from attnc.ir.node import Node
from attnc.ir.ops import (
    ARITH,
    BINARY,
    COMPARE,
    FLOAT_UNARY,
    INDEX_VARS,
    LEAVES,
    LOGIC,
    NUMERIC_UNARY,
    SHIFT,
    TILE_VARS,
    UNARY,
    Op,
)
from attnc.ir.printer import describe
from attnc.ir.program import Program


class IRError(Exception):
    """An IR expression breaks the conventions of the IR."""


def verify(root: Node, *, is_mask: bool, program: Program | None = None) -> None:
    """Raise `IRError` unless `root` is a well-formed mask (bool, no score) or score mod (float32).

    With `program`, LOAD and PARAM slots are also checked against its tensors and params."""
    _check_root(root, is_mask)
    for n in root.walk():
        _check_shape(n)
        _CHECKS.get(n.op, _check_nothing)(n)
        if program is not None:
            _check_slots(n, program)


def verify_program(program: Program) -> None:
    if program.mask is not None:
        verify(program.mask, is_mask=True, program=program)
    if program.score is not None:
        verify(program.score, is_mask=False, program=program)


def _require(ok: bool, n: Node, message: str) -> None:
    if not ok:
        raise IRError(f"{describe(n)}: {message}")


def _check_root(root: Node, is_mask: bool) -> None:
    if is_mask:
        _require(root.dtype.is_bool, root, "a mask must be bool")
        _require(not root.uses_score, root, "a mask cannot read the score")
    else:
        _require(root.dtype is SCORE, root, f"a score mod must be {SCORE.value}")


def _arity(op: Op) -> int | None:
    if op in LEAVES:
        return 0
    if op in UNARY:
        return 1
    if op in BINARY:
        return 2
    return 3 if op is Op.WHERE else None  # LOAD: one index per tensor dim, checked against the program


def _check_shape(n: Node) -> None:
    arity = _arity(n.op)
    _require(arity is None or len(n.src) == arity, n, f"expects {arity} operands, got {len(n.src)}")
    if n.op not in LEAVES and n.op is not Op.LOAD:
        _require(n.arg is None, n, f"takes no argument, got {n.arg!r}")


# -- per-op checks --------------------------------------------------------------------------------


def _check_nothing(n: Node) -> None:
    return None


def _same_operands(n: Node) -> bool:
    return all(s.dtype is n.dtype for s in n.src)


def _is_slot(arg: object) -> bool:
    return type(arg) is int and arg >= 0


_INT_RANGE = {DType.int32: (-(2**31), 2**31 - 1), DType.int64: (-(2**63), 2**63 - 1)}


def _check_var(n: Node) -> None:
    _require(n.arg in INDEX_VARS or n.arg in TILE_VARS, n,
             f"index variables are {', '.join(INDEX_VARS)} (and tile bounds {', '.join(TILE_VARS)})")
    _require(n.dtype is INDEX, n, f"index variables are {INDEX.value}")


def _check_score(n: Node) -> None:
    _require(n.dtype is SCORE and n.arg is None, n, f"the score is an argument-less {SCORE.value}")


def _check_const(n: Node) -> None:
    kind = bool if n.dtype.is_bool else int if n.dtype.is_int else float
    _require(type(n.arg) is kind, n, f"value {n.arg!r} is not normalised to {n.dtype.value}")
    if n.dtype in _INT_RANGE:
        low, high = _INT_RANGE[n.dtype]
        _require(low <= n.arg <= high, n, f"value {n.arg} is out of range")


def _check_param(n: Node) -> None:
    _require(_is_slot(n.arg), n, f"slot must be a non-negative int, got {n.arg!r}")
    _require(n.dtype in (DType.int32, DType.float32), n, "runtime parameters are int32 or float32")


def _check_load(n: Node) -> None:
    _require(_is_slot(n.arg), n, f"slot must be a non-negative int, got {n.arg!r}")
    _require(all(s.dtype.is_int for s in n.src), n, "tensor indices must be integers")


def _check_float_unary(n: Node) -> None:
    _require(n.dtype.is_float and _same_operands(n), n, "needs a float operand of the node's dtype")


def _check_numeric_unary(n: Node) -> None:
    _require(not n.dtype.is_bool and _same_operands(n), n, "needs a numeric operand of the node's dtype")


def _check_not(n: Node) -> None:
    _require(n.dtype.is_bool and _same_operands(n), n, "needs a bool operand")


def _check_arith(n: Node) -> None:
    _require(not n.dtype.is_bool, n, "arithmetic on bool is not in the IR (use and/or/xor)")
    _require(_same_operands(n), n, "operands must have the node's dtype (cast them first)")
    _require(n.op is not Op.TRUEDIV or n.dtype.is_float, n, "true division yields a float")


def _check_logic(n: Node) -> None:
    _require(not n.dtype.is_float, n, "logic needs bool or integer operands")
    _require(_same_operands(n), n, "operands must have the node's dtype")


def _check_shift(n: Node) -> None:
    _require(n.dtype.is_int and _same_operands(n), n, "shifts need integer operands of the node's dtype")


def _check_compare(n: Node) -> None:
    _require(n.dtype.is_bool, n, "a comparison yields bool")
    _require(n.src[0].dtype is n.src[1].dtype, n, "compared operands must share a dtype")


def _check_where(n: Node) -> None:
    cond, if_true, if_false = n.src
    _require(cond.dtype.is_bool, n, "the condition must be bool")
    _require(if_true.dtype is n.dtype and if_false.dtype is n.dtype, n, "both branches need the node's dtype")


_CHECKS: dict[Op, Callable[[Node], None]] = {
    Op.VAR: _check_var, Op.SCORE: _check_score, Op.CONST: _check_const, Op.PARAM: _check_param,
    Op.LOAD: _check_load, Op.NOT: _check_not, Op.WHERE: _check_where,
    **dict.fromkeys(FLOAT_UNARY, _check_float_unary),
    **dict.fromkeys(NUMERIC_UNARY, _check_numeric_unary),
    **dict.fromkeys(ARITH, _check_arith),
    **dict.fromkeys(LOGIC, _check_logic),
    **dict.fromkeys(SHIFT, _check_shift),
    **dict.fromkeys(COMPARE, _check_compare),
}


def _check_slots(n: Node, program: Program) -> None:
    if n.op is Op.PARAM:
        _require(n.arg < len(program.params), n, f"no runtime parameter in slot {n.arg}")
        spec = program.params[n.arg]
        _require(n.dtype is spec.dtype, n, f"parameter {spec.name!r} is {spec.dtype.value}")
    elif n.op is Op.LOAD:
        _require(n.arg < len(program.tensors), n, f"no captured tensor in slot {n.arg}")
        tensor = program.tensors[n.arg]
        _require(len(n.src) == tensor.ndim, n, f"tensor t{n.arg} has {tensor.ndim} dims")
        _require(n.dtype is tensor.dtype, n, f"tensor t{n.arg} loads as {tensor.dtype.value}")
