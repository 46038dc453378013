"""Attention over a KV cache, contiguous or paged: the last Sq positions of each sequence against its valid
cache, equal to the reference on the equivalent padded problem, for decode (Sq 1), speculative verification
and chunked prefill, GQA, pages in any order and shared, empty sequences; bad caches named."""

from __future__ import annotations

import pytest
import torch

import attnc


def causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def window(b, h, q_idx, kv_idx):
    return (q_idx >= kv_idx) & (q_idx - kv_idx < 20)


SLOPES = torch.tensor([0.3, 0.1, 0.05, 0.02])


def alibi(score, b, h, q_idx, kv_idx):
    return score + SLOPES[h] * (kv_idx - q_idx)


def expected(q, k_cache, v_cache, lengths, mask_mod, score_mod):
    """The padded problem: every sequence's cache as keys, queries at positions L - Sq + i."""
    Sq = q.shape[1]
    L = torch.tensor(lengths)

    def padded_mask(b, h, q_idx, kv_idx):
        inside = kv_idx < L[b]
        return inside if mask_mod is None else inside & mask_mod(b, h, q_idx + L[b] - Sq, kv_idx)

    shifted = None if score_mod is None else (lambda s, b, h, qi, kv: score_mod(s, b, h, qi + L[b] - Sq, kv))
    out, lse = attnc.flex_attention(q.transpose(1, 2), k_cache.transpose(1, 2), v_cache.transpose(1, 2),
                                    score_mod=shifted, mask_mod=padded_mask, enable_gqa=True, return_lse=True,
                                    backend="reference")
    return out.transpose(1, 2), lse


CASES = {
    "decode_causal": (1, causal, None, [37, 5, 64]),
    "speculative_window_alibi": (4, window, alibi, [50, 33, 64]),
    "chunked_prefill_full": (16, None, alibi, [16, 40, 64]),
    "empty_sequence": (1, causal, None, [0, 12, 3]),
}


@pytest.mark.parametrize("paged", [False, True])
@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_cache_attention_equals_the_padded_problem(name: str, backend: str, paged: bool) -> None:
    Sq, mask_mod, score_mod, lengths = CASES[name]
    g = torch.Generator().manual_seed(4)
    B, S_max, Hq, Hkv, D = 3, 64, 4, 2, 16
    q = torch.randn(B, Sq, Hq, D, generator=g)
    k_cache, v_cache = (torch.randn(B, S_max, Hkv, D, generator=g) for _ in range(2))
    cache_seqlens = torch.tensor(lengths, dtype=torch.int32)
    want_out, want_lse = expected(q, k_cache, v_cache, lengths, mask_mod, score_mod)
    options = {"mask_mod": mask_mod, "score_mod": score_mod, "return_lse": True, "backend": backend}
    if paged:
        page, pages_per_seq = 16, S_max // 16
        order = torch.randperm(B * pages_per_seq + 2, generator=g)[: B * pages_per_seq]  # a pool with spares
        pool_k, pool_v = (torch.randn(B * pages_per_seq + 2, page, Hkv, D, generator=g) for _ in range(2))
        pool_k[order] = k_cache.reshape(-1, page, Hkv, D)
        pool_v[order] = v_cache.reshape(-1, page, Hkv, D)
        table = order.view(B, pages_per_seq).to(torch.int32)
        for b, length in enumerate(lengths):
            if length <= 48:
                table[b, 3] = -1  # a page past the sequence's tokens: never read
        out, lse = attnc.kvcache_attention(q, pool_k, pool_v, cache_seqlens, block_table=table, **options)
    else:
        out, lse = attnc.kvcache_attention(q, k_cache, v_cache, cache_seqlens, **options)
    assert out.shape == (B, Sq, Hq, D) and lse.shape == (B, Hq, Sq)
    # float32 throughout; an ALiBi bias of up to ~20 is folded into the exponent in another order than the
    # reference adds it (see the guide's error bound for affine biases)
    torch.testing.assert_close(out, want_out, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(lse, want_lse, atol=1e-4, rtol=1e-4)
    if 0 in lengths:
        b = lengths.index(0)
        assert torch.equal(out[b], torch.zeros_like(out[b])) and torch.isneginf(lse[b]).all()


def test_pages_shared_between_sequences() -> None:
    """Two sequences with a common prefix read the same pages."""
    g = torch.Generator().manual_seed(5)
    pool_k, pool_v = (torch.randn(6, 16, 2, 16, generator=g) for _ in range(2))
    table = torch.tensor([[0, 1, 2], [0, 1, 5]], dtype=torch.int32)
    q = torch.randn(2, 1, 2, 16, generator=g)
    lengths = torch.tensor([40, 45], dtype=torch.int32)
    out = attnc.kvcache_attention(q, pool_k, pool_v, lengths, block_table=table, mask_mod=causal, backend="triton")
    contiguous = [pool[table.long()].flatten(1, 2) for pool in (pool_k, pool_v)]
    want = attnc.kvcache_attention(q, *contiguous, lengths, mask_mod=causal, backend="reference")
    torch.testing.assert_close(out, want, atol=2e-5, rtol=2e-5)


def test_a_compiled_variant_runs_over_a_cache() -> None:
    q, cache = torch.randn(1, 2, 2, 16), torch.randn(1, 32, 2, 16)
    lengths = torch.tensor([20], dtype=torch.int32)
    attn = attnc.compile(causal)
    torch.testing.assert_close(attn.kvcache(q, cache, cache, lengths, backend="reference"),
                               attnc.kvcache_attention(q, cache, cache, lengths, mask_mod=causal, backend="reference"))


@pytest.mark.parametrize(("change", "message"), [
    ({"cache_seqlens": torch.tensor([70], dtype=torch.int32)}, r"cache_seqlens must lie in \[0, 64\]"),
    ({"cache_seqlens": torch.tensor([10])}, r"cache_seqlens must be int32 \[B=1\]"),
    ({"block_table": torch.tensor([[0, 9, 1, 2]], dtype=torch.int32)}, r"outside the pool \[0, 4\)"),
    ({"block_table": torch.tensor([[0, 1]], dtype=torch.int32), "cache_seqlens": torch.tensor([40], dtype=torch.int32)},
     r"cache_seqlens must lie in \[0, 32\]"),
    ({"page": 8}, "page_size must be a multiple of 16, got 8"),
    ({"num_splits": -1}, r"num_splits must be an int >= 0 \(0: automatic\), got -1"),
])
def test_bad_caches_are_named(change, message) -> None:
    page = change.pop("page", 16)
    pool = torch.randn(64 // page, page, 2, 16)
    q = torch.randn(1, 1, 2, 16)
    args = {"cache_seqlens": torch.tensor([30], dtype=torch.int32), "block_table":
            torch.arange(64 // page, dtype=torch.int32).view(1, -1), **change}
    with pytest.raises(ValueError, match=message):
        attnc.kvcache_attention(q, pool, pool, args.pop("cache_seqlens"), backend="reference", **args)


def test_tiles_past_each_sequence_and_outside_a_window_are_skipped() -> None:
    from attnc.serving.kvcache import cache_variant

    variant = cache_variant(window, None)
    variant.lengths(torch.tensor([10, 100], dtype=torch.int32), 1)
    # sequence 0: one 16-key tile holds its 10 keys, 7 are past them; sequence 1's query (position 99) sees
    # keys 80-99: tile 5 whole, tile 6 in part, the other 6 tiles not at all
    assert variant.attention.tile_stats(2, 1, 1, 128, BLOCK_M=16, BLOCK_N=16) == {
        "empty": 7 + 6, "partial": 2, "full": 1}
