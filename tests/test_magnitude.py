"""Compile-time bounds on float expressions (attnc.ir.magnitude): which score mods' derivatives are finite
for every score, so that the backward kernels need not zero them where p is 0."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from attnc.dsl.trace import trace
from attnc.ir import DType, Op, const, load, node, param, score, var
from attnc.ir.derivative import derivative
from attnc.ir.magnitude import finite_everywhere, magnitude

F32 = DType.float32
S = score()


def dscore(score_mod) -> bool:
    program = trace(None, score_mod).program
    return finite_everywhere(derivative(program.score, S))


def softcap(score, b, h, q_idx, kv_idx):
    return 30.0 * torch.tanh(score / 30.0)


def sigmoid_gate(score, b, h, q_idx, kv_idx):
    return torch.sigmoid(score) * 4.0 - 1.0


def relative(score, b, h, q_idx, kv_idx):
    return score / (kv_idx - q_idx + 0.5)


def squared(score, b, h, q_idx, kv_idx):
    return score * score


def exponential(score, b, h, q_idx, kv_idx):
    return torch.exp(score)


def periodic(score, b, h, q_idx, kv_idx):
    return torch.sin(score)


@pytest.mark.parametrize(("score_mod", "finite"), [(softcap, True), (sigmoid_gate, True), (relative, False),
                                                   (squared, False), (exponential, False), (periodic, False)])
def test_which_derivatives_are_finite_for_every_score(score_mod, finite: bool) -> None:
    assert dscore(score_mod) is finite


def test_bounds_follow_the_arithmetic() -> None:
    t = node(Op.TANH, F32, S)
    assert magnitude(node(Op.SUB, F32, const(1.0, F32), node(Op.MUL, F32, t, t))).bound == 2.0
    assert magnitude(node(Op.TRUEDIV, F32, t, const(-4.0, F32))).bound == 0.25
    assert magnitude(node(Op.CAST, F32, var("q"))).finite  # an index converted to a float
    assert not magnitude(node(Op.TRUEDIV, F32, t, param(0, F32))).finite  # divided by a runtime value
    assert not magnitude(load(0, F32, var("h"))).finite  # a captured tensor may hold any value
    assert not magnitude(const(math.nan, F32)).nan_free
    # inf - inf needs two unbounded operands; 0 * inf one unbounded factor
    assert magnitude(node(Op.SUB, F32, S, t)).nan_free and not magnitude(node(Op.SUB, F32, S, S)).nan_free
    assert not magnitude(node(Op.MUL, F32, S, t)).nan_free


def test_an_overflowing_bound_is_infinite_even_when_divided_back() -> None:
    big = node(Op.MUL, F32, const(1e30, F32), node(Op.MUL, F32, const(1e30, F32), node(Op.TANH, F32, S)))
    assert not magnitude(node(Op.TRUEDIV, F32, big, const(1e30, F32))).finite


@pytest.mark.parametrize(("score_mod", "finite"), [(softcap, True), (relative, False)])
def test_the_backward_kernels_zero_dscore_at_masked_pairs_only_when_it_may_not_be_finite(score_mod, finite) -> None:
    import attnc

    source = attnc.compile(score_mod=score_mod).backward_source.source
    assert f"DSCORE_FINITE = tl.constexpr({finite})" in source


def test_a_softcap_backward_without_the_select_keeps_masked_rows_at_zero() -> None:
    """Causal with a softcap and rows past the keys (fully masked): the kernels' gradients are finite and
    match the reference's."""
    import attnc

    def late_causal(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx + 4) & (kv_idx < 9)

    attn = attnc.compile(late_causal, softcap)
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 11, 16, generator=gen, requires_grad=True) for _ in range(3))
    grads = []
    for backend in ("triton", "reference"):
        out = attn(q, k, v, backend=backend)
        grads.append(torch.autograd.grad(out.sum(), (q, k, v)))
    assert all(torch.isfinite(g).all() for g in grads[0])
    torch.testing.assert_close(grads[0], grads[1], atol=2e-4, rtol=2e-4)


EXTREMES = torch.tensor([math.inf, -math.inf, 3.4e38, -3.4e38, 1e30, -7.5, 0.0, -0.0, 1e-40, 0.5])


def _extreme_env(seed: int, int_param: int, float_param: float):
    """Scores, tables and parameters at every magnitude the analysis allows them (infinities included, no
    NaN), on small index grids."""
    from attnc.ir.interpret import Env, index_grids
    from tests import ir_strategies

    generator = torch.Generator().manual_seed(seed)

    def pick(*shape: int) -> torch.Tensor:
        return EXTREMES[torch.randint(0, len(EXTREMES), shape, generator=generator)]

    tables = [torch.randint(-(2**31), 2**31 - 1, ir_strategies.TABLE_SHAPES[0], dtype=torch.int32,
                            generator=generator),
              pick(*ir_strategies.TABLE_SHAPES[1]), torch.randint(0, 2, (4,), generator=generator).bool()]
    return Env(*index_grids(2, 3, 4, 5), score=pick(2, 3, 4, 5), tensors=tables, params=(int_param, float_param))


@settings(max_examples=150, derandomize=True, deadline=None)
@given(st.data())
def test_a_derivative_called_finite_is_finite_at_every_input(data: st.DataObject) -> None:
    """Random score mods: wherever the analysis says dz/dscore (or dz/dL of a float table) is finite for every
    input, it is, in float32, at infinite, huge, tiny and signed-zero scores, tables and parameters."""
    from attnc.ir.derivative import gradient_loads
    from attnc.ir.interpret import evaluate
    from tests import ir_strategies

    root = data.draw(ir_strategies.score_mods(depth=4))
    wrt = [S, *gradient_loads(root, ir_strategies.TENSORS)]
    proven = [d for d in (derivative(root, x) for x in wrt) if finite_everywhere(d)]
    assume(proven)
    env = _extreme_env(data.draw(st.integers(0, 2**32 - 1)), data.draw(ir_strategies.int32_values),
                       data.draw(st.sampled_from([math.inf, -math.inf, 3.4e38, -2.0, 0.0])))
    for d in proven:
        value = evaluate(d, env)
        assert torch.isfinite(torch.as_tensor(value)).all(), d


def test_a_runtime_cap_cancels_and_its_backward_relies_on_a_finite_nonzero_cap() -> None:
    """V.softcap(cap) captures cap as a runtime parameter: the chain rule's cap / cap cancels, the derivative
    is finite for any finite nonzero cap, and a launch with cap = 0 takes the module that keeps the select."""
    import attnc
    from attnc import variants as V

    attn = attnc.compile(V.causal(), V.softcap(30.0))
    dscore_node = derivative(attn.program.score, S)
    assert not finite_everywhere(dscore_node) and finite_everywhere(dscore_node, params_finite_nonzero=True)
    source = attn.kernels.backward_source
    assert source.assumes_params and "DSCORE_FINITE = tl.constexpr(True)" in source.source
    assert attn.kernels.backward_source_for([30.0]) is source
    for bad in (0.0, math.inf, math.nan):
        fallback = attn.kernels.backward_source_for([bad])
        assert fallback is not source and "DSCORE_FINITE = tl.constexpr(False)" in fallback.source


@pytest.mark.parametrize("cap", [30.0, 0.0])
def test_a_runtime_softcap_backward_matches_the_reference_or_stays_finite(cap: float) -> None:
    """Rows past every key (fully masked) included: with cap = 30 the kernels' gradients are the reference's;
    with cap = 0 (a mod without V.softcap's check) the launch takes the guarded module and stays finite."""
    import attnc

    def late_causal(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx + 4) & (kv_idx < 9)

    def capped(score, b, h, q_idx, kv_idx):
        return cap * torch.tanh(score / cap)

    attn = attnc.compile(late_causal, capped)
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 2, 11, 16, generator=gen, requires_grad=True) for _ in range(3))
    out = attn(q, k, v, backend="triton")
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    assert all(torch.isfinite(g).all() for g in grads)
    if cap:
        expected = attn(q, k, v, backend="reference")
        torch.testing.assert_close(grads, torch.autograd.grad(expected.sum(), (q, k, v)), atol=2e-4, rtol=2e-4)
    else:
        assert attn.kernels.imported("backward_any_params") and not attn.kernels.imported("backward")
