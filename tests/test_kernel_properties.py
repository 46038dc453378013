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
from attnc.codegen.forward import generate_forward
from attnc.ir import DType, Node, Op, Program, const, node
from attnc.ir.passes import optimize
from attnc.ir.reference import reference_attention
from attnc.runtime.config import KernelConfig
from attnc.runtime.interpreter import interpreter_active
from attnc.runtime.launch import check_inputs, launch_forward
from tests import ir_strategies as irs

F32, BOOL = DType.float32, DType.bool


def finite(x: Node) -> Node:
    small = node(Op.LT, BOOL, node(Op.ABS, F32, x), const(1e4, F32))
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
