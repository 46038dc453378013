"""Symbolic derivatives of score mods against torch autograd through the interpreter."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from attnc.dsl.trace import trace
from attnc.ir import DType, Op, Program, TensorSpec, const, load, node, param, score, var
from attnc.ir.derivative import derivative, gradient_loads
from attnc.ir.interpret import Env, evaluate, index_grids
from attnc.ir.verify import verify
from tests import ir_strategies

F16, F32, BF16, I32 = DType.float16, DType.float32, DType.bfloat16, DType.int32
SHAPE = (2, 3, 6, 7)
S, H = score(), var("h")


# -- checking against autograd -----------------------------------------------------------------------


def autograd_env(raw: torch.Tensor, tensors: list[torch.Tensor], params: tuple) -> Env:
    """A float64 environment whose score and float tensors are autograd leaves."""
    leaves = [t.double().requires_grad_() if t.is_floating_point() else t for t in tensors]
    score_leaf = raw.double().requires_grad_()
    return Env(*index_grids(*raw.shape), score=score_leaf, tensors=leaves, params=params, float64=True)


def symbolic_tensor_grad(program: Program, env: Env, slot: int, upstream: torch.Tensor) -> torch.Tensor:
    """The sum over grid points of upstream * dz/dL, scattered to the (clamped) index of each load L of
    tensor `slot`."""
    root, tensor = program.score, env.tensors[slot]
    grad = torch.zeros_like(tensor, requires_grad=False)
    for n in gradient_loads(root, program.tensors):
        if n.arg != slot:
            continue
        contribution = (upstream * evaluate(derivative(root, n), env)).expand(upstream.shape)
        index = [evaluate(i, env).clamp(0, size - 1).long().expand(upstream.shape).flatten()
                 for i, size in zip(n.src, tensor.shape, strict=True)]
        grad.index_put_(tuple(index), contribution.flatten(), accumulate=True)
    return grad


def autograd(z: torch.Tensor, leaves: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """The gradients of z.sum() with respect to `leaves`."""
    if not z.requires_grad:  # z reads none of the leaves
        return tuple(torch.zeros_like(leaf) for leaf in leaves)
    return torch.autograd.grad(z.sum(), leaves, allow_unused=True, materialize_grads=True)


def check_against_autograd(program: Program, env: Env, finite_only: bool = False) -> None:
    """The derivatives w.r.t. the score and every float captured tensor equal autograd's gradients
    (`finite_only`: where autograd's gradient is finite)."""
    root = program.score
    z = evaluate(root, env).expand(env.score.shape)
    upstream = torch.rand(z.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + 0.5
    float_slots = [i for i, t in enumerate(env.tensors) if t.is_floating_point()]
    leaves = [env.score, *(env.tensors[i] for i in float_slots)]
    expected = autograd(upstream * z, leaves)
    with torch.no_grad():
        got = [upstream * evaluate(derivative(root, S), env).expand(z.shape)]
        got += [symbolic_tensor_grad(program, env, slot, upstream) for slot in float_slots]
    for g, e in zip(got, expected, strict=True):
        keep = torch.isfinite(e) if finite_only else torch.ones_like(e, dtype=torch.bool)
        torch.testing.assert_close(g[keep], e[keep], rtol=1e-6, atol=1e-9)


def check_mod(score_mod: Callable, raw: torch.Tensor | None = None) -> None:
    traced = trace(None, score_mod)
    bound = traced.bind(None, score_mod)
    raw = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1)) if raw is None else raw
    env = autograd_env(raw, list(bound.tensors), bound.params)
    for n in [*gradient_loads(traced.program.score, traced.program.tensors), S]:
        verify(derivative(traced.program.score, n), is_mask=False, program=traced.program)
    check_against_autograd(traced.program, env)


def seeded(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def quantised(seed: int, *shape: int) -> torch.Tensor:
    """Values from {-1, -0.5, 0, 0.5, 1}: scores and tables built from them tie often."""
    return torch.randint(-2, 3, shape, generator=torch.Generator().manual_seed(seed)).float() / 2


# -- hand-written score mods --------------------------------------------------------------------------

bias = seeded(2, 6, 7)
slope = seeded(3, 3).abs()
gate = seeded(4, 3)
rel = seeded(5, 3, 20)
first, second = seeded(6, 3), seeded(7, 7)
positive = seeded(8, 3).abs() + 0.5
table_bf16 = seeded(9, 3).to(torch.bfloat16)
ties = quantised(10, 3)
divisor = torch.tensor([1.5, -0.75, 2.0])
N, CAP = 8, 2.5


def mod_bias(s, b, h, q, kv):
    return s + bias[q, kv]


def mod_alibi(s, b, h, q, kv):
    return s - slope[h] * torch.abs(q - kv)


def mod_softcap(s, b, h, q, kv):
    return CAP * torch.tanh(s / CAP)


def mod_gate(s, b, h, q, kv):
    return s * gate[h]


def mod_multi_read(s, b, h, q, kv):
    return s + rel[h, q - kv + N] + rel[h, kv - q + N]


def mod_same_load_twice(s, b, h, q, kv):
    return s * gate[h] + gate[h] * gate[h]


def mod_two_tensors(s, b, h, q, kv):
    return s * first[h] + second[kv] / (1 + first[h] ** 2)


def mod_pow(s, b, h, q, kv):
    return s**2 + torch.abs(s) ** positive[h] + positive[h] ** s + s**3 - (s * s + 1) ** -0.5


def mod_exp_log(s, b, h, q, kv):
    e = torch.log(torch.exp(s) + positive[h]) + torch.exp2(s * gate[h]) - torch.log2(s * s + positive[h])
    return e + torch.log1p(torch.abs(s)) + torch.sqrt(s * s + 1) + torch.rsqrt(s * s + positive[h])


def mod_trig(s, b, h, q, kv):
    return torch.sin(s * gate[h]) * torch.cos(s) - torch.tanh(first[h] * s)


def mod_sigmoid(s, b, h, q, kv):
    return s * torch.sigmoid(gate[h] * s)


def mod_where(s, b, h, q, kv):
    return torch.where(q >= kv, s * gate[h], s + second[kv]) + torch.where(s > 0, s * s, first[h])


def mod_min_max_ties(s, b, h, q, kv):
    return torch.maximum(s, ties[h]) + torch.minimum(s * ties[h], ties[h]) + torch.clamp(s, min=-0.5, max=0.5)


def mod_same_operand_ties(s, b, h, q, kv):
    return torch.maximum(s, s * 1.0) - torch.minimum(2 * s, s + s)


def mod_kinks(s, b, h, q, kv):
    # abs at 0; pow at base 0 with exponent 0, where the power rule would give 0 * inf
    return torch.abs(s - ties[h]) + torch.abs(s) ** (ties[h] * s) + (s - ties[h]) ** 2


def mod_masked_singularities(s, b, h, q, kv):
    # where the score is negative the local derivatives are infinite, then masked: the gradient is 0
    return torch.sqrt(torch.clamp(s, min=0)) + torch.log(torch.where(s > 0, s * gate[h] ** 2, 0.0))


def mod_bf16_table(s, b, h, q, kv):
    half = table_bf16[h] * 2 + torch.exp(table_bf16[h])  # bf16 arithmetic
    return s * half + torch.tanh(table_bf16[h] * s)


def mod_float_mod(s, b, h, q, kv):
    return torch.remainder(s, divisor[h]) + s % 1.5 + torch.remainder(gate[h] * 3, s + 3)


def mod_piecewise_constant(s, b, h, q, kv):
    steps = torch.floor(s) + torch.ceil(s * gate[h]) + torch.sign(s) + s // 0.5
    return s + steps + (s * 4).to(torch.int32) + (gate[h] > 0)


def mod_division(s, b, h, q, kv):
    return s / (1 + gate[h] ** 2) + gate[h] / (s * s + 1)


@pytest.mark.parametrize("score_mod", [
    mod_bias, mod_alibi, mod_softcap, mod_gate, mod_multi_read, mod_same_load_twice, mod_two_tensors, mod_pow,
    mod_exp_log, mod_trig, mod_sigmoid, mod_where, mod_bf16_table, mod_float_mod, mod_piecewise_constant,
    mod_division, mod_masked_singularities,
], ids=lambda f: f.__name__.removeprefix("mod_"))
def test_derivatives_match_autograd(score_mod: Callable) -> None:
    check_mod(score_mod)


@pytest.mark.parametrize("score_mod", [mod_min_max_ties, mod_same_operand_ties, mod_kinks],
                         ids=["ties", "same_operand", "kinks"])
def test_ties_and_kinks_match_autograd(score_mod: Callable) -> None:
    raw = quantised(11, *SHAPE)
    assert (raw == ties.view(1, 3, 1, 1)).any() and (raw == 0.5).any() and (raw == 0).any()  # they happen
    check_mod(score_mod, raw)


# -- the shape of the derivative IR ------------------------------------------------------------------

G = load(0, F32, H)
ZERO, ONE = const(0.0, F32), const(1.0, F32)


def test_simple_derivatives_build_no_trivial_nodes() -> None:
    assert derivative(S, S) is ONE
    assert derivative(node(Op.ADD, F32, S, G), S) is ONE
    assert derivative(node(Op.MUL, F32, S, G), S) is G
    assert derivative(node(Op.MUL, F32, S, G), G) is S
    assert derivative(node(Op.SUB, F32, G, S), S) is const(-1.0, F32)
    assert derivative(node(Op.POW, F32, S, const(2.0, F32)), S) is node(Op.MUL, F32, const(2.0, F32), S)


def test_derivative_of_what_does_not_read_the_input_is_zero() -> None:
    assert derivative(G, S) is ZERO
    assert derivative(node(Op.MUL, F32, S, G), load(0, F32, var("q"))) is ZERO  # another read of the table
    assert derivative(node(Op.ADD, F32, S, node(Op.FLOOR, F32, S)), S) is ONE


def test_a_repeated_load_is_one_input_whose_uses_sum() -> None:
    root = node(Op.ADD, F32, node(Op.MUL, F32, S, G), G)
    assert derivative(root, G) in (node(Op.ADD, F32, S, ONE), node(Op.ADD, F32, ONE, S))


def test_inputs_that_meet_at_a_sum_share_their_derivative() -> None:
    cap = const(30.0, F32)
    root = node(Op.MUL, F32, cap, node(Op.TANH, F32, node(Op.TRUEDIV, F32, node(Op.ADD, F32, S, G), cap)))
    assert derivative(root, S) is derivative(root, G)


def test_the_exponent_term_of_pow_only_appears_when_the_exponent_depends_on_the_input() -> None:
    ops_of = lambda n: {m.op for m in n.walk()}
    assert Op.LOG not in ops_of(derivative(node(Op.POW, F32, S, G), S))
    assert Op.LOG in ops_of(derivative(node(Op.POW, F32, G, S), S))


def test_half_precision_is_differentiated_in_float32() -> None:
    half = node(Op.TANH, F16, node(Op.MUL, F16, node(Op.CAST, F16, S), load(1, F16, H)))
    d = derivative(node(Op.CAST, F32, half), S)
    assert d.dtype is F32
    forward = set(half.walk())
    assert all(n.dtype in (F32, DType.bool) for n in d.walk() if n not in forward)


def test_only_the_score_or_float_loads_can_be_differentiated_against() -> None:
    with pytest.raises(ValueError, match="float load"):
        derivative(S, load(0, I32, H))
    with pytest.raises(ValueError, match="float load"):
        derivative(S, param(1, F32))


def test_gradient_loads_are_the_float_loads_in_walk_order() -> None:
    tensors = (TensorSpec(F32, 1), TensorSpec(I32, 1), TensorSpec(BF16, 1))
    index = load(1, I32, H)
    other = load(2, BF16, index)
    root = node(Op.ADD, F32, node(Op.MUL, F32, S, G), node(Op.ADD, F32, G, node(Op.CAST, F32, other)))
    assert gradient_loads(root, tensors) == [G, other]


# -- random score mods -------------------------------------------------------------------------------


@st.composite
def random_env(draw: st.DrawFn) -> Env:
    """Seeded normal values (element-wise draws would mostly be zeros), quantised half the time so that
    ties, zeros and integral values occur."""
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    coarse = draw(st.booleans())

    def floats(*shape: int) -> torch.Tensor:
        values = torch.randn(shape, generator=generator)
        return torch.round(values * 2) / 2 if coarse else values

    tables = [
        torch.randint(-8, 9, (7,), dtype=torch.int32, generator=generator),
        floats(*ir_strategies.TABLE_SHAPES[ir_strategies.FLOAT_TABLE]),
        torch.randint(0, 2, (4,), generator=generator).bool(),
    ]
    params = (draw(st.integers(-8, 8)), float(floats(1)))
    return autograd_env(floats(2, 3, 4, 5), tables, params)


@settings(max_examples=60, derandomize=True)
@given(st.data())
def test_random_score_mods_match_autograd(data: st.DataObject) -> None:
    root = data.draw(ir_strategies.score_mods(depth=4))
    assume(root.uses_score)
    program = Program(score=root, tensors=ir_strategies.TENSORS, params=ir_strategies.PARAMS)
    env = data.draw(random_env())
    # random programs overflow, divide by zero and take logs of negatives: compare where torch's is finite
    check_against_autograd(program, env, finite_only=True)


def test_constant_factors_fold_through_the_chain_rule() -> None:
    """d/dscore cap * tanh(score / cap) is 1 - tanh(score / cap)^2: the chain rule's cap and 1 / cap cancel."""
    cap = const(30.0, F32)
    t = node(Op.TANH, F32, node(Op.TRUEDIV, F32, S, cap))
    softcap = node(Op.MUL, F32, cap, t)
    assert derivative(softcap, S) is node(Op.SUB, F32, ONE, node(Op.MUL, F32, t, t))
    # factors that do not cancel fold into one constant
    scaled = node(Op.MUL, F32, const(3.0, F32), node(Op.TRUEDIV, F32, node(Op.MUL, F32, S, G), const(4.0, F32)))
    assert derivative(scaled, S) is node(Op.MUL, F32, const(0.75, F32), G)
    # a factor that would not be a normal float32 once folded stays as written
    huge = node(Op.MUL, F32, const(1e30, F32), node(Op.MUL, F32, const(1e30, F32), node(Op.MUL, F32, S, G)))
    c = const(1e30, F32)
    assert derivative(huge, S) is node(Op.MUL, F32, node(Op.MUL, F32, c, c), G)
