"""Property test: for random masks and score mods, the generated kernel equals the reference.

Random programs come from `ir_strategies`; the score mod's root is made finite (|x| < 1e4, else 0) so
that the softmax itself is well defined, while its sub-expressions still see overflow, NaN and inf.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnc.api import kernel_cache
from attnc.codegen.backward import generate_backward
from attnc.codegen.forward import generate_forward
from attnc.ir import DType, Node, Op, Program, const, load, node, score, var
from attnc.ir.derivative import derivative
from attnc.ir.interpret import Env, evaluate, index_grids
from attnc.ir.passes import optimize
from attnc.ir.reference import reference_attention
from attnc.runtime.config import KernelConfig
from attnc.runtime.interpreter import interpreter_active
from attnc.runtime.launch import check_inputs, launch_forward
from attnc.runtime.launch_backward import BackwardConfigs, launch_backward
from tests import ir_strategies as irs

F32, BOOL = DType.float32, DType.bool


def finite(x: Node, bound: float = 1e4) -> Node:
    small = node(Op.LT, BOOL, node(Op.ABS, F32, x), const(bound, F32))
    return node(Op.WHERE, F32, small, x, const(0.0, F32))


@st.composite
def cases(draw):
    program = draw(irs.programs(depth=3))
    if program.score is not None:
        program = program.replace(score=finite(program.score))
    finite_floats = st.floats(-4, 4, width=32)
    tables = [
        torch.tensor(draw(st.lists(irs.int32_values, min_size=7, max_size=7)), dtype=torch.int32),
        torch.tensor(draw(st.lists(finite_floats, min_size=15, max_size=15)), dtype=torch.float32).view(3, 5),
        torch.tensor(draw(st.lists(st.booleans(), min_size=4, max_size=4))),
    ]
    params = (draw(st.integers(-50, 50)), draw(finite_floats))
    lengths = (draw(st.integers(1, 40)), draw(st.integers(1, 40)))
    return program, tables, params, lengths


@pytest.mark.skipif(not interpreter_active(), reason="runs kernels in the Triton interpreter on CPU tensors")
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(cases())
def test_kernel_equals_reference_on_random_programs(case):
    program, tables, params, (Q_LEN, KV_LEN) = case
    g = torch.Generator().manual_seed(Q_LEN * 41 + KV_LEN)
    q = torch.randn(2, 2, Q_LEN, 16, generator=g)
    k, v = torch.randn(2, 1, KV_LEN, 16, generator=g), torch.randn(2, 1, KV_LEN, 16, generator=g)
    kernel = kernel_cache().module(generate_forward(optimize(program)).source).attnc_forward
    out, lse = launch_forward(kernel, q, k, v, shapes=check_inputs(q, k, v, enable_gqa=True), scale=None,
                              tensors=tables, params=params, block_mask=None,
                              config=KernelConfig(16, 16, 4, 1), has_mask=program.mask is not None,
                              interpret=True)
    ref_out, ref_lse = reference_attention(Program(program.mask, program.score, program.tensors, program.params),
                                           q, k, v, tensors=tables, params=params)
    assert not out.isnan().any()
    torch.testing.assert_close(out, ref_out, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(lse, ref_lse, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not interpreter_active(), reason="runs kernels in the Triton interpreter on CPU tensors")
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(cases())
def test_kernel_gradients_equal_reference_gradients_on_random_programs(case):
    """dq, dk, dv and the float table's gradient from the backward kernels vs autograd through the float64
    reference, wherever its gradients are finite. The tolerance grows with the float32 reference's own
    error: a kernel is float32 too, and some mods amplify rounding (`1000 * table` logits cancel in
    p * (dp - delta), `2**31 % score` moves by hundreds per ulp of the score)."""
    program, tables, params, (Q_LEN, KV_LEN) = case
    program = optimize(_reading_the_table(program))
    g = torch.Generator().manual_seed(Q_LEN * 43 + KV_LEN)
    q = torch.randn(2, 2, Q_LEN, 16, generator=g)
    k, v = torch.randn(2, 1, KV_LEN, 16, generator=g), torch.randn(2, 1, KV_LEN, 16, generator=g)
    upstream = torch.randn(2, 2, Q_LEN, 16, generator=g)
    ref_out, single = _reference_gradients(program, q, k, v, tables, params, upstream)
    _, exact = _reference_gradients(program, q, k, v, tables, params, upstream, float64=True)
    if not all(e is None or bool(torch.isfinite(e).all()) for e in exact):
        return
    if _derivative_overflows(program, q, k, tables, params):
        return  # dz/dscore itself is beyond float32 (`log2(1e-38 / score)`): autograd scales it down first
    source = generate_backward(program)
    module = kernel_cache().module(source.source)
    lse = reference_attention(program, q, k, v, tensors=tables, params=params)[1]
    shapes = check_inputs(q, k, v, enable_gqa=True)
    wanted = [slot == 1 for slot in source.grad_slots]
    tiles = KernelConfig(16, 16, 4, 1)
    dq, dk, dv, grads = launch_backward(
        module.attnc_backward_dkdv, module.attnc_backward_dq, q, k, v, ref_out, lse, upstream, None,
        shapes=shapes, scale=None, tensors=tables, params=params, grad_slots=source.grad_slots, grad_wanted=wanted,
        block_mask=None, configs=BackwardConfigs(tiles, tiles), has_mask=program.mask is not None, interpret=True)
    table_grad = grads.get(1, torch.zeros_like(tables[1]))
    for got, want, rounded in zip((dq, dk, dv, table_grad), exact, single, strict=True):
        want = torch.zeros_like(got) if want is None else want
        rounding = 0.0 if rounded is None else float((rounded - want).abs().nan_to_num(float("inf")).max())
        assert not got.isnan().any()
        atol = 2e-3 * max(1.0, float(want.abs().max())) + 50 * rounding
        torch.testing.assert_close(got, want, atol=atol, rtol=2e-3)


def _derivative_overflows(program: Program, q, k, tables, params) -> bool:
    """True where the score mod's derivatives, as the kernels compute them in float32, are not finite."""
    if program.score is None:
        return False
    B, H, Q_LEN, D = q.shape
    keys = k.repeat_interleave(H // k.shape[1], dim=1)
    env = Env(*index_grids(B, H, Q_LEN, k.shape[2], q.device), score=q @ keys.transpose(-1, -2) / D**0.5,
              tensors=tables, params=params)
    wrt = [score(), *(n for n in program.score.walk() if n.op is Op.LOAD and n.dtype.is_float)]
    return not all(bool(torch.isfinite(evaluate(derivative(program.score, w), env)).all()) for w in wrt)


def _reading_the_table(program: Program) -> Program:
    """`score + t[h % 3, (q + 2 kv) % 5] * mod` for the random score mod (cut to |mod| < 50), so the table's
    gradient goes through the derivative of an arbitrary expression. The cut keeps logits in the range real
    mods produce: at logits in the thousands, sums that are zero in exact arithmetic (sum_j p_j (dp_j -
    delta) = 0) leave float32 residues that the logit scale multiplies, in any implementation."""
    if program.score is None:
        return program
    i32 = DType.int32
    row = node(Op.MOD, i32, var("h"), const(3, i32))
    col = node(Op.MOD, i32, node(Op.ADD, i32, var("q"), node(Op.MUL, i32, var("kv"), const(2, i32))), const(5, i32))
    weight = load(1, F32, row, col)
    mod = finite(program.score, bound=50.0)
    return program.replace(score=node(Op.ADD, F32, score(), node(Op.MUL, F32, weight, mod)))


def _reference_gradients(program, q, k, v, tables, params, upstream, float64=False):
    dtype = torch.float64 if float64 else torch.float32
    leaves = [t.to(dtype).requires_grad_(True) for t in (q, k, v, tables[1])]
    out, _ = reference_attention(program, *leaves[:3], tensors=[tables[0], leaves[3], tables[2]], params=params,
                                 float64=float64)
    grads = torch.autograd.grad((out * upstream.to(dtype)).sum(), leaves, allow_unused=True)
    return out.detach().float(), [None if g is None else g.float() for g in grads]
