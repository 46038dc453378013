"""float64 inputs, as torch's own FlexAttention tests use them for gradcheck: the reference backend computes
in float64 (output and lse float64), gradcheck passes through it, and the kernels refuse float64 by name."""

from __future__ import annotations

import pytest
import torch

import attnc


def causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def tanh_cap(score, b, h, q_idx, kv_idx):
    return 5 * torch.tanh(score / 5)


def test_gradcheck_in_float64_on_the_reference_backend() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 9, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    bias = torch.randn(9, generator=g, dtype=torch.float64, requires_grad=True)

    def score_mod(score, b, h, q_idx, kv_idx):
        return tanh_cap(score, b, h, q_idx, kv_idx) + bias[kv_idx]

    def run(q, k, v, bias_):
        out, lse = attnc.flex_attention(q, k, v, score_mod=score_mod, mask_mod=causal, backend="reference",
                                        return_lse=True)
        return out, lse

    out, lse = run(q, k, v, bias)
    assert out.dtype == torch.float64 and lse.dtype == torch.float64
    assert torch.autograd.gradcheck(run, (q, k, v, bias), eps=1e-6, atol=1e-6)


def test_the_kernels_refuse_float64_by_name() -> None:
    q = torch.randn(1, 1, 8, 16, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"run float64 .* with backend='reference'"):
        attnc.flex_attention(q, q, q, backend="triton")
    with pytest.warns(UserWarning, match="reference interpreter"):
        out = attnc.compile(causal)(q, q, q, backend="auto")
    assert out.dtype == torch.float64
