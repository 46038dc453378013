"""Hypothesis strategies for random well-typed IR and the environments to evaluate it in.

Expressions range over the index variables, two runtime parameters (int32 slot 0, float32 slot 1) and
three captured tensors (`TENSORS`): a 1-D int32 table, a 2-D float32 table and a 1-D bool table. Integer
division and modulo are by nonzero constants and integer powers by small non-negative constants, so
evaluation never raises; everything else (overflow, NaN, inf, -0.0) is fair game.
"""

from __future__ import annotations

import functools
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


def exprs(dtype: DType, depth: int = 3, *, with_score: bool = False) -> Strategy:
    """Random expressions of type `dtype`, at most `depth` operations deep."""
    return _exprs(dtype, depth, with_score)


def masks(depth: int = 3) -> Strategy:
    return exprs(BOOL, depth)


def score_mods(depth: int = 3) -> Strategy:
    return exprs(F32, depth, with_score=True)


@st.composite
def programs(draw: st.DrawFn, depth: int = 3) -> Program:
    mask = draw(st.none() | masks(depth))
    score_mod = draw(st.none() | score_mods(depth))
    return Program(mask=mask, score=score_mod, tensors=TENSORS, params=PARAMS)


@functools.cache
def _exprs(dtype: DType, depth: int, with_score: bool) -> Strategy:
    leaves = _LEAVES[dtype](with_score)
    if depth == 0:
        return leaves
    return st.one_of(leaves, *_COMPOUNDS[dtype](lambda d: _exprs(d, depth - 1, with_score)))


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


# -- operations -----------------------------------------------------------------------------------


def _cast(dtype: DType, x: Node) -> Node:
    return node(Op.CAST, dtype, x)


def _binary(ops: list[Op], dtype: DType, a: Strategy, b: Strategy) -> Strategy:
    return st.builds(lambda o, x, y: node(o, dtype, x, y), st.sampled_from(ops), a, b)


def _unary(ops: list[Op], dtype: DType, a: Strategy) -> Strategy:
    return st.builds(lambda o, x: node(o, dtype, x), st.sampled_from(ops), a)


def _by_const(ops: list[Op], dtype: DType, a: Strategy, values: list[int]) -> Strategy:
    return st.builds(lambda o, x, c: node(o, dtype, x, const(c, dtype)), st.sampled_from(ops), a,
                     st.sampled_from(values))


def _where(dtype: DType, sub: Sub) -> Strategy:
    return st.builds(lambda c, x, y: node(Op.WHERE, dtype, c, x, y), sub(BOOL), sub(dtype), sub(dtype))


_RING = [Op.ADD, Op.SUB, Op.MUL]
_DIVISORS = [-5, -3, -1, 1, 2, 3, 7]


def _int32_ops(sub: Sub) -> list[Strategy]:
    x = sub(I32)
    return [
        _binary([*_RING, Op.MIN, Op.MAX, Op.AND, Op.OR, Op.XOR], I32, x, x),
        _unary([Op.NEG, Op.ABS, Op.SIGN], I32, x),
        _by_const([Op.FLOORDIV, Op.MOD], I32, x, _DIVISORS),
        _by_const([Op.POW], I32, x, [0, 1, 2, 3]),
        _where(I32, sub),
        x.map(lambda i: load(INT_TABLE, I32, i)),
        sub(BOOL).map(lambda b: _cast(I32, b)),
        sub(I64).map(lambda w: _cast(I32, w)),
    ]


def _int64_ops(sub: Sub) -> list[Strategy]:
    x = sub(I64)
    return [
        _binary([*_RING, Op.MAX], I64, x, x),
        _unary([Op.NEG], I64, x),
        _by_const([Op.FLOORDIV], I64, x, _DIVISORS),
        sub(I32).map(lambda i: _cast(I64, i)),
    ]


def _bool_ops(sub: Sub) -> list[Strategy]:
    b = sub(BOOL)
    compares = sorted(COMPARE, key=lambda o: o.value)
    return [
        _binary(compares, BOOL, sub(I32), sub(I32)),
        _binary(compares, BOOL, sub(I64), sub(I64)),
        _binary(compares, BOOL, sub(F32), sub(F32)),
        _binary([*compares, Op.AND, Op.OR, Op.XOR], BOOL, b, b),
        _unary([Op.NOT], BOOL, b),
        _where(BOOL, sub),
        sub(I32).map(lambda i: _cast(BOOL, i)),
    ]


def _float32_ops(sub: Sub) -> list[Strategy]:
    f = sub(F32)
    arith = [*_RING, Op.TRUEDIV, Op.FLOORDIV, Op.MOD, Op.POW, Op.MIN, Op.MAX]
    return [
        _binary(arith, F32, f, f),
        _unary([Op.NEG, Op.ABS, Op.SIGN, *sorted(FLOAT_UNARY, key=lambda o: o.value)], F32, f),
        _where(F32, sub),
        sub(F16).map(lambda h: _cast(F32, h)),
        sub(I32).map(lambda i: _cast(F32, i)),
    ]


def _float16_ops(sub: Sub) -> list[Strategy]:
    h = sub(F16)
    return [
        _binary([*_RING, Op.TRUEDIV, Op.MAX], F16, h, h),
        _unary([Op.NEG, Op.EXP, Op.TANH, Op.SQRT], F16, h),
        sub(F32).map(lambda f: _cast(F16, f)),
    ]


_COMPOUNDS: dict[DType, Callable[[Sub], list[Strategy]]] = {
    I32: _int32_ops, I64: _int64_ops, BOOL: _bool_ops, F32: _float32_ops, F16: _float16_ops,
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
