"""Gradients at extreme logits (1e7 to 1e9): the backward recomputes each probability with the forward's own
exponent (its row maximum subtracted exactly, then log2 of its row sum), so they stay finite and right where a
single rounded lse would be off by an ulp of 64 (Triton interpreter on CPU vs autograd through the reference)."""

from __future__ import annotations

import pytest
import torch

import attnc
from tests.zoo import DEVICE

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

B, HQ, HKV, Q_LEN, KV_LEN, D = 1, 2, 1, 37, 45, 16


def _inputs(dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = ((B, HQ, Q_LEN, D), (B, HKV, KV_LEN, D), (B, HKV, KV_LEN, D))
    return [torch.randn(s, generator=g).to(DEVICE, dtype).requires_grad_(True) for s in shapes]


def _run(attn, inputs: list[torch.Tensor], extra: list[torch.Tensor], backend: str) -> list[torch.Tensor]:
    for t in [*inputs, *extra]:
        t.grad = None
    out = attn(*inputs, backend=backend)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.device)
    (out.float() * weights).sum().backward()
    return [out.detach().float(), *(t.grad.detach().float() for t in [*inputs, *extra])]


def _empty_rows(b, h, q_idx, kv_idx):
    # every fifth query row has no allowed key
    return q_idx % 5 != 4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_huge_unnormalised_bias_gives_the_references_gradients(dtype):
    # Logits near 1e9 whose differences are exact: fl(s + bias) == bias for |s| < 32 (an ulp there is 64), so
    # each row is a softmax over exact multiples of 64 with ties, the same in every backend, and its gradients
    # are well conditioned. A single float lse is off by up to 32 (a factor 2^46 on p) at this magnitude.
    g = torch.Generator().manual_seed(2)
    steps = torch.randint(0, 3, (Q_LEN, KV_LEN), generator=g).float()
    bias = (1e9 - 64.0 * steps).to(DEVICE).requires_grad_(True)
    attn = attnc.compile(mask_mod=_empty_rows, score_mod=lambda s, b, h, q, kv: s + bias[q, kv])
    inputs = _inputs(dtype)
    got = _run(attn, inputs, [bias], "triton")
    expected = _run(attn, inputs, [bias], "reference")
    for name, a, b in zip(("out", "dq", "dk", "dv", "dbias"), got, expected, strict=True):
        assert a.isfinite().all(), name
        tol = 2e-5 if dtype is torch.float32 else 2e-2
        torch.testing.assert_close(a, b, atol=tol * max(1.0, float(b.abs().max())), rtol=tol,
                                   msg=lambda m, name=name: f"{name}: {m}")
    rows = torch.arange(Q_LEN) % 5 == 4
    assert (got[0][:, :, rows] == 0).all()  # empty rows: output 0
    assert (got[1][:, :, rows] == 0).all()  # and no gradient through them


@pytest.mark.parametrize("factor", [1e7, 1e9])
def test_scaled_scores_give_a_finite_backward_with_the_references_dv(factor):
    # s * 1e9: each row's softmax is one-hot, the same in the kernel and the reference since the backward's
    # scores are the forward's and its exponent subtracts the forward's maximum exactly. dq and dk are pure
    # rounding noise here (dscore = 1e9 times p (dp - delta), zero in exact arithmetic): finite and of the
    # noise's size, not compared.
    attn = attnc.compile(mask_mod=_empty_rows, score_mod=lambda s, b, h, q, kv: s * factor)
    inputs = _inputs(torch.float32)
    got = _run(attn, inputs, [], "triton")
    expected = _run(attn, inputs, [], "reference")
    for name, a in zip(("out", "dq", "dk", "dv"), got, strict=True):
        assert a.isfinite().all(), name
    torch.testing.assert_close(got[0], expected[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[3], expected[3], atol=1e-5, rtol=1e-5)
    noise = factor * 2.0**-23 * 1e3  # dscore times an fp32 ulp of dp - delta (|dp| < 1e2), times 10
    for a in got[1:3]:
        assert float(a.abs().max()) < noise


def test_a_backward_given_only_the_lse_rebuilds_the_row_statistics():
    # An lse that did not come from the forward's buffer (a copy): the backward takes the whole base-2 lse as
    # the row maximum, exact at ordinary logits.
    from attnc.runtime.launch import row_statistics

    lse = torch.tensor([[[0.5, float("-inf"), 3.0]]])
    stats = row_statistics(lse.clone())
    assert stats.shape == (3, 1, 1, 3)
    torch.testing.assert_close(stats[1], torch.tensor([[[0.5 / 0.6931471805599453, float("inf"),
                                                         3.0 / 0.6931471805599453]]]))
    assert (stats[2] == 0).all() and torch.equal(stats[0], lse)
