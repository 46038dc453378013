"""Zero-dimensional captured tensors (`offset = torch.tensor(5)`, a learned `torch.tensor(0.5, requires_grad=True)`)
used as a value, in a comparison, in index arithmetic and as an index: forward and backward through the
generated kernel and the reference against dense torch (FlexAttention's float64-golden pattern, see
test_pointwise_ops), the gradient of a 0-d float tensor, block maps equal to torch's, and runtime data
semantics (a new value in the same tensor is read by the next call, without tracing again)."""

from __future__ import annotations

import pytest
import torch

import attnc
from tests.test_pointwise_ops import KV_LEN, Q_LEN, assert_block_map_like_torch, assert_like_torch, inputs

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

OFFSET = torch.tensor(5)  # int64, as torch.tensor makes it
WIDTH = torch.tensor(7, dtype=torch.int32)
HALF = torch.tensor(0.5)
ROW = torch.tensor(2)
BIAS = torch.linspace(-1.0, 1.0, Q_LEN + KV_LEN + 20)
TABLE = torch.randn(4, KV_LEN, generator=torch.Generator().manual_seed(3))

MASK_MODS = {
    "comparison": lambda b, h, q, kv: q + OFFSET >= kv,
    "window": lambda b, h, q, kv: (q - kv).abs() <= WIDTH,
    "float_comparison": lambda b, h, q, kv: q * HALF + OFFSET >= kv * HALF,
    "as_index": lambda b, h, q, kv: TABLE[ROW, kv] > -0.5,
    "index_arithmetic": lambda b, h, q, kv: BIAS[q - kv + OFFSET + KV_LEN] > -0.6,
}

SCORE_MODS = {
    "value": lambda s, b, h, q, kv: s + OFFSET * 0.1 + HALF,
    "index_arithmetic": lambda s, b, h, q, kv: s + BIAS[q - kv + OFFSET + KV_LEN],
    "as_index": lambda s, b, h, q, kv: s + TABLE[ROW, kv] + TABLE[OFFSET - 2, kv] * HALF,
    "in_where": lambda s, b, h, q, kv: torch.where(kv - q > OFFSET, s * HALF, s),
}


@pytest.mark.parametrize("name", sorted(SCORE_MODS))
def test_score_mods_reading_zero_dim_tensors_match_torch(name):
    assert_like_torch(score_mod=SCORE_MODS[name])


@pytest.mark.parametrize("name", sorted(MASK_MODS))
def test_masks_reading_zero_dim_tensors_match_torch(name):
    assert_like_torch(mask_mod=MASK_MODS[name], score_mod=lambda s, b, h, q, kv: s * 2)


@pytest.mark.parametrize("name", sorted(MASK_MODS))
def test_block_maps_of_masks_reading_zero_dim_tensors_equal_torch_s(name):
    assert_block_map_like_torch(MASK_MODS[name], None, Q_LEN, KV_LEN, 16)


def test_gradient_of_a_zero_dim_float_tensor():
    scale = torch.tensor(0.7, requires_grad=True)
    shift = torch.tensor(0.2, requires_grad=True)
    bias = torch.randn(KV_LEN, generator=torch.Generator().manual_seed(1)).requires_grad_(True)

    def score_mod(s, b, h, q, kv):
        return s * scale + torch.tanh(shift * bias[kv]) + torch.where(q >= kv, shift, 0.0)

    assert_like_torch(score_mod=score_mod, captured=(scale, shift, bias))


def test_gradient_through_torch_operations_on_a_zero_dim_tensor():
    """`log_temp.exp()` in the mod is recomputed at every call, under autograd."""
    log_temp = torch.tensor(-0.3, requires_grad=True)
    assert_like_torch(score_mod=lambda s, b, h, q, kv: s / log_temp.exp(), captured=(log_temp,))


def test_zero_dim_tensors_are_runtime_data():
    offset, scale = torch.tensor(3), torch.tensor(1.0)

    def mask_mod(b, h, q, kv):
        return q + offset >= kv

    def score_mod(s, b, h, q, kv):
        return s * scale

    attn = attnc.compile(mask_mod, score_mod)
    q, k, v = (t.detach() for t in inputs())
    first = attn(q, k, v, backend="triton")
    offset.fill_(-4)
    scale.fill_(2.5)
    second = attn(q, k, v, backend="triton")
    expected = attn(q, k, v, backend="reference")
    torch.testing.assert_close(second, expected, atol=2e-5, rtol=2e-5)
    assert not torch.allclose(first, second)
    assert attn.program.tensors[0].ndim == 0


def test_block_mask_built_from_a_zero_dim_tensor_drives_the_kernel():
    def mask_mod(b, h, q, kv):
        return (q + OFFSET >= kv) & (kv >= q - WIDTH * 2)

    q, k, v = (t.detach() for t in inputs())
    bm = attnc.create_block_mask(mask_mod, None, None, Q_LEN, KV_LEN, device="cpu", BLOCK_SIZE=16)
    got = attnc.flex_attention(q, k, v, block_mask=bm, backend="triton")
    expected = attnc.flex_attention(q, k, v, mask_mod=mask_mod, backend="reference")
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=2e-5)
