"""Packed variable-length sequences: each sequence's output, lse and gradients equal those of the padded
problem (one sequence per batch row, padding masked) on the reference, for any variant; the packing
checks name the bad argument; merging partial attentions is exact."""

from __future__ import annotations

import pytest
import torch

import attnc


def causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def bottom_right_causal(lengths_q, lengths_k):
    def mask(b, h, q_idx, kv_idx):
        return q_idx + (lengths_k[b] - lengths_q[b]) >= kv_idx

    return mask


SLOPES = torch.tensor([0.5, 0.25, 0.125, 0.0625])


def alibi(score, b, h, q_idx, kv_idx):
    return score + SLOPES[h] * (kv_idx - q_idx)


def packed(lengths: list[int], heads: int, dim: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return torch.randn(sum(lengths), heads, dim, generator=g), cu


def padded(x: torch.Tensor, cu: torch.Tensor, length: int) -> torch.Tensor:
    """[total, H, D] -> [B, H, length, D], zeros past each sequence."""
    B, H, D = cu.shape[0] - 1, x.shape[1], x.shape[2]
    out = x.new_zeros(B, H, length, D)
    for b in range(B):
        part = x[int(cu[b]):int(cu[b + 1])]
        out[b, :, :part.shape[0]] = part.transpose(0, 1)
    return out


def unpadded(x: torch.Tensor, cu: torch.Tensor) -> torch.Tensor:
    """[B, H, length, ...] -> [total, H, ...]."""
    return torch.cat([x[b, :, :int(cu[b + 1] - cu[b])].transpose(0, 1) for b in range(cu.shape[0] - 1)])


CASES = {
    "causal": (causal, None, [5, 17, 1, 30], [5, 17, 1, 30]),
    "alibi_causal_gqa": (causal, alibi, [9, 20, 3], [9, 20, 3]),
    "bottom_right": (None, None, [4, 10, 7], [12, 10, 20]),
    "empty_sequences": (causal, None, [6, 0, 11], [6, 0, 11]),
    "full": (None, alibi, [33, 2], [7, 40]),
}


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_packed_sequences_equal_the_padded_problem(name: str, backend: str) -> None:
    mask_mod, score_mod, lengths_q, lengths_k = CASES[name]
    if name == "bottom_right":
        mask_mod = bottom_right_causal(torch.tensor(lengths_q), torch.tensor(lengths_k))
    g = torch.Generator().manual_seed(1)
    Hq, Hkv = (4, 2) if name == "alibi_causal_gqa" else (4, 4)
    q, cu_q = packed(lengths_q, Hq, 16, g)
    k, cu_k = packed(lengths_k, Hkv, 16, g)
    v, _ = packed(lengths_k, Hkv, 16, g)
    inputs = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out, lse = attnc.varlen_attention(*inputs, cu_q, cu_k, mask_mod=mask_mod, score_mod=score_mod,
                                      return_lse=True, backend=backend, max_seqlen_q=max(lengths_q))
    assert out.shape == (q.shape[0], Hq, 16) and lse.shape == (q.shape[0], Hq) and lse.dtype == torch.float32

    lq, lk = max(lengths_q), max(lengths_k)
    lengths_kv = torch.tensor(lengths_k)
    base = [t.clone().requires_grad_(True) for t in (q, k, v)]
    qp, kp, vp = padded(base[0], cu_q, lq), padded(base[1], cu_k, lk), padded(base[2], cu_k, lk)

    def padded_mask(b, h, q_idx, kv_idx):
        inside = kv_idx < lengths_kv[b]
        return inside if mask_mod is None else inside & mask_mod(b, h, q_idx, kv_idx)

    ref_out, ref_lse = attnc.flex_attention(qp, kp, vp, score_mod=score_mod, mask_mod=padded_mask,
                                            enable_gqa=True, return_lse=True, backend="reference")
    expected_out, expected_lse = unpadded(ref_out, cu_q), unpadded(ref_lse.unsqueeze(-1), cu_q).squeeze(-1)
    torch.testing.assert_close(out, expected_out, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(lse, expected_lse, atol=2e-5, rtol=2e-5)
    dout = torch.randn(out.shape, generator=g)
    grads = torch.autograd.grad(out, inputs, dout)
    expected_grads = torch.autograd.grad(expected_out, base, dout)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_a_compiled_variant_runs_packed() -> None:
    g = torch.Generator().manual_seed(2)
    q, cu = packed([3, 8], 2, 16, g)
    attn = attnc.compile(causal)
    out = attn.varlen(q, q, q, cu, cu, backend="reference")
    direct = attnc.varlen_attention(q, q, q, cu, cu, mask_mod=causal, backend="reference")
    torch.testing.assert_close(out, direct)


@pytest.mark.parametrize(("cu", "message"), [
    (torch.tensor([0, 5, 3, 8], dtype=torch.int32), "cu_seqlens_q must not decrease"),
    (torch.tensor([0, 5, 7], dtype=torch.int32), "must start at 0 and end at the packed length 8, got 0 ... 7"),
    (torch.tensor([0, 5, 8]), r"cu_seqlens_q must be a 1-D int32 tensor \[B \+ 1\], got torch.int64"),
])
def test_bad_packings_are_named(cu, message) -> None:
    q = torch.randn(8, 2, 16)
    with pytest.raises(ValueError, match=message):
        attnc.varlen_attention(q, q, q, cu, torch.tensor([0, 4, 8], dtype=torch.int32), backend="reference")


def test_max_seqlen_below_a_sequence_is_refused() -> None:
    q, cu = torch.randn(8, 2, 16), torch.tensor([0, 5, 8], dtype=torch.int32)
    with pytest.raises(ValueError, match="max_seqlen_q=4 but a sequence has more positions, got 5"):
        attnc.varlen_attention(q, q, q, cu, cu, max_seqlen_q=4, backend="reference")


# -- merging ---------------------------------------------------------------------------------------------------------


def test_merging_two_key_sets_is_attention_over_their_union() -> None:
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 12, 16, generator=g, requires_grad=True) for _ in range(3))

    def part(lo, hi):
        return attnc.flex_attention(q, k, v, mask_mod=lambda b, h, qi, kv: (kv >= lo) & (kv < hi) & (kv <= qi),
                                    return_lse=True, backend="reference")

    (out_a, lse_a), (out_b, lse_b), (whole, whole_lse) = part(0, 5), part(5, 12), part(0, 12)
    assert torch.isneginf(lse_b[:, :, :5]).all()  # rows 0-4 see no key of the second part
    out, lse = attnc.merge_attention(out_a, lse_a, out_b, lse_b)
    torch.testing.assert_close(out, whole, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(lse, whole_lse, atol=1e-6, rtol=1e-6)
    listed, _ = attnc.merge_attention([out_a, out_b], [lse_a, lse_b])
    torch.testing.assert_close(listed, out)
    grads = torch.autograd.grad(out.sum() + lse.sum(), (q, k, v))
    expected = torch.autograd.grad(whole.sum() + whole_lse.sum(), (q, k, v))
    for a, b in zip(grads, expected, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_rows_without_keys_anywhere_merge_to_zero_with_finite_gradients() -> None:
    out = torch.randn(1, 1, 3, 4, requires_grad=True)
    lse = torch.tensor([[[0.5, -torch.inf, -torch.inf]]], requires_grad=True)
    other = torch.zeros(1, 1, 3, 4, requires_grad=True)
    other_lse = torch.tensor([[[-torch.inf, 1.0, -torch.inf]]], requires_grad=True)
    merged, merged_lse = attnc.merge_attention(out, lse, other, other_lse)
    assert torch.equal(merged[0, 0, 2], torch.zeros(4)) and torch.isneginf(merged_lse[0, 0, 2])
    (merged.sum() + torch.where(torch.isinf(merged_lse), 0.0, merged_lse).sum()).backward()
    assert all(torch.isfinite(t.grad).all() for t in (out, lse, other, other_lse))


def test_tiles_across_sequences_and_above_each_diagonal_are_skipped() -> None:
    from attnc.serving.varlen import packed_variant

    variant = packed_variant(causal, None)
    cu = torch.tensor([0, 128, 256, 384, 512], dtype=torch.int32)
    variant.tables(cu, cu, 512, 512)
    # 4 sequences of 4 x 4 tiles: per sequence 4 diagonal tiles are masked, 6 full, 6 empty; the 192 tiles
    # pairing two sequences are empty
    assert variant.attention.tile_stats(1, 1, 512, 512, BLOCK_M=32, BLOCK_N=32) == {
        "empty": 4 * 6 + 192, "partial": 4 * 4, "full": 4 * 6}
