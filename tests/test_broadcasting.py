"""Inputs broadcast as torch broadcasts them: key / value of batch 1 serve every query batch (a shared KV, the
layout of paged caches), grouped heads; shapes torch rejects get a clear error."""

from __future__ import annotations

import pytest
import torch

import attnc


def causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def per_batch_bias(bias):
    def score_mod(score, b, h, q_idx, kv_idx):
        return score + bias[b, h]

    return score_mod


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("heads", [(4, 4), (4, 2)])
def test_a_shared_kv_batch_serves_every_query_batch(backend, heads) -> None:
    Hq, Hkv = heads
    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, Hq, 37, 16, generator=g, requires_grad=True)
    k = torch.randn(1, Hkv, 45, 16, generator=g, requires_grad=True)
    v = torch.randn(1, Hkv, 45, 16, generator=g, requires_grad=True)
    bias = torch.randn(3, Hq, generator=g)
    out = attnc.flex_attention(q, k, v, score_mod=per_batch_bias(bias), mask_mod=causal, enable_gqa=True,
                               backend=backend)
    # the same computation on explicit copies of the shared KV
    k3, v3 = (t.detach().expand(3, -1, -1, -1).clone().requires_grad_(True) for t in (k, v))
    expected = attnc.flex_attention(q.detach(), k3, v3, score_mod=per_batch_bias(bias), mask_mod=causal,
                                    enable_gqa=True, backend="reference")
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=2e-5)
    dout = torch.randn_like(out)
    dk, dv = torch.autograd.grad(out, (k, v), dout)
    dk3, dv3 = torch.autograd.grad(expected, (k3, v3), dout)
    torch.testing.assert_close(dk, dk3.sum(0, keepdim=True), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(dv, dv3.sum(0, keepdim=True), atol=1e-4, rtol=1e-4)


def test_batches_torch_rejects_are_refused_by_name() -> None:
    q, k = torch.randn(2, 2, 8, 16), torch.randn(3, 2, 8, 16)
    with pytest.raises(ValueError, match="query batch 2 != key batch 3"):
        attnc.flex_attention(q, k, k, backend="reference")
    with pytest.raises(ValueError, match="query batch 1 != key batch 3"):
        attnc.flex_attention(q[:1], k, k, backend="reference")
