"""The output keeps the query's memory order, as torch's FlexAttention asserts: a `[B, S, H, D]` tensor
viewed as `[B, H, S, D]` gives an output laid out `[B, S, H, D]` in memory, on both backends."""

from __future__ import annotations

import pytest
import torch

import attnc


def stride_order(t: torch.Tensor) -> list[int]:
    return sorted(range(t.dim()), key=lambda d: (-t.stride(d), d))


def causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("layout", ["bhsd", "bshd", "sbhd"])
def test_output_keeps_the_query_layout(backend: str, layout: str) -> None:
    g = torch.Generator().manual_seed(0)
    B, H, S, D = 2, 3, 40, 16
    physical = {"bhsd": (B, H, S, D), "bshd": (B, S, H, D), "sbhd": (S, B, H, D)}[layout]
    to_bhsd = {"bhsd": (0, 1, 2, 3), "bshd": (0, 2, 1, 3), "sbhd": (1, 2, 0, 3)}[layout]
    q, k, v = (torch.randn(physical, generator=g).permute(to_bhsd).requires_grad_(True) for _ in range(3))
    out = attnc.flex_attention(q, k, v, mask_mod=causal, backend=backend)
    assert stride_order(out) == stride_order(q)
    dense = [t.detach().contiguous().requires_grad_(True) for t in (q, k, v)]
    expected = attnc.flex_attention(*dense, mask_mod=causal, backend="reference")
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=2e-5)
    dout = torch.randn(expected.shape, generator=g)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    for got, want in zip(grads, torch.autograd.grad(expected, dense, dout), strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
