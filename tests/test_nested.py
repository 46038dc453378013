"""Nested jagged tensors run on the packed path: the same result, lse and gradients as packing by hand."""

from __future__ import annotations

import pytest
import torch

import attnc


def causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def bias(score, b, h, q_idx, kv_idx):
    return score + 0.1 * b - 0.01 * (q_idx - kv_idx)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_jagged_inputs_equal_the_packed_call(backend: str) -> None:
    g = torch.Generator().manual_seed(0)
    lengths = [5, 17, 9]
    parts = [[torch.randn(n, 2, 16, generator=g) for n in lengths] for _ in range(3)]
    leaves = [torch.cat(p).requires_grad_(True) for p in parts]
    offsets = torch.tensor([0, 5, 22, 31])
    nested = [torch.nested.nested_tensor_from_jagged(t, offsets).transpose(1, 2) for t in leaves]
    out, lse = attnc.flex_attention(*nested, score_mod=bias, mask_mod=causal, return_lse=True, backend=backend)
    assert out.is_nested and out.shape[0] == 3
    packed = [t.detach().clone().requires_grad_(True) for t in leaves]
    cu = offsets.to(torch.int32)
    want, want_lse = attnc.varlen_attention(*packed, cu, cu, mask_mod=causal, score_mod=bias, return_lse=True,
                                            backend="reference")
    torch.testing.assert_close(out.transpose(1, 2).values(), want, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(lse.transpose(1, 2).values(), want_lse, atol=2e-5, rtol=2e-5)
    dout = torch.randn(want.shape, generator=g)
    grads = torch.autograd.grad(out.transpose(1, 2).values(), leaves, dout)
    for got, expected in zip(grads, torch.autograd.grad(want, packed, dout), strict=True):
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_a_block_mask_with_jagged_inputs_is_refused_with_the_alternative() -> None:
    t = torch.nested.nested_tensor_from_jagged(torch.randn(8, 2, 16), torch.tensor([0, 3, 8])).transpose(1, 2)
    with pytest.raises(ValueError, match="give the mask as mask_mod"):
        attnc.flex_attention(t, t, t, block_mask=attnc.create_block_mask(causal, 1, 1, 8, 8, device="cpu"))
