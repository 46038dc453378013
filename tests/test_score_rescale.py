"""`score / c` and `score * k` with c, k known outside the key loop: the kernels multiply the unscaled q.k by one
hoisted factor (sm_scale / c, sm_scale * k) instead of scaling twice; a positive last factor of the score mod
(a softcap's `* cap`, a temperature) moves into the exponent's multiply-add. Results match the reference."""

from __future__ import annotations

import pytest
import torch

import attnc
from attnc import variants
from attnc.runtime import launch


def softcap_by(cap):
    def score(s, b, h, q_idx, kv_idx):
        return torch.tanh(s / cap) * cap

    return score


def temperature(s, b, h, q_idx, kv_idx):
    return s * 0.75


@pytest.mark.parametrize("score_mod", [softcap_by(20.0), variants.softcap(30)],
                         ids=["softcap_literal", "softcap_parameter"])
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


def scaled_by(t):
    def score(s, b, h, q_idx, kv_idx):
        return torch.tanh(s) * t

    return score


def test_a_constant_last_factor_joins_the_exponent():
    attn = attnc.compile(variants.causal(), temperature)
    sources = (attn.source.source, attn.backward_source.source, attn.decode_source.source)
    for source in sources:
        assert "score_log2e = tl.full([], LOG2E * 0.75, COMPUTE)" in source
    assert attn.source.score_factor is None  # nothing left for the launch to decide


@pytest.mark.parametrize("t", [2.5, -0.5])
def test_a_parameter_last_factor_joins_the_exponent_only_when_positive(t, monkeypatch):
    seen: list[bool] = []
    original = launch.score_factor_positive

    def spy(params, slot):
        seen.append(original(params, slot))
        return seen[-1]

    monkeypatch.setattr(launch, "score_factor_positive", spy)
    for module in ("attnc.runtime.launch_backward", "attnc.runtime.decode"):
        monkeypatch.setattr(f"{module}.score_factor_positive", spy)
    attn = attnc.compile(variants.causal(), scaled_by(t))
    assert attn.source.score_factor is not None
    assert attn.backward_source.score_factor == attn.source.score_factor
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 70, 16, generator=g).requires_grad_(True) for _ in range(3))
    out, lse = attnc.flex_attention(q, k, v, score_mod=scaled_by(t), mask_mod=variants.causal(),
                                    backend="triton", return_lse=True)
    want, want_lse = attnc.flex_attention(q, k, v, score_mod=scaled_by(t), mask_mod=variants.causal(),
                                          backend="reference", return_lse=True)
    torch.testing.assert_close(out, want, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(lse, want_lse, atol=2e-5, rtol=2e-5)
    dout = torch.randn(out.shape, generator=g)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), dout), torch.autograd.grad(want, (q, k, v), dout),
                    strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    # the last query decoding over the cache (heads third: [B, S, H, D]); causally it sees every key, as here
    last, k_cache, v_cache = (t.detach().transpose(1, 2) for t in (q[:, :, -1:], k, v))
    decoded = attnc.kvcache_attention(last, k_cache, v_cache,
                                      torch.tensor([70], dtype=torch.int32), score_mod=scaled_by(t),
                                      backend="triton")
    torch.testing.assert_close(decoded, want[:, :, -1:].detach().transpose(1, 2), atol=2e-5, rtol=2e-5)
    assert seen and all(flag is (t > 0) for flag in seen)
