"""The interpreter's op semantics and the reference attention against independent dense torch code."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from attnc.ir import DType, Node, Op, ParamSpec, Program, TensorSpec, const, load, node, param, var
from attnc.ir import reference as reference_module
from attnc.ir import score as score_node
from attnc.ir.interpret import Env, evaluate, index_grids
from attnc.ir.reference import reference_attention

I32, I64, F16, F32, BOOL = DType.int32, DType.int64, DType.float16, DType.float32, DType.bool
b, h, q, kv = (var(n) for n in ("b", "h", "q", "kv"))
s = score_node()


def i(v: int) -> Node:
    return const(v, I32)


def scalar_env(**values: int) -> Env:
    grids = {name: torch.tensor(values.get(name, 0), dtype=torch.int32) for name in ("b", "h", "q", "kv")}
    return Env(**grids)


def eval_scalar(root: Node, env: Env | None = None) -> object:
    return evaluate(root, env or scalar_env()).item()


# -- interpreter ----------------------------------------------------------------------------------


def test_index_grids_have_broadcast_shapes() -> None:
    grids = index_grids(2, 3, 4, 5)
    assert [tuple(g.shape) for g in grids] == [(2, 1, 1, 1), (1, 3, 1, 1), (1, 1, 4, 1), (1, 1, 1, 5)]
    assert all(g.dtype == torch.int32 for g in grids)
    assert grids[3].flatten().tolist() == [0, 1, 2, 3, 4]


def test_values_broadcast_like_the_grids_they_depend_on() -> None:
    env = Env(*index_grids(2, 3, 4, 5))
    assert evaluate(node(Op.ADD, I32, q, i(1)), env).shape == (1, 1, 4, 1)
    assert evaluate(node(Op.GE, BOOL, q, kv), env).shape == (1, 1, 4, 5)
    assert evaluate(i(7), env).shape == ()


@pytest.mark.parametrize(("op", "a", "c", "expected"), [
    (Op.FLOORDIV, -7, 2, -4), (Op.FLOORDIV, 7, -2, -4), (Op.MOD, -7, 2, 1), (Op.MOD, 7, -2, -1),
    (Op.POW, 3, 3, 27), (Op.MIN, -1, 2, -1), (Op.AND, 6, 3, 2), (Op.XOR, 6, 3, 5),
    (Op.ADD, 2**31 - 1, 1, -(2**31)),  # int32 wraps around
])
def test_integer_ops_follow_python_floor_semantics_and_wrap(op: Op, a: int, c: int, expected: int) -> None:
    assert eval_scalar(node(op, I32, i(a), i(c))) == expected


def test_float_floordiv_and_mod_follow_python() -> None:
    x, y = const(-7.5, F32), const(2.0, F32)
    assert eval_scalar(node(Op.FLOORDIV, F32, x, y)) == -7.5 // 2.0
    assert eval_scalar(node(Op.MOD, F32, x, y)) == -7.5 % 2.0


def test_integer_division_by_zero_raises_as_in_pytorch() -> None:
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        eval_scalar(node(Op.FLOORDIV, I32, q, i(0)))


def test_casts_truncate_toward_zero_and_test_nonzero() -> None:
    assert eval_scalar(node(Op.CAST, I32, const(-2.7, F32))) == -2
    assert eval_scalar(node(Op.CAST, BOOL, const(-0.0, F32))) is False
    assert eval_scalar(node(Op.CAST, BOOL, const(math.nan, F32))) is True


def test_half_arithmetic_rounds_a_float32_result_once() -> None:
    a, c = torch.tensor(0.1, dtype=torch.float16), torch.tensor(0.2, dtype=torch.float16)
    total = node(Op.ADD, F16, const(a.item(), F16), const(c.item(), F16))
    result = evaluate(total, scalar_env())
    assert result.dtype == torch.float16
    assert result.item() == (a.float() + c.float()).half().item()


def test_float64_mode_computes_every_float_in_float64() -> None:
    third = node(Op.TRUEDIV, F16, const(1.0, F16), const(3.0, F16))
    env = scalar_env()
    env.float64 = True
    result = evaluate(node(Op.CAST, F32, third), env)
    assert result.dtype == torch.float64 and result.item() == 1.0 / 3.0
    assert evaluate(i(3), env).dtype == torch.int32


def test_loads_clamp_indices_and_widen_small_ints() -> None:
    table = torch.tensor([10, 20, 30], dtype=torch.int8)
    env = Env(*index_grids(1, 1, 1, 6), tensors=[table])
    read = load(0, I32, node(Op.SUB, I32, kv, i(1)))
    values = evaluate(read, env)
    assert values.dtype == torch.int32
    assert values.flatten().tolist() == [10, 10, 20, 30, 30, 30]


def test_loads_index_every_dim_and_keep_bool() -> None:
    table = torch.tensor([[True, False], [False, True]])
    env = Env(*index_grids(1, 1, 2, 2), tensors=[table])
    assert torch.equal(evaluate(load(0, BOOL, q, kv), env)[0, 0], table)


def test_params_are_runtime_values() -> None:
    window = node(Op.LE, BOOL, node(Op.SUB, I32, q, kv), param(0, I32))
    for w in (0, 2):
        env = Env(*index_grids(1, 1, 4, 4), params=[w])
        expected = [[qi - ki <= w for ki in range(4)] for qi in range(4)]
        assert evaluate(window, env)[0, 0].tolist() == expected


def test_the_score_is_only_available_to_score_mods() -> None:
    with pytest.raises(ValueError, match="masks cannot read it"):
        evaluate(node(Op.ADD, F32, s, const(1.0, F32)), scalar_env())


def test_shared_subexpressions_are_evaluated_once() -> None:
    calls = []

    class CountingTensors(list):
        def __getitem__(self, slot: int) -> torch.Tensor:
            calls.append(slot)
            return super().__getitem__(slot)

    shared = load(0, F32, kv)
    root = node(Op.MUL, F32, node(Op.ADD, F32, shared, shared), shared)
    env = Env(*index_grids(1, 1, 1, 3), tensors=CountingTensors([torch.ones(3)]))
    assert evaluate(root, env).flatten().tolist() == [2.0, 2.0, 2.0]
    assert calls == [0]


def test_gradients_flow_to_the_score_and_captured_tensors() -> None:
    bias = torch.zeros(2, 3, requires_grad=True)
    score = torch.randn(1, 2, 1, 3, requires_grad=True)
    root = node(Op.MUL, F32, node(Op.ADD, F32, s, load(0, F32, h, kv)), const(2.0, F32))
    env = Env(*index_grids(1, 2, 1, 3), score=score, tensors=[bias])
    evaluate(root, env).sum().backward()
    assert torch.equal(bias.grad, torch.full((2, 3), 2.0))
    assert torch.equal(score.grad, torch.full((1, 2, 1, 3), 2.0))


# -- reference attention --------------------------------------------------------------------------

CAUSAL = Program(mask=node(Op.GE, BOOL, q, kv))


def qkv(B: int, Hq: int, Hkv: int, Q: int, KV: int, D: int = 8, Dv: int = 8, dtype: torch.dtype = torch.float32,
        seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    make = lambda *shape: torch.randn(*shape, generator=gen).to(dtype).requires_grad_()
    return make(B, Hq, Q, D), make(B, Hkv, KV, D), make(B, Hkv, KV, Dv)


def dense(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, logits_fn, scale: float | None = None):
    """An independent dense computation: explicit logits, torch.softmax, torch.logsumexp."""
    group = query.shape[1] // key.shape[1]
    k, v = key.repeat_interleave(group, 1), value.repeat_interleave(group, 1)
    scale = 1 / math.sqrt(query.shape[-1]) if scale is None else scale
    logits = logits_fn(query @ k.transpose(-1, -2) * scale)
    return torch.softmax(logits, dim=-1) @ v, torch.logsumexp(logits, dim=-1)


def causal_mask(Q: int, KV: int) -> torch.Tensor:
    return torch.arange(Q)[:, None] >= torch.arange(KV)[None, :]


@pytest.mark.parametrize(("Hq", "Hkv", "Q", "KV"), [(2, 2, 5, 5), (4, 2, 5, 9), (6, 1, 7, 3)])
def test_reference_matches_sdpa_with_a_bool_mask(Hq: int, Hkv: int, Q: int, KV: int) -> None:
    query, key, value = qkv(2, Hq, Hkv, Q, KV, Dv=6)
    program = Program(mask=node(Op.GE, BOOL, node(Op.ADD, I32, q, i(KV)), kv))  # no row is empty
    allowed = torch.arange(Q)[:, None] + KV >= torch.arange(KV)[None, :]
    out, lse = reference_attention(program, query, key, value)
    expected = F.scaled_dot_product_attention(query, key, value, attn_mask=allowed, enable_gqa=True)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    _, expected_lse = dense(query, key, value, lambda x: x.masked_fill(~allowed, -math.inf))
    torch.testing.assert_close(lse, expected_lse)


def test_reference_without_mods_is_plain_attention() -> None:
    query, key, value = qkv(1, 2, 2, 4, 6)
    out, lse = reference_attention(Program(), query, key, value, scale=0.3)
    expected = F.scaled_dot_product_attention(query, key, value, scale=0.3)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse, dense(query, key, value, lambda x: x, scale=0.3)[1])


def test_score_mods_see_the_scaled_score_and_captured_tensors() -> None:
    query, key, value = qkv(2, 3, 3, 4, 5)
    bias = torch.randn(3, 5)
    softcap = node(Op.MUL, F32, node(Op.TANH, F32, node(Op.TRUEDIV, F32, s, param(0, F32))), param(0, F32))
    program = Program(mask=CAUSAL.mask, score=node(Op.ADD, F32, softcap, load(0, F32, h, kv)),
                      tensors=(TensorSpec(F32, 2),), params=(ParamSpec(F32, "cap"),))
    out, lse = reference_attention(program, query, key, value, tensors=[bias], params=[2.5])
    allowed = causal_mask(4, 5)
    logits = lambda x: (torch.tanh(x / 2.5) * 2.5 + bias[None, :, None, :]).masked_fill(~allowed, -math.inf)
    expected_out, expected_lse = dense(query, key, value, logits)
    torch.testing.assert_close(out, expected_out)
    torch.testing.assert_close(lse, expected_lse)


def test_rows_without_keys_give_zero_and_minus_inf_with_finite_gradients() -> None:
    query, key, value = qkv(1, 2, 2, 6, 6)
    program = Program(mask=node(Op.LT, BOOL, kv, node(Op.SUB, I32, q, i(2))))  # rows 0..2 are empty
    out, lse = reference_attention(program, query, key, value)
    assert torch.equal(out[:, :, :3], torch.zeros_like(out[:, :, :3]))
    assert lse[:, :, :3].eq(-math.inf).all() and lse[:, :, 3:].isfinite().all()
    (out.sum() + lse[:, :, 3:].sum()).backward()
    assert all(t.grad.isfinite().all() for t in (query, key, value))
    assert query.grad[:, :, :3].eq(0).all()


def test_rows_whose_score_mod_gives_only_minus_inf_are_empty_too() -> None:
    query, key, value = qkv(1, 1, 1, 3, 4)
    drop_row_1 = node(Op.WHERE, F32, node(Op.EQ, BOOL, q, i(1)), const(-math.inf, F32), s)
    out, lse = reference_attention(Program(score=drop_row_1), query, key, value)
    assert out[0, 0, 1].eq(0).all() and lse[0, 0, 1] == -math.inf
    out.sum().backward()
    assert query.grad.isfinite().all() and key.grad.isfinite().all()


@pytest.mark.parametrize(("Q", "KV"), [(0, 3), (3, 0)])
def test_empty_sequences(Q: int, KV: int) -> None:
    query, key, value = qkv(1, 2, 2, Q, KV, Dv=5)
    out, lse = reference_attention(CAUSAL, query, key, value)
    assert out.shape == (1, 2, Q, 5) and lse.shape == (1, 2, Q)
    assert out.eq(0).all() and lse.eq(-math.inf).all()


def test_float64_mode_is_a_golden_reference() -> None:
    query, key, value = qkv(1, 2, 2, 5, 7, dtype=torch.float16)
    out16, lse32 = reference_attention(CAUSAL, query, key, value)
    out64, lse64 = reference_attention(CAUSAL, query, key, value, float64=True)
    assert (out16.dtype, lse32.dtype, out64.dtype, lse64.dtype) == (
        torch.float16, torch.float32, torch.float64, torch.float64)
    torch.testing.assert_close(out16.double(), out64, rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(lse32.double(), lse64, rtol=1e-5, atol=1e-5)


def test_query_chunks_give_the_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    query, key, value = qkv(2, 2, 1, 9, 5)
    whole = reference_attention(CAUSAL, query, key, value)
    monkeypatch.setattr(reference_module, "_CHUNK_ELEMENTS", 2 * 2 * 5 * 2)  # two query rows at a time
    chunked = reference_attention(CAUSAL, query, key, value)
    for a, c in zip(whole, chunked, strict=True):
        torch.testing.assert_close(a, c)


def test_gradients_reach_a_captured_bias_table() -> None:
    torch.manual_seed(0)
    query, key, value = (torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    bias = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    program = Program(mask=CAUSAL.mask, score=node(Op.ADD, F32, s, load(0, F32, h, kv)),
                      tensors=(TensorSpec(F32, 2, requires_grad=True),))

    def attend(qq: torch.Tensor, kk: torch.Tensor, vv: torch.Tensor, bb: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return reference_attention(program, qq, kk, vv, tensors=[bb], float64=True)

    assert torch.autograd.gradcheck(attend, (query, key, value, bias))


def test_shape_errors_are_explained() -> None:
    query, key, value = qkv(1, 3, 2, 4, 4)
    with pytest.raises(ValueError, match=r"query heads \(3\) must be a multiple of kv heads \(2\)"):
        reference_attention(Program(), query, key, value)
    with pytest.raises(ValueError, match="must be 4-D"):
        reference_attention(Program(), query[0], key, value)
