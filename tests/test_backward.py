"""Generated backward kernels (Triton interpreter on CPU) vs autograd through the reference: gradients
for q, k, v and for captured tensors, on every variant of the zoo and on mods written to stress them."""

from __future__ import annotations

import math

import pytest
import torch

import attnc
from attnc.ir.reference import reference_attention
from tests.zoo import DEVICE, Case, make_cases

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _inputs(B, Hq, Hkv, Q, KV, D, Dv, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = ((B, Hq, Q, D), (B, Hkv, KV, D), (B, Hkv, KV, Dv))
    return [torch.randn(s, generator=g).to(DEVICE, dtype).requires_grad_(True) for s in shapes]


def _loss(out: torch.Tensor, lse: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """A loss that weighs every output element differently and also reads the lse (finite entries)."""
    g = torch.Generator().manual_seed(seed)
    w_out = torch.randn(out.shape, generator=g).to(out.device)
    w_lse = torch.randn(lse.shape, generator=g).to(lse.device)
    return (out.float() * w_out).sum() + (torch.where(lse.isinf(), 0.0, lse) * w_lse).sum()


def _gradients(attn, inputs, tensors, backend, **kwargs):
    for t in [*inputs, *tensors]:
        t.grad = None
    out, lse = attn(*inputs, return_lse=True, backend=backend, **kwargs)
    _loss(out, lse).backward()
    return [None if t.grad is None else t.grad.detach().clone() for t in [*inputs, *tensors]]


def _assert_close_grads(got, expected, names, atol=2e-4, rtol=2e-4):
    for name, a, b in zip(names, got, expected, strict=True):
        assert (a is None) == (b is None), name
        if a is None:
            continue
        assert not a.isnan().any(), name
        scale = max(1.0, float(b.abs().max()))
        # a half-precision tensor's gradient is rounded to its dtype (and autograd sums it in that dtype)
        tol = 4e-2 if a.dtype in (torch.float16, torch.bfloat16) else atol
        torch.testing.assert_close(a.double(), b.double(), atol=tol * scale, rtol=max(rtol, tol),
                                   msg=lambda m, name=name: f"{name}: {m}")


def _float_captures(attn) -> list[torch.Tensor]:
    """The variant's captured floating tensors, made to require gradients."""
    return [t.requires_grad_(True) for t in attn._bind().tensors if t.is_floating_point()]


CASES = {c.name: c for c in make_cases(seed=3)}


@pytest.mark.parametrize("name", sorted(CASES))
def test_kernel_gradients_match_the_reference(name):
    case: Case = CASES[name]
    attn = attnc.compile(case.mask_mod, case.score_mod)
    inputs = _inputs(case.B, case.Hq, case.Hkv, case.Q_LEN, case.KV_LEN, case.D, case.Dv or case.D)
    tensors = _float_captures(attn)
    got = _gradients(attn, inputs, tensors, "triton")
    expected = _gradients(attn, inputs, tensors, "reference")
    names = ["dq", "dk", "dv", *(f"captured{i}" for i in range(len(tensors)))]
    _assert_close_grads(got, expected, names)


def _stress_mods():
    g = torch.Generator().manual_seed(7)
    H, Q, KV = 4, 75, 90
    table = torch.randn(H, Q + KV, generator=g).to(DEVICE)
    gate = torch.rand(H, generator=g).to(DEVICE)
    q_bias = torch.randn(Q, generator=g).to(DEVICE)
    k_bias = torch.randn(2, KV, generator=g).to(DEVICE)
    full = torch.randn(2, H, Q, KV, generator=g).to(DEVICE)
    slopes = torch.rand(H, generator=g).to(DEVICE)

    def multi_read(score, b, h, q, kv):  # one tensor read twice, at two different positions
        return score + table[h, q - kv + KV] + table[h, kv - q + KV] * 0.5

    def multi_tensor(score, b, h, q, kv):  # per-head, per-query and per-key tensors, products of reads
        return score * (1 + gate[h]) + q_bias[q] * gate[h] - k_bias[b, kv]

    def full_bias(score, b, h, q, kv):
        return score + full[b, h, q, kv]

    def softcap_alibi(score, b, h, q, kv):
        return 30.0 * torch.tanh((score - slopes[h] * torch.abs(q - kv)) / 30.0)

    def causal_late(b, h, q, kv):  # rows q < 9 attend to nothing
        return (q >= 9) & (kv <= q - 9)

    return {"multi_read": (causal_late, multi_read, [table]),
            "multi_tensor": (None, multi_tensor, [gate, q_bias, k_bias]),
            "full_bias": (causal_late, full_bias, [full]),
            "softcap_alibi": (causal_late, softcap_alibi, [slopes])}


@pytest.mark.parametrize("name", sorted(_stress_mods()))
def test_captured_gradients_of_multi_read_multi_tensor_and_full_bias_mods(name):
    mask_mod, score_mod, tensors = _stress_mods()[name]
    attn = attnc.compile(mask_mod, score_mod)
    inputs = _inputs(2, 4, 2, 75, 90, 32, 24)
    for t in tensors:
        t.requires_grad_(True)
    got = _gradients(attn, inputs, tensors, "triton")
    expected = _gradients(attn, inputs, tensors, "reference")
    _assert_close_grads(got, expected, ["dq", "dk", "dv", *(f"t{i}" for i in range(len(tensors)))])
    if mask_mod is not None:
        dq = got[0]
        assert torch.all(dq[:, :, :9] == 0)  # rows without keys: zero gradient, never NaN


def test_deterministic_gradients_are_bitwise_identical_and_match_the_atomic_ones():
    mask_mod, score_mod, tensors = _stress_mods()["multi_read"]
    attn = attnc.compile(mask_mod, score_mod)
    inputs = _inputs(2, 4, 2, 75, 90, 32, 24)
    tensors[0].requires_grad_(True)
    first = _gradients(attn, inputs, tensors, "triton", deterministic=True)
    second = _gradients(attn, inputs, tensors, "triton", deterministic=True)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    atomic = _gradients(attn, inputs, tensors, "triton")
    _assert_close_grads(first, atomic, ["dq", "dk", "dv", "table"])


def test_gradients_through_a_block_mask_with_gqa_and_odd_lengths():
    mods = _stress_mods()
    mask_mod, score_mod, (table,) = mods["multi_read"]
    table.requires_grad_(True)
    bm = attnc.create_block_mask(mask_mod, None, None, 75, 90, device=DEVICE, BLOCK_SIZE=32)
    inputs = _inputs(2, 4, 2, 75, 90, 32, 24)

    def run(backend):
        for t in [*inputs, table]:
            t.grad = None
        out, lse = attnc.flex_attention(*inputs, score_mod=score_mod, block_mask=bm, enable_gqa=True,
                                        return_lse=True, backend=backend)
        _loss(out, lse).backward()
        return [t.grad.clone() for t in [*inputs, table]]

    _assert_close_grads(run("triton"), run("reference"), ["dq", "dk", "dv", "table"])


@pytest.mark.parametrize("dtype", [torch.float16], ids=["float16"])
def test_half_precision_gradients_stay_finite_and_close(dtype):
    """Large logits through a softcap: finite gradients, close to a float64 reference."""
    mask_mod, score_mod, (slopes,) = _stress_mods()["softcap_alibi"]
    attn = attnc.compile(mask_mod, score_mod)
    q, k, v = _inputs(1, 4, 4, 75, 90, 32, 32, dtype=dtype)
    with torch.no_grad():
        q.mul_(8.0)  # logits of several hundred before the cap
    out, lse = attn(q, k, v, return_lse=True, backend="triton")
    _loss(out, lse).backward()
    grads = [q.grad, k.grad, v.grad]
    assert all(torch.isfinite(g).all() for g in grads)
    ref = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
    ref_out, ref_lse = reference_attention(attn.program, *ref, tensors=[slopes.double()],
                                           params=attn._bind().params, float64=True)
    _loss(ref_out, ref_lse).backward()
    for got, expected in zip(grads, ref, strict=True):
        scale = float(expected.grad.abs().max())
        torch.testing.assert_close(got.double(), expected.grad, atol=3e-2 * scale, rtol=3e-2)


def test_reference_gradients_pass_gradcheck_in_float64():
    mask_mod, score_mod, _ = _stress_mods()["multi_read"]
    attn = attnc.compile(mask_mod, score_mod)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(s, generator=g, dtype=torch.float64).requires_grad_(True)
               for s in ((1, 2, 13, 8), (1, 1, 17, 8), (1, 1, 17, 4)))
    t = torch.randn(4, 75 + 90, generator=g, dtype=torch.float64).requires_grad_(True)
    params = attn._bind().params

    def fn(q, k, v, t):
        out, lse = reference_attention(attn.program, q, k, v, tensors=[t], params=params, float64=True)
        return out, torch.where(lse.isinf(), 0.0, lse)

    assert torch.autograd.gradcheck(fn, (q, k, v, t), eps=1e-6, atol=1e-5)


def test_python_scalars_are_parameters_without_gradients_and_never_recompile():
    def make(offset: float):
        def score_mod(score, b, h, q, kv):
            return score + offset * (q - kv)
        return score_mod

    attn = attnc.compile(None, make(0.1))
    inputs = _inputs(1, 2, 2, 40, 40, 16, 16)
    first = _gradients(attn, inputs, [], "triton")
    kernels = attn.backward_kernels()
    attn.score_mod = make(0.3)
    second = _gradients(attn, inputs, [], "triton")
    assert attn.backward_kernels() is kernels
    expected = _gradients(attn, inputs, [], "reference")
    _assert_close_grads(second, expected, ["dq", "dk", "dv"])
    assert not torch.equal(first[0], second[0])


def test_integer_captures_get_no_gradient_and_only_row_statistics_are_saved():
    case = CASES["document"]
    attn = attnc.compile(case.mask_mod, case.score_mod)
    q, k, v = _inputs(1, 2, 2, 150, 150, 16, 16)
    out, lse = attn(q, k, v, return_lse=True, backend="triton")
    saved = out.grad_fn.saved_tensors
    assert max(t.numel() for t in saved) <= max(q.numel(), k.numel(), v.numel(), out.numel())
    assert any(t.shape == lse.shape for t in saved)
    _loss(out, lse).backward()
    assert q.grad is not None and not math.isnan(float(q.grad.sum()))


SHAPES = [(16, 16, torch.float32), (80, 48, torch.float16), (48, 96, torch.bfloat16), (256, 200, torch.float32)]


@pytest.mark.parametrize(("D", "Dv", "dtype"), SHAPES, ids=[f"{d}-{dv}-{str(t)[6:]}" for d, dv, t in SHAPES])
def test_head_dims_value_dims_and_dtypes(D, Dv, dtype):
    """Head dims from 16 to 256 (non-powers of two, Dv != D) in each dtype, vs a float64 reference."""
    mask_mod, score_mod, (slopes,) = _stress_mods()["softcap_alibi"]
    attn = attnc.compile(mask_mod, score_mod)
    q, k, v = _inputs(1, 4, 2, 75, 50, D, Dv, dtype=dtype)
    out, lse = attn(q, k, v, return_lse=True, backend="triton")
    _loss(out, lse).backward()
    ref = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
    ref_out, ref_lse = reference_attention(attn.program, *ref, tensors=[slopes.double()],
                                           params=attn._bind().params, float64=True)
    _loss(ref_out, ref_lse).backward()
    tol = {torch.float32: 2e-4, torch.float16: 2e-2, torch.bfloat16: 6e-2}[dtype]
    for got, expected in zip((q.grad, k.grad, v.grad), ref, strict=True):
        assert got.dtype == dtype and torch.isfinite(got).all()
        scale = float(expected.grad.abs().max())
        torch.testing.assert_close(got.double(), expected.grad, atol=tol * scale, rtol=tol)


@pytest.mark.parametrize("scale", [-0.4, 0.0])
@pytest.mark.parametrize("name", ["causal", "softcap"])
def test_non_positive_scales_match_the_reference(name, scale):
    """A positive scale is folded into the row maximum and the exponent's multiply-add; a negative or zero
    one takes the plain path (forward and backward), with the same results as the reference."""
    case = CASES[name]
    attn = attnc.compile(case.mask_mod, case.score_mod)
    inputs = _inputs(1, 2, 1, 37, 45, 16, 16)
    got = _gradients(attn, inputs, [], "triton", scale=scale, enable_gqa=True)
    expected = _gradients(attn, inputs, [], "reference", scale=scale, enable_gqa=True)
    _assert_close_grads(got, expected, ["dq", "dk", "dv"])
    out, lse = attn(*inputs, return_lse=True, backend="triton", scale=scale, enable_gqa=True)
    ref_out, ref_lse = attn(*inputs, return_lse=True, backend="reference", scale=scale, enable_gqa=True)
    torch.testing.assert_close(out, ref_out, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(lse, ref_lse, atol=2e-5, rtol=2e-5)
