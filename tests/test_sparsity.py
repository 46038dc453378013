"""The sparsity engine end to end: block maps from the mask's structure equal the dense ones, the
analytic kernels visit exactly the minimal tiles and match the reference."""

from __future__ import annotations

import pytest
import torch

import attnc
from attnc import api
from attnc.runtime.block_mask import build_block_mask
from tests import sparse_zoo as z
from tests.zoo import DEVICE

Q, KV = 200, 230


def families(q_len: int = Q, kv_len: int = KV) -> dict[str, object]:
    docs = torch.repeat_interleave(torch.arange(6, dtype=torch.int32), torch.tensor([40, 3, 90, 1, 60, 36]))
    return {
        "causal": z.causal,
        "bottom_right_causal": z.bottom_right_causal(q_len, kv_len),
        "sliding_window": z.sliding_window(37),
        "bidirectional_window": z.bidirectional_window(20),
        "per_head_window": z.per_head_window(torch.tensor([8, 33, 70, 5], dtype=torch.int32).to(DEVICE)),
        "prefix_lm": z.prefix_lm(45),
        "chunked_causal": z.chunked_causal(48),
        "block_causal_frames": z.block_causal_frames(24),
        "sinks_and_window": z.sinks_and_window(4, 40),
        "dilated_window": z.dilated_window(8, 3),
        "strided": z.strided(16, 32),
        "natten_1d": z.natten_1d(q_len, 15),
        "natten_1d_dilated": z.natten_1d(q_len, 5, dilation=2),
        "natten_1d_strided_causal": z.natten_1d(q_len, 9, stride=4, is_causal=True),
        "natten_2d": z.natten_2d(10, 20, 5),
        "natten_2d_causal_rows": z.natten_2d(10, 20, 3, is_causal=True),
        "natten_3d": z.natten_3d(2, 10, 10, 3),
        "document": z.document(docs[:q_len].to(DEVICE) if q_len == kv_len else docs.to(DEVICE)),
        "padding": z.padding(torch.tensor([150, 41], dtype=torch.int64).to(DEVICE)),
        "float_window": z.float_window(20.5),
        "half_causal": z.half_causal,
        "alibi_threshold": z.alibi_threshold(torch.tensor([0.125, 0.0625, 0.5, 0.25]).to(DEVICE), 4.0),
    }


SQUARE = {"natten_1d", "natten_1d_dilated", "natten_1d_strided_causal", "natten_2d", "natten_2d_causal_rows",
          "natten_3d", "document"}


def lengths(name: str) -> tuple[int, int]:
    return (Q, Q) if name in SQUARE else (Q, KV)


def dense_block_mask(mask_mod, B, H, q_len, kv_len, block):
    attn = attnc.compile(mask_mod)
    bindings = attn._bind()

    def mask_fn(b, h, q, kv):
        return api.evaluate_mask(attn.program, b, h, q, kv, list(bindings.tensors), bindings.params)

    return build_block_mask(mask_fn, B, H, q_len, kv_len, device=DEVICE, BLOCK_SIZE=block)


@pytest.mark.parametrize("block", [32, (64, 16)], ids=["32", "64x16"])
@pytest.mark.parametrize("name", sorted(families()))
def test_block_map_from_structure_equals_the_dense_one(name, block):
    q_len, kv_len = lengths(name)
    mask_mod = families(q_len, kv_len)[name]
    B, H = (2, 4) if name in ("per_head_window", "padding", "alibi_threshold") else (1, 1)
    analytic = attnc.create_block_mask(mask_mod, B, H, q_len, kv_len, device=DEVICE, BLOCK_SIZE=block)
    dense = dense_block_mask(mask_mod, B, H, q_len, kv_len, block)
    assert torch.equal(analytic.to_dense(), dense.to_dense())
    for field in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices", "q_num_blocks",
                  "full_q_num_blocks"):
        assert torch.equal(getattr(analytic, field), getattr(dense, field)), field


@pytest.mark.parametrize("name", sorted(families()))
def test_analytic_kernel_matches_reference(name):
    q_len, kv_len = lengths(name)
    mask_mod = families(q_len, kv_len)[name]
    B = 2 if name == "padding" else 1
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, 4, q_len, 16, generator=g).to(DEVICE)
    k, v = (torch.randn(B, 2, kv_len, 16, generator=g).to(DEVICE) for _ in range(2))
    attn = attnc.compile(mask_mod)
    out, lse = attn(q, k, v, return_lse=True, backend="triton", kernel_options={"BLOCK_M": 32, "BLOCK_N": 32})
    ref_out, ref_lse = attn(q, k, v, return_lse=True, backend="reference")
    torch.testing.assert_close(out, ref_out, atol=2e-5, rtol=2e-5)
    assert torch.equal(lse.isinf(), ref_lse.isinf())
    torch.testing.assert_close(lse[lse.isfinite()], ref_lse[ref_lse.isfinite()], atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("name", ["causal", "sliding_window", "sinks_and_window", "natten_2d", "chunked_causal",
                                  "document"])
def test_tile_stats_are_the_minimal_counts(name):
    q_len, kv_len = lengths(name)
    mask_mod = families(q_len, kv_len)[name]
    stats = attnc.compile(mask_mod).tile_stats(1, 1, q_len, kv_len, BLOCK_M=32, BLOCK_N=32)
    dense = dense_block_mask(mask_mod, 1, 1, q_len, kv_len, 32)
    full = int(dense.full_kv_num_blocks.sum()) if dense.full_kv_num_blocks is not None else 0
    partial = int(dense.kv_num_blocks.sum())
    total = -(-q_len // 32) * -(-kv_len // 32)
    # tile_stats judges ragged edge tiles by their in-bounds part; the BlockMask calls them partial
    assert stats["empty"] == total - partial - full
    assert stats["partial"] + stats["full"] == partial + full
    assert stats["partial"] <= partial


def test_causal_block_mask_at_long_context_is_analytic():
    n = 1 << 16
    bm = attnc.create_block_mask(z.causal, None, None, n, n, device="cpu")
    blocks = n // 128
    assert int(bm.full_kv_num_blocks.sum()) == blocks * (blocks - 1) // 2
    assert int(bm.kv_num_blocks.sum()) == blocks


def test_document_plan_is_reused_until_the_ids_change():
    docs = torch.repeat_interleave(torch.arange(3, dtype=torch.int32), torch.tensor([50, 30, 48])).to(DEVICE)
    attn = attnc.compile(z.document(docs))
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 128, 16, generator=g).to(DEVICE) for _ in range(3))
    first = attn(q, k, v, backend="triton")
    plan = attn.planner._plan
    attn(q, k, v, backend="triton")
    assert attn.planner._plan is plan
    docs[40:] = 7  # in place: the version counter changes, so the plan is rebuilt
    second = attn(q, k, v, backend="triton")
    assert attn.planner._plan is not plan
    torch.testing.assert_close(second, attn(q, k, v, backend="reference"), atol=2e-5, rtol=2e-5)
    assert not torch.allclose(first, second)
