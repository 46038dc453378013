"""Hypothesis strategies for random well-typed IR and the environments to evaluate it in.

Expressions range over the index variables, two runtime parameters (int32 slot 0, float32 slot 1) and
three captured tensors (`TENSORS`): a 1-D int32 table, a 2-D float32 table and a 1-D bool table. Integer
division and modulo are by nonzero constants and integer powers by small non-negative constants, so
evaluation never raises; everything else (overflow, NaN, inf, -0.0) is fair game.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from hypothesis import strategies as st

from attnc.ir import DType, Node, Op, ParamSpec, Program, TensorSpec, const, load, node, param, score, var
from attnc.ir.interpret import Env
from attnc.ir.ops import COMPARE, FLOAT_UNARY, INDEX_VARS

I32, I64, F16, F32, BOOL = DType.int32, DType.int64, DType.float16, DType.float32, DType.bool
INT_TABLE, FLOAT_TABLE, BOOL_TABLE = 0, 1, 2
TENSORS = (TensorSpec(I32, 1), TensorSpec(F32, 2), TensorSpec(BOOL, 1))
PARAMS = (ParamSpec(I32, "n"), ParamSpec(F32, "temperature"))
TABLE_SHAPES = ((7,), (3, 5), (4,))
GRID_SHAPES = ([-1, 1, 1, 1], [1, -1, 1, 1], [1, 1, -1, 1], [1, 1, 1, -1])  # b, h, q, kv

Strategy = st.SearchStrategy[Node]
Sub = Callable[[DType], Strategy]

_SPECIAL_FLOATS = (0.0, -0.0, 1.0, -1.0, 0.5, 2.0, math.inf, -math.inf, math.nan)
int32_values = st.one_of(st.integers(-8, 8), st.integers(-(2**31), 2**31 - 1))


def exprs(dtype: DType, depth: int = 4, *, with_score: bool = False) -> Strategy:
    """Random expressions of type `dtype`, at most `depth` operations deep."""
    return _exprs(dtype, depth, with_score)


def masks(depth: int = 4) -> Strategy:
    return exprs(BOOL, depth)


def score_mods(depth: int = 4) -> Strategy:
    return exprs(F32, depth, with_score=True)


@st.composite
def programs(draw: st.DrawFn, depth: int = 4) -> Program:
    mask = draw(st.none() | masks(depth))
    score_mod = draw(st.none() | score_mods(depth))
    return Program(mask=mask, score=score_mod, tensors=TENSORS, params=PARAMS)


# An explicit draw picks the operation (rather than `st.one_of` over operation strategies, which
# flattens mapped sub-strategies into its branches and so favours unary chains); shrinking goes to leaves.
@st.composite
def _exprs(draw: st.DrawFn, dtype: DType, depth: int, with_score: bool) -> Node:
    if depth == 0 or draw(st.integers(0, 4)) == 0:
        return draw(_LEAVES[dtype](with_score))
    build = draw(st.sampled_from(_OPERATIONS[dtype]))
    return build(draw, lambda d: _exprs(d, depth - 1, with_score))


# -- leaves ---------------------------------------------------------------------------------------


def _int32_leaves(with_score: bool) -> Strategy:
    consts = st.one_of(st.integers(-6, 6), st.sampled_from([2**31 - 1, -(2**31), 1000]))
    return st.one_of(
        st.sampled_from([var(name) for name in INDEX_VARS]),
        consts.map(lambda v: const(v, I32)),
        st.just(param(0, I32)),
    )


def _int64_leaves(with_score: bool) -> Strategy:
    consts = st.one_of(st.integers(-6, 6), st.sampled_from([2**63 - 1, -(2**63), 2**40]))
    return consts.map(lambda v: const(v, I64)) | _int32_leaves(with_score).map(lambda x: _cast(I64, x))


def _bool_leaves(with_score: bool) -> Strategy:
    table = _int32_leaves(with_score).map(lambda i: load(BOOL_TABLE, BOOL, i))
    return st.sampled_from([const(True, BOOL), const(False, BOOL)]) | table


def _float_consts(dtype: DType) -> Strategy:
    values = st.sampled_from(_SPECIAL_FLOATS) | st.floats(-3, 3, width=32)
    return values.map(lambda v: const(v, dtype))


def _float32_leaves(with_score: bool) -> Strategy:
    index = _int32_leaves(with_score)
    options = [
        _float_consts(F32),
        st.just(param(1, F32)),
        st.builds(lambda i, j: load(FLOAT_TABLE, F32, i, j), index, index),
        index.map(lambda i: _cast(F32, i)),
    ]
    return st.one_of(st.just(score()), *options) if with_score else st.one_of(*options)


def _float16_leaves(with_score: bool) -> Strategy:
    return _float_consts(F16) | _float32_leaves(with_score).map(lambda x: _cast(F16, x))


_LEAVES: dict[DType, Callable[[bool], Strategy]] = {
    I32: _int32_leaves, I64: _int64_leaves, BOOL: _bool_leaves, F32: _float32_leaves, F16: _float16_leaves,
}


# -- operations: each builder draws an op and its operands ----------------------------------------

Builder = Callable[[st.DrawFn, Sub], Node]


def _cast(dtype: DType, x: Node) -> Node:
    return node(Op.CAST, dtype, x)


def _ops(ops: list[Op], dtype: DType, *operands: DType) -> Builder:
    """`op(x1, x2, ...)` of type `dtype` with operands of types `operands`."""
    def build(draw: st.DrawFn, sub: Sub) -> Node:
        return node(draw(st.sampled_from(ops)), dtype, *(draw(sub(d)) for d in operands))

    return build


def _by_const(ops: list[Op], dtype: DType, values: list[int]) -> Builder:
    """`op(x, c)` for a constant `c` from `values` (division by nonzero, small non-negative powers)."""
    def build(draw: st.DrawFn, sub: Sub) -> Node:
        return node(draw(st.sampled_from(ops)), dtype, draw(sub(dtype)), const(draw(st.sampled_from(values)), dtype))

    return build


def _wrap(fn: Callable[[Node], Node], operand: DType) -> Builder:
    return lambda draw, sub: fn(draw(sub(operand)))


_RING = [Op.ADD, Op.SUB, Op.MUL]
_DIVISORS = [-5, -3, -1, 1, 2, 3, 7]
_COMPARES = sorted(COMPARE, key=lambda o: o.value)
_FLOAT_UNARY = [Op.NEG, Op.ABS, Op.SIGN, *sorted(FLOAT_UNARY, key=lambda o: o.value)]

_OPERATIONS: dict[DType, list[Builder]] = {
    I32: [
        _ops(_RING, I32, I32, I32),
        _ops(_RING, I32, I32, I32),
        _ops([Op.MIN, Op.MAX, Op.AND, Op.OR, Op.XOR], I32, I32, I32),
        _ops([Op.NEG, Op.ABS, Op.SIGN], I32, I32),
        _by_const([Op.FLOORDIV, Op.MOD], I32, _DIVISORS),
        _by_const([Op.POW], I32, [0, 1, 2, 3]),
        _ops([Op.WHERE], I32, BOOL, I32, I32),
        _wrap(lambda i: load(INT_TABLE, I32, i), I32),
        _wrap(lambda b: _cast(I32, b), BOOL),
        _wrap(lambda w: _cast(I32, w), I64),
    ],
    I64: [
        _ops([*_RING, Op.MAX], I64, I64, I64),
        _ops([Op.NEG], I64, I64),
        _by_const([Op.FLOORDIV], I64, _DIVISORS),
        _wrap(lambda i: _cast(I64, i), I32),
    ],
    BOOL: [
        _ops(_COMPARES, BOOL, I32, I32),
        _ops(_COMPARES, BOOL, I32, I32),
        _ops(_COMPARES, BOOL, I64, I64),
        _ops(_COMPARES, BOOL, F32, F32),
        _ops([*_COMPARES, Op.AND, Op.OR, Op.XOR], BOOL, BOOL, BOOL),
        _ops([Op.NOT], BOOL, BOOL),
        _ops([Op.WHERE], BOOL, BOOL, BOOL, BOOL),
        _wrap(lambda i: _cast(BOOL, i), I32),
    ],
    F32: [
        _ops([*_RING, Op.TRUEDIV], F32, F32, F32),
        _ops([Op.FLOORDIV, Op.MOD, Op.POW, Op.MIN, Op.MAX], F32, F32, F32),
        _ops(_FLOAT_UNARY, F32, F32),
        _ops([Op.WHERE], F32, BOOL, F32, F32),
        _wrap(lambda h: _cast(F32, h), F16),
        _wrap(lambda i: _cast(F32, i), I32),
    ],
    F16: [
        _ops([*_RING, Op.TRUEDIV, Op.MAX], F16, F16, F16),
        _ops([Op.NEG, Op.EXP, Op.TANH, Op.SQRT], F16, F16),
        _wrap(lambda f: _cast(F16, f), F32),
    ],
}


# -- environments ---------------------------------------------------------------------------------

_table_floats = st.sampled_from(_SPECIAL_FLOATS) | st.floats(-4, 4, width=32)


def _tensor(draw: st.DrawFn, values: st.SearchStrategy, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    flat = draw(st.lists(values, min_size=math.prod(shape), max_size=math.prod(shape)))
    return torch.tensor(flat, dtype=dtype).reshape(shape)


def _grid(draw: st.DrawFn, size: int, dim: int) -> torch.Tensor:
    shape = [1, 1, 1, 1]
    shape[dim] = size
    if draw(st.booleans()):  # realistic: 0, 1, 2, ...
        return torch.arange(size, dtype=torch.int32).view(shape)
    return _tensor(draw, int32_values, tuple(shape), torch.int32)


@st.composite
def envs(draw: st.DrawFn) -> Env:
    """Grids of random sizes holding either ranges or arbitrary int32 values, a random score, random
    tables and parameters."""
    sizes = [draw(st.integers(1, hi)) for hi in (2, 3, 4, 5)]
    grids = [_grid(draw, size, dim) for dim, size in enumerate(sizes)]
    tables = [
        _tensor(draw, int32_values, TABLE_SHAPES[INT_TABLE], torch.int32),
        _tensor(draw, _table_floats, TABLE_SHAPES[FLOAT_TABLE], torch.float32),
        _tensor(draw, st.booleans(), TABLE_SHAPES[BOOL_TABLE], torch.bool),
    ]
    params = (draw(int32_values), draw(_table_floats))
    scores = _tensor(draw, _table_floats, tuple(sizes), torch.float32)
    return Env(*grids, score=scores, tensors=tables, params=params)


# -- float masks over the indices (the tile classifier's float analysis) ------------------------------------
# Comparisons of float expressions built from integer index terms, float constants (exact binary fractions,
# others, specials, values near 2**24), a float parameter (slot 0), per-head floats (tensor slot 0, read at h:
# tile constants) and per-position floats that may hold NaN (slots 1 and 2, float32 and float16, read at a
# position moving with q or kv, clamped into POSITIONS entries).

FLOAT_MASK_TENSORS = (TensorSpec(F32, 1), TensorSpec(F32, 1), TensorSpec(F16, 1))
FLOAT_MASK_PARAMS = (ParamSpec(F32, "w"),)
HEADS, POSITIONS = 4, 64
F64, BF16 = DType.float64, DType.bfloat16
_FLOAT_TYPES = (F32, F32, F32, F16, BF16, F64)
_MASK_FLOATS = (0.5, 40.5, -3.25, 2.0, 0.25, 7.0, -1.0, 0.0, -0.0, 0.1, 0.3, 1 / 3, 1e-3, 2.0**24, 2.0**24 + 2,
                -(2.0**24) - 1, 3e9, 1e30, math.inf, -math.inf, math.nan)


def _index_term(draw: st.DrawFn) -> Node:
    """k * f(d + c) + c': d one of q, kv, q - kv; f identity, abs, // or % by a constant."""
    q, kv = var("q"), var("kv")
    d = draw(st.sampled_from([q, kv, node(Op.SUB, I32, q, kv)]))
    term = node(Op.ADD, I32, d, const(draw(st.integers(-40, 40)), I32))
    shape = draw(st.sampled_from(["plain", "plain", "abs", "floordiv", "mod"]))
    if shape == "abs":
        term = node(Op.ABS, I32, term)
    elif shape in ("floordiv", "mod"):
        divisor = const(draw(st.sampled_from([2, 3, 8])), I32)
        term = node(Op.FLOORDIV if shape == "floordiv" else Op.MOD, I32, term, divisor)
    scaled = node(Op.MUL, I32, term, const(draw(st.sampled_from([1, 1, 2, -1, 3])), I32))
    return node(Op.ADD, I32, scaled, const(draw(st.integers(-20, 20)), I32))


def _as(dtype: DType, x: Node) -> Node:
    return x if x.dtype is dtype else _cast(dtype, x)


@st.composite
def _float_leaf(draw: st.DrawFn, dtype: DType) -> Node:
    kind = draw(st.sampled_from(["index", "index", "const", "const", "param", "head", "position"]))
    if kind == "index":
        return _cast(dtype, _index_term(draw))
    if kind == "const":
        return const(draw(st.sampled_from(_MASK_FLOATS) | st.floats(-100, 100, width=32)), dtype)
    if kind == "param":
        return _as(dtype, param(0, F32))
    if kind == "head":
        return _as(dtype, load(0, F32, var("h")))
    at = draw(st.sampled_from([var("q"), var("kv")]))
    halved, shifted = node(Op.FLOORDIV, I32, at, const(2, I32)), node(Op.ADD, I32, at, const(-3, I32))
    index = draw(st.sampled_from([at, halved, shifted]))
    slot, stored = draw(st.sampled_from([(1, F32), (2, F16)]))
    return _as(dtype, load(slot, stored, index))


_FLOAT_BINARY = [Op.ADD, Op.SUB, Op.MUL, Op.TRUEDIV, Op.MIN, Op.MAX]
_FLOAT_UNARY_OPS = [Op.NEG, Op.ABS, Op.FLOOR, Op.CEIL, Op.SIGN, Op.EXP, Op.TANH, Op.SQRT, Op.LOG]


@st.composite
def float_terms(draw: st.DrawFn, dtype: DType = F32, depth: int = 3) -> Node:
    """A float expression of `dtype` over index terms, constants, the parameter and per-head/position data."""
    if depth == 0 or draw(st.integers(0, 3)) == 0:
        return draw(_float_leaf(dtype))
    sub = float_terms(dtype, depth - 1)
    kind = draw(st.sampled_from(["binary", "binary", "binary", "unary", "where", "cast", "floordiv"]))
    if kind == "binary":
        return node(draw(st.sampled_from(_FLOAT_BINARY)), dtype, draw(sub), draw(sub))
    if kind == "unary":
        return node(draw(st.sampled_from(_FLOAT_UNARY_OPS)), dtype, draw(sub))
    if kind == "where":
        condition = node(Op.GE, BOOL, _index_term(draw), const(draw(st.integers(-10, 60)), I32))
        return node(Op.WHERE, dtype, condition, draw(sub), draw(sub))
    if kind == "cast":
        other = draw(st.sampled_from(_FLOAT_TYPES))
        return _as(dtype, draw(float_terms(other, depth - 1)))
    divisor = const(draw(st.sampled_from([2.0, 0.5, -4.0, 3.0])), dtype)
    return node(Op.FLOORDIV, dtype, draw(sub), divisor)


@st.composite
def _float_atom(draw: st.DrawFn) -> Node:
    dtype = draw(st.sampled_from(_FLOAT_TYPES))
    op = draw(st.sampled_from(_COMPARES))
    if draw(st.integers(0, 5)) == 0:  # a float truncated to an integer, compared with an index term
        return node(op, BOOL, _cast(I32, draw(float_terms(dtype, 2))), _index_term(draw))
    return node(op, BOOL, draw(float_terms(dtype)), draw(float_terms(dtype)))


def float_masks(leaves: int = 3) -> Strategy:
    """and / or / not of float comparisons (see FLOAT_MASK_TENSORS for what they read)."""
    def combine(children: Strategy) -> Strategy:
        pair = st.tuples(st.sampled_from([Op.AND, Op.OR]), children, children)
        return pair.map(lambda t: node(t[0], BOOL, t[1], t[2])) | children.map(lambda c: node(Op.NOT, BOOL, c))

    return st.recursive(_float_atom(), combine, max_leaves=leaves)


_data_floats = st.sampled_from([0.5, 40.5, 7.0, 2.0**24, math.inf, -math.inf, math.nan]) | st.floats(-60, 60, width=32)


@st.composite
def float_mask_values(draw: st.DrawFn) -> tuple[tuple[torch.Tensor, ...], tuple[float]]:
    """Captured tensors and the parameter for `float_masks`: per-head values, and per-position values that
    are sorted runs, noise or constant, with NaN now and then."""
    heads = _tensor(draw, _data_floats, (HEADS,), torch.float32)
    positions = []
    for dtype in (torch.float32, torch.float16):
        style = draw(st.sampled_from(["ramp", "noise", "constant"]))
        if style == "ramp":
            values = torch.arange(POSITIONS, dtype=torch.float32) * draw(st.sampled_from([0.5, 1.0, -2.0, 3.25]))
        elif style == "noise":
            values = _tensor(draw, _data_floats, (POSITIONS,), torch.float32)
        else:
            values = torch.full((POSITIONS,), draw(_data_floats))
        for _ in range(draw(st.integers(0, 2))):
            start = draw(st.integers(0, POSITIONS - 1))
            values[start:start + draw(st.integers(1, 20))] = math.nan
        positions.append(values.to(dtype))
    return (heads, *positions), (draw(_data_floats),)
