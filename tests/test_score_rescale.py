"""`score / c` and `score * k` with c, k known outside the key loop: the kernels multiply the unscaled q.k by one
hoisted factor (sm_scale / c, sm_scale * k) instead of scaling twice; results match the reference."""

from __future__ import annotations

import pytest
import torch

import attnc
from attnc import variants


def softcap_by(cap):
    def score(s, b, h, q_idx, kv_idx):
        return torch.tanh(s / cap) * cap

    return score


def temperature(s, b, h, q_idx, kv_idx):
    return s * 0.75


@pytest.mark.parametrize("score_mod", [softcap_by(20.0), variants.softcap(30), temperature],
                         ids=["softcap_literal", "softcap_parameter", "temperature"])
def test_every_kernel_scales_q_k_once(score_mod):
    attn = attnc.compile(variants.causal(), score_mod)
    sources = {"forward": attn.source.source, "backward": attn.backward_source.source,
               "decode": attn.decode_source.source}
    for name, source in sources.items():
        assert "factor0 = sm_scale " in source, name
        assert "raw_score /" not in source and "(score /" not in source, name


@pytest.mark.parametrize("cap", [20.0, 0.5])
def test_rescaled_softcap_matches_the_reference(cap):
    attn = attnc.compile(variants.causal(), softcap_by(cap))
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 75, 16, generator=g).requires_grad_(True) for _ in range(3))
    out = attn(q, k, v, backend="triton")
    want = attn(q, k, v, backend="reference")
    torch.testing.assert_close(out, want, atol=2e-5, rtol=2e-5)
    dout = torch.randn(out.shape, generator=g)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), dout), torch.autograd.grad(want, (q, k, v), dout),
                    strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
