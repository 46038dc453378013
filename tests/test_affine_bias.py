"""Score mods that add a bias affine in the positions (ALiBi, linear relative biases): recognised, compiled
into the forward's scaling multiply-add and its row statistics, and equal to the reference (Triton
interpreter on CPU)."""

from __future__ import annotations

import pytest
import torch

import attnc
from attnc.codegen.bias import affine_bias
from attnc.variants.alibi import alibi
from tests.zoo import DEVICE

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SLOPES = torch.tensor([0.5, 0.25, 2.0**-3, 2.0**-8])


def _program(score_mod):
    return attnc.compile(score_mod=score_mod).program


@pytest.mark.parametrize("score_mod", [
    alibi(4),
    lambda s, b, h, q, kv: s - 0.5 * (q - kv),
    lambda s, b, h, q, kv: s + 0.5 * h * q,  # a per-head coefficient
    lambda s, b, h, q, kv: s + (kv - q),  # an integer bias that cannot wrap
    lambda s, b, h, q, kv: SLOPES[h] * (kv - 3) + s,
])
def test_affine_biases_are_recognised(score_mod):
    assert affine_bias(_program(score_mod).score) is not None


@pytest.mark.parametrize("score_mod", [
    lambda s, b, h, q, kv: s * 2.0 + kv,  # the score scaled
    lambda s, b, h, q, kv: s + kv * kv,  # not affine
    lambda s, b, h, q, kv: s + SLOPES[kv % 4],  # a read indexed by a position
    lambda s, b, h, q, kv: s + (kv // 2),  # floor division
    lambda s, b, h, q, kv: s + h * q,  # an integer product that may wrap around int32, as the mod would
    lambda s, b, h, q, kv: s + q + kv,  # likewise: q + kv passes 2**31 for the longest sequences
])
def test_other_score_mods_are_not(score_mod):
    assert affine_bias(_program(score_mod).score) is None


def test_the_forward_evaluates_no_score_mod_per_element_for_alibi():
    source = attnc.compile(score_mod=alibi(4)).source
    assert "AFFINE_BIAS = tl.constexpr(True)" in source.source
    assert source.placement["per tile (kv, score)"] == ()


def _causal_with_empty_rows(b, h, q_idx, kv_idx):
    return (q_idx >= kv_idx) & (q_idx % 9 != 4)


@pytest.mark.parametrize("score_mod", [alibi(4), lambda s, b, h, q, kv: s + 0.75 * kv - 0.25 * q + 3.0])
def test_affine_biases_match_the_reference_forward_and_backward(score_mod):
    # Q_LEN != KV_LEN, odd lengths, GQA, rows without a key, and keys far from the tile's first query
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, 75, 16, generator=g).to(DEVICE).requires_grad_(True)
    k = torch.randn(1, 2, 140, 16, generator=g).to(DEVICE).requires_grad_(True)
    v = torch.randn(1, 2, 140, 16, generator=g).to(DEVICE).requires_grad_(True)
    attn = attnc.compile(mask_mod=_causal_with_empty_rows, score_mod=score_mod)
    results = {}
    for backend in ("triton", "reference"):
        out, lse = attn(q, k, v, return_lse=True, backend=backend)
        weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        loss = (out * weights).sum() + torch.where(lse.isinf(), 0.0, lse).sum()
        results[backend] = [out, lse, *torch.autograd.grad(loss, (q, k, v))]
    for name, a, b in zip(("out", "lse", "dq", "dk", "dv"), results["triton"], results["reference"], strict=True):
        assert not a.isnan().any(), name
        torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-5, msg=lambda m, name=name: f"{name}: {m}")
    empty = torch.arange(75) % 9 == 4
    assert (results["triton"][1][:, :, empty] == float("-inf")).all()
    assert (results["triton"][0][:, :, empty] == 0).all()


def test_the_gradient_of_a_captured_slope_matches_the_reference():
    slopes = torch.tensor([0.5, 0.125, 2.0**-5, 1.0]).to(DEVICE).requires_grad_(True)
    attn = attnc.compile(mask_mod=_causal_with_empty_rows, score_mod=lambda s, b, h, q, kv: s + slopes[h] * (kv - q))
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 4, 70, 16, generator=g).to(DEVICE) for _ in range(3))
    grads = {}
    for backend in ("triton", "reference"):
        out = attn(q, k, v, backend=backend)
        (grads[backend],) = torch.autograd.grad((out * torch.cos(out)).sum(), (slopes,))
    torch.testing.assert_close(grads["triton"], grads["reference"], atol=2e-4, rtol=2e-4)


def test_an_integer_bias_that_wraps_around_int32_matches_the_reference():
    """The kernel must wrap exactly where the mod's int32 arithmetic does: such a bias takes the general path."""

    def wrapping(score, b, h, q_idx, kv_idx):
        c = q_idx
        for _ in range(20):
            c = c * 3 + kv_idx
            c = c - q_idx
        return score + c.float() * 1e-9

    assert affine_bias(_program(wrapping).score) is None
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 40, 16, generator=g) for _ in range(3))
    attn = attnc.compile(score_mod=wrapping)
    torch.testing.assert_close(attn(q, k, v, backend="triton"), attn(q, k, v, backend="reference"), atol=2e-5,
                               rtol=2e-5)
