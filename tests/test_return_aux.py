"""`return_aux=AuxRequest(lse=..., max_scores=...)` as torch's FlexAttention: `(out, AuxOutput)`, the lse and
each row's largest logit after the score mod (-inf for a row without keys), on both backends."""

from __future__ import annotations

import math

import pytest
import torch

import attnc
from attnc import AuxOutput, AuxRequest


def mask(b, h, q_idx, kv_idx):
    return (q_idx >= kv_idx) & (q_idx != 5)  # row 5 sees no key


def softcap(score, b, h, q_idx, kv_idx):
    return 20 * torch.tanh(score / 20) + 0.5 * h


def dense_max(q, k, scale):
    scores = softcap(q @ k.transpose(-1, -2) * scale, None, torch.arange(q.shape[1]).view(1, -1, 1, 1), None, None)
    allowed = mask(None, None, torch.arange(q.shape[2]).view(-1, 1), torch.arange(k.shape[2]).view(1, -1))
    return scores.masked_fill(~allowed, -math.inf).amax(-1)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_aux_output_carries_lse_and_max_scores(backend: str) -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 37, 16, generator=g) for _ in range(3))
    out, aux = attnc.flex_attention(q, k, v, score_mod=softcap, mask_mod=mask, backend=backend,
                                    return_aux=AuxRequest(lse=True, max_scores=True))
    assert isinstance(aux, AuxOutput)
    ref_out, ref_lse = attnc.flex_attention(q, k, v, score_mod=softcap, mask_mod=mask, backend="reference",
                                            return_lse=True)
    torch.testing.assert_close(out, ref_out, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(aux.lse, ref_lse, atol=2e-5, rtol=2e-5)
    expected = dense_max(q, k, 0.25)
    assert torch.isneginf(aux.max_scores[:, :, 5]).all()
    torch.testing.assert_close(aux.max_scores, expected, atol=2e-5, rtol=2e-5)
    _, only_max = attnc.flex_attention(q, k, v, mask_mod=mask, backend=backend,
                                       return_aux=AuxRequest(max_scores=True))
    assert only_max.lse is None and only_max.max_scores is not None


def test_return_lse_and_return_aux_together_are_refused() -> None:
    q = torch.randn(1, 1, 8, 16)
    with pytest.raises(ValueError, match="give return_lse or return_aux, not both"):
        attnc.flex_attention(q, q, q, return_lse=True, return_aux=AuxRequest(lse=True), backend="reference")


def test_kernel_options_is_the_ninth_positional_argument_as_in_torch() -> None:
    q = torch.randn(1, 1, 40, 16)
    out = attnc.flex_attention(q, q, q, None, None, None, False, False, {"BLOCK_M": 16, "BLOCK_N": 16},
                               backend="triton")
    torch.testing.assert_close(out, attnc.flex_attention(q, q, q, backend="reference"), atol=2e-5, rtol=2e-5)
