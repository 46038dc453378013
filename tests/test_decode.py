"""Split-KV decoding with GQA packing (`attnc.runtime.decode`, the decode path of `kvcache_attention`): equal to an
independent dense computation for causal, sliding-window, ALiBi and document masks, GQA groups 1/2/4, Sq 1 and
4, odd and zero cache lengths, any split count (more splits than key tiles included), float32 and bfloat16;
the key tiles a split reads are only those the mask keeps; bad split counts are named."""

from __future__ import annotations

import math

import pytest
import torch

import attnc
from attnc.runtime import decode
from attnc.runtime.launch import Shapes
from attnc.serving.kvcache import cache_variant

SLOPES = torch.tensor([0.5, 0.25, 0.125, 0.0625])
DOCS = torch.tensor([[0] * 40 + [1] * 60 + [2] * 30, [0] * 70 + [1] * 60, [0] * 130])


def causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def window(b, h, q_idx, kv_idx):
    return (q_idx >= kv_idx) & (q_idx - kv_idx < 24)


def document(b, h, q_idx, kv_idx):
    return (DOCS[b, q_idx] == DOCS[b, kv_idx]) & (q_idx >= kv_idx)


EVERY_THIRD = (torch.arange(300) - 130) % 3 == 0


def every_third(b, h, q_idx, kv_idx):
    # a read at an index moving with q and kv: no block structure, every tile is listed and masked
    return EVERY_THIRD[q_idx - kv_idx + 130]


def alibi(score, b, h, q_idx, kv_idx):
    return score + SLOPES[h] * (kv_idx - q_idx)


def dense(q, k, v, lengths, mask_mod, score_mod):
    """Attention of `q [B, Sq, Hq, D]` at positions L - Sq + i over each cache's first L keys, in float64 torch."""
    B, Sq, Hq, D = q.shape
    group = Hq // k.shape[2]
    out = torch.zeros(B, Sq, Hq, v.shape[-1], dtype=torch.float64)
    lse = torch.full((B, Hq, Sq), -math.inf, dtype=torch.float64)
    for b, length in enumerate(lengths):
        if length == 0:
            continue
        keys = k[b, :length].double().repeat_interleave(group, 1)  # [L, Hq, D]
        values = v[b, :length].double().repeat_interleave(group, 1)
        scores = torch.einsum("qhd,khd->hqk", q[b].double(), keys) / math.sqrt(D)
        h = torch.arange(Hq).view(Hq, 1, 1)
        q_idx = (length - Sq + torch.arange(Sq)).view(1, Sq, 1)
        kv_idx = torch.arange(length).view(1, 1, length)
        if score_mod is not None:
            scores = score_mod(scores, b, h, q_idx, kv_idx).double()
        if mask_mod is not None:
            scores = scores.masked_fill(~mask_mod(b, h, q_idx, kv_idx).expand_as(scores), -math.inf)
        row_lse = torch.logsumexp(scores, -1)
        probs = torch.where(torch.isneginf(row_lse)[..., None], 0.0, torch.exp(scores - row_lse[..., None]))
        out[b] = torch.einsum("hqk,khd->qhd", probs, values)
        lse[b] = row_lse
    return out, lse


CASES = {
    # name: (Sq, Hq, Hkv, mask_mod, score_mod, lengths)
    "causal_group2_sq1": (1, 4, 2, causal, None, [37, 130, 1]),
    "window_alibi_group4_sq4": (4, 4, 1, window, alibi, [130, 50, 9]),
    "alibi_only_group1_sq1": (1, 2, 2, None, alibi, [65, 0, 128]),
    "document_group2_sq4": (4, 4, 2, document, None, [130, 101, 66]),
    "empty_sequence": (1, 4, 2, causal, alibi, [0, 0, 3]),
    "relative_table_group2_sq4": (4, 4, 2, every_third, None, [130, 70, 5]),
}


@pytest.mark.parametrize("splits", [0, 1, 3, 9])
@pytest.mark.parametrize("name", sorted(CASES))
def test_decode_equals_dense_attention(name: str, splits: int) -> None:
    Sq, Hq, Hkv, mask_mod, score_mod, lengths = CASES[name]
    g = torch.Generator().manual_seed(7)
    B, S_max, D = 3, 130, 16
    q = torch.randn(B, Sq, Hq, D, generator=g)
    k_cache, v_cache = (torch.randn(B, S_max, Hkv, D, generator=g) for _ in range(2))
    seqlens = torch.tensor(lengths, dtype=torch.int32)
    out, lse = attnc.kvcache_attention(q, k_cache, v_cache, seqlens, mask_mod=mask_mod, score_mod=score_mod,
                                       return_lse=True, num_splits=splits, backend="triton")
    want_out, want_lse = dense(q, k_cache, v_cache, lengths, mask_mod, score_mod)
    torch.testing.assert_close(out.double(), want_out, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(lse.double(), want_lse, atol=2e-5, rtol=2e-5)
    assert not out.isnan().any() and not lse.isnan().any()


def test_decode_in_bfloat16_is_close_to_float64() -> None:
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 1, 4, 16, generator=g)
    k_cache, v_cache = (torch.randn(2, 96, 2, 16, generator=g) for _ in range(2))
    lengths = [96, 41]
    out, lse = attnc.kvcache_attention(q.bfloat16(), k_cache.bfloat16(), v_cache.bfloat16(),
                                       torch.tensor(lengths, dtype=torch.int32), mask_mod=window, score_mod=alibi,
                                       return_lse=True, num_splits=2, backend="triton")
    assert out.dtype == torch.bfloat16 and lse.dtype == torch.float32
    want_out, want_lse = dense(q.bfloat16().float(), k_cache.bfloat16().float(), v_cache.bfloat16().float(),
                               lengths, window, alibi)
    torch.testing.assert_close(out.double(), want_out, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(lse.double(), want_lse, atol=1e-3, rtol=1e-3)


def _lists(mask_mod, lengths: list[int], Sq: int, S_max: int, Hq: int = 4, Hkv: int = 2) -> decode.TileLists:
    variant = cache_variant(mask_mod, None)
    seqlens = torch.tensor(lengths, dtype=torch.int32)
    variant.lengths(seqlens, Sq)
    bindings = variant.attention.bind_mods(variant.mask_mod, variant.score_mod)
    shapes = Shapes(len(lengths), Hq, Hkv, Sq, S_max, 16, 16)
    return decode.tile_lists(variant.attention.program, bindings.tensors, bindings.params, shapes,
                             torch.device("cpu"))


def test_a_sliding_window_over_a_long_cache_lists_only_its_tiles() -> None:
    lists = _lists(window, [128 * 1024, 5000, 0], Sq=1, S_max=128 * 1024)
    # a 24-key window ends at the last position: one or two 64-key tiles per (sequence, kv head)
    assert lists.counts.tolist() == [[1, 1], [2, 2], [0, 0]]
    assert lists.tiles[0, 0, 0] == (128 * 1024 - 1) // decode.BLOCK_N
    assert lists.tiles[1, :, :2].tolist() == [[77, 78], [77, 78]]


def test_a_document_mask_lists_only_the_last_document() -> None:
    lists = _lists(document, [130, 101, 66], Sq=4, S_max=130)
    # sequence 0 decodes in document 2 (keys 100..129), sequence 1 in document 1 (keys 70..100), sequence 2 in
    # document 0 (keys 0..65): tile 0 (keys 0..63) is never read for the first two
    assert lists.counts[:, 0].tolist() == [2, 1, 2]
    assert lists.tiles[0, 0, :2].tolist() == [1, 2]
    assert lists.tiles[1, 0, :1].tolist() == [1]
    assert lists.tiles[2, 0, :2].tolist() == [0, 1]
    # tiles wholly inside the sequence (no mask but the length): full, never masked; the one the length cuts
    # is partial
    no_mask = _lists(None, [130, 101, 66], Sq=4, S_max=130)
    assert no_mask.full[1, 0, :2].tolist() == [1, 0]


def test_the_automatic_split_count_fills_the_machine_with_enough_keys_per_split() -> None:
    shapes = Shapes(1, 8, 1, 1, 64 * 1024, 64, 64)
    cpu = torch.device("cpu")
    assert decode.choose_splits(1024, shapes, 1, cpu, 0) == decode.INTERPRETER_SMS
    assert decode.choose_splits(5, shapes, 1, cpu, 0) == 1  # too few tiles to share
    assert decode.choose_splits(5, shapes, 1, cpu, 7) == 7  # forced
    wide = Shapes(8, 8, 8, 1, 64 * 1024, 64, 64)  # 64 programs already fill the (interpreter's) machine
    assert decode.choose_splits(1024, wide, 1, cpu, 0) == 1


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_bad_split_counts_are_named(bad) -> None:
    q = torch.randn(1, 1, 2, 16)
    cache = torch.randn(1, 32, 2, 16)
    with pytest.raises(ValueError, match=r"attnc\.kvcache_attention: num_splits must be an int >= 0"):
        attnc.kvcache_attention(q, cache, cache, torch.tensor([32], dtype=torch.int32), num_splits=bad,
                                backend="triton")


def test_decode_source_is_deterministic_and_masks_only_partial_tiles() -> None:
    first = attnc.compile(mask_mod=window, score_mod=alibi).decode_source.source
    assert first == attnc.compile(mask_mod=window, score_mod=alibi).decode_source.source
    body = first.split("if apply_mask:")[1].split("if CHECK_KV:")[0]
    assert "mask = " in body and "mask = " not in first.split("if apply_mask:")[0].split("def _attend_tile")[1]


@pytest.mark.parametrize("page_size", [16, 48, 128])
def test_paged_caches_are_read_through_the_table(page_size: int) -> None:
    """Pages in any order, shared between sequences, smaller or larger than a key tile; unused pages and the
    slots past each length hold NaN, which must never reach the result."""
    g = torch.Generator().manual_seed(11)
    B, Hq, Hkv, D, Sq = 3, 4, 2, 16, 2
    lengths = [130, 1, 75]
    max_pages = -(-130 // page_size)
    num_pages = B * max_pages + 2
    pool_k, pool_v = (torch.full((num_pages, page_size, Hkv, D), math.nan) for _ in range(2))
    table = torch.randperm(num_pages, generator=g)[: B * max_pages].view(B, max_pages).to(torch.int32)
    table[2, 0] = table[0, 0]  # a shared first page (a common prompt)
    contiguous = [torch.randn(B, max_pages * page_size, Hkv, D, generator=g) for _ in range(2)]
    for cache in contiguous:
        cache[2, :page_size] = cache[0, :page_size]
    for b, length in enumerate(lengths):
        for slot in range(length):
            page, offset = table[b, slot // page_size], slot % page_size
            pool_k[page, offset], pool_v[page, offset] = contiguous[0][b, slot], contiguous[1][b, slot]
    table[1, 1:] = -5  # entries past a sequence's pages may hold anything
    q = torch.randn(B, Sq, Hq, D, generator=g)
    seqlens = torch.tensor(lengths, dtype=torch.int32)
    out, lse = attnc.kvcache_attention(q, pool_k, pool_v, seqlens, block_table=table, mask_mod=window,
                                       score_mod=alibi, return_lse=True, num_splits=2, backend="triton")
    want_out, want_lse = dense(q, *contiguous, lengths, window, alibi)
    torch.testing.assert_close(out.double(), want_out, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(lse.double(), want_lse, atol=2e-5, rtol=2e-5)


def test_keys_past_each_length_are_never_loaded() -> None:
    g = torch.Generator().manual_seed(5)
    q = torch.randn(2, 1, 2, 16, generator=g)
    k_cache, v_cache = (torch.randn(2, 100, 1, 16, generator=g) for _ in range(2))
    lengths = [70, 3]
    for b, length in enumerate(lengths):
        k_cache[b, length:], v_cache[b, length:] = math.inf, math.nan
    out = attnc.kvcache_attention(q, k_cache, v_cache, torch.tensor(lengths, dtype=torch.int32), num_splits=1,
                                  backend="triton")
    torch.testing.assert_close(out.double(), dense(q, k_cache, v_cache, lengths, None, None)[0], atol=2e-5,
                               rtol=2e-5)


def test_decode_in_float64_keeps_float64() -> None:
    g = torch.Generator().manual_seed(9)
    q = torch.randn(2, 2, 4, 16, generator=g, dtype=torch.float64)
    k_cache, v_cache = (torch.randn(2, 70, 2, 16, generator=g, dtype=torch.float64) for _ in range(2))
    lengths = [70, 0]
    out, lse = attnc.kvcache_attention(q, k_cache, v_cache, torch.tensor(lengths, dtype=torch.int32),
                                       mask_mod=causal, score_mod=alibi, return_lse=True, num_splits=2,
                                       backend="triton")
    assert out.dtype == lse.dtype == torch.float64
    want_out, want_lse = dense(q, k_cache, v_cache, lengths, causal, alibi)
    torch.testing.assert_close(out, want_out, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(lse, want_lse, atol=1e-10, rtol=1e-10)


def test_flex_attention_with_a_short_query_decodes_with_equal_results() -> None:
    g = torch.Generator().manual_seed(2)
    q = torch.randn(2, 4, 3, 16, generator=g)
    k, v = (torch.randn(2, 2, 90, 16, generator=g) for _ in range(2))
    got = attnc.flex_attention(q, k, v, score_mod=alibi, mask_mod=causal, enable_gqa=True, return_lse=True,
                               backend="triton")
    want = attnc.flex_attention(q, k, v, score_mod=alibi, mask_mod=causal, enable_gqa=True, return_lse=True,
                                backend="reference")
    torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)
    assert not attnc.compile(causal, alibi).kernels.imported("decode")  # a fresh variant has not decoded yet
    from attnc.api import _compiled

    assert _compiled(causal, alibi).kernels.imported("decode")  # flex_attention's variant took the decode path
    with pytest.raises(ValueError, match="enable_gqa=True"):
        attnc.flex_attention(q, k, v, mask_mod=causal, backend="triton")


class GridRecorder:
    """A stand-in kernel: records each launch's grid and runs nothing."""

    def __init__(self) -> None:
        self.grids: list[tuple[int, ...]] = []

    def __getitem__(self, grid):
        self.grids.append(grid)
        return lambda *args, **kwargs: None


def test_one_program_per_kv_head_and_split_reads_the_group_once() -> None:
    """The grid is (B x Hkv, splits, row blocks): every query head of a group (and every new token) is a row of
    the program that reads the group's K/V tiles, not a program of its own."""
    recorder = GridRecorder()
    shapes = Shapes(3, 8, 2, 4, 640, 16, 16)
    q, k = torch.zeros(3, 8, 4, 16), torch.zeros(3, 2, 640, 16)
    lists = decode.TileLists(torch.zeros(3, 2, 10, dtype=torch.int32), torch.zeros(3, 2, 10, dtype=torch.int8),
                             torch.full((3, 2), 10, dtype=torch.int32))
    decode.launch_decode(recorder, q, k, k, lists, shapes=shapes, scale=None, tensors=[], params=[], num_splits=2,
                         interpret=True)
    assert recorder.grids == [(3 * 2, 2, 1)]  # 4 query heads x 4 tokens = 16 rows: one row block per kv head


def test_a_decoding_step_reads_nothing_back_from_the_device() -> None:
    """The split count comes from what the tile lists can hold, and each program shares its own list's live
    tiles with the other splits: the launch never waits for the lists' lengths (here on the meta device,
    where reading one back fails), so a decoding step can be captured in a CUDA graph."""
    recorder = GridRecorder()
    shapes = Shapes(1, 4, 1, 1, 4096, 16, 16)
    q, k = torch.zeros(1, 4, 1, 16), torch.zeros(1, 1, 4096, 16)
    lists = decode.TileLists(torch.zeros(1, 1, 64, dtype=torch.int32), torch.zeros(1, 1, 64, dtype=torch.int8),
                             torch.empty(1, 1, dtype=torch.int32, device="meta"))
    out, lse = decode.launch_decode(recorder, q, k, k, lists, shapes=shapes, scale=None, tensors=[], params=[],
                                    num_splits=0, interpret=True)
    assert recorder.grids == [(1, decode.choose_splits(64, shapes, 1, torch.device("cpu"), 0), 1)]
    assert out.shape == (1, 4, 1, 16) and lse.shape == (1, 4, 1)
