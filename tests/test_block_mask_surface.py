"""attnc's BlockMask has FlexAttention's whole public surface, with the same results: `from_kv_blocks`,
indexing and slicing, `adjust` (torch's `_adjust`), `to_string` / `str`, `shape`, `numel`, `sparsity`,
`as_tuple`, `to`; it rejects what torch rejects, with a message; and torch's own BlockMask objects (whole or
sliced) drive attnc's kernels."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import flex_attention as tfa

import attnc
from attnc.runtime.block_mask import BlockMask, BlockMaskError, as_batched


def causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def banded(b, h, q_idx, kv_idx):
    return (q_idx - kv_idx <= 70) & (kv_idx <= q_idx + 5 * h)


def pair(mask_mod=causal, B=2, H=3, Q=200, KV=300, block=64):
    theirs = tfa.create_block_mask(mask_mod, B, H, Q, KV, device="cpu", BLOCK_SIZE=block)
    ours = attnc.create_block_mask(mask_mod, B, H, Q, KV, device="cpu", BLOCK_SIZE=block)
    return ours, theirs


def assert_same_map(ours: BlockMask, theirs) -> None:
    assert ours.shape == theirs.shape and ours.numel() == theirs.numel()
    assert (ours.seq_lengths, ours.BLOCK_SIZE) == (tuple(theirs.seq_lengths), tuple(theirs.BLOCK_SIZE))
    assert torch.equal(ours.to_dense(), theirs.to_dense())
    for name in BlockMask.TENSOR_FIELDS:
        if "num_blocks" in name and getattr(theirs, name) is not None:
            assert torch.equal(getattr(ours, name), getattr(theirs, name)), name
    assert ours.sparsity() == pytest.approx(theirs.sparsity())


@pytest.mark.parametrize("mask_mod", [causal, banded])
def test_built_maps_match_torch_in_every_view(mask_mod) -> None:
    ours, theirs = pair(mask_mod)
    assert_same_map(ours, theirs)
    assert str(ours) == str(theirs)
    for grid, limit in ((2, 4), ((3, 5), 2), (-1, 1), (20, 10)):
        assert ours.to_string(grid_size=grid, limit=limit) == theirs.to_string(grid_size=grid, limit=limit)


@pytest.mark.parametrize("index", [
    0, -1, (0, 1), (slice(None), 1), (slice(0, 2), slice(1, 3)), (slice(None), slice(None), 2),
    (slice(0, 2), slice(1, 2), torch.tensor([1, 3], dtype=torch.int32)), (1, 2, torch.tensor([0]))
])
def test_indexing_matches_torch(index) -> None:
    ours, theirs = pair(banded)
    sliced = ours[index]
    assert_same_map(sliced, theirs[index])
    with pytest.raises(RuntimeError, match="sliced BlockMask has no mask_mod"):
        sliced.mask_mod(None, None, None, None)


def test_index_errors_are_clear() -> None:
    ours, _ = pair()
    with pytest.raises(IndexError, match="index 5 is out of range"):
        ours[5]
    with pytest.raises(IndexError, match="too many indices"):
        ours[0, 0, 0, 0]


@pytest.mark.parametrize(("q_len", "kv_len"), [(130, 200), (64, 64), (1, 300), (200, 300)])
def test_adjust_cuts_to_shorter_lengths_like_torch(q_len, kv_len) -> None:
    ours, theirs = pair(banded)
    cut = ours.adjust(q_len, kv_len)
    reference = theirs._adjust(q_len, kv_len)
    assert cut.seq_lengths == (q_len, kv_len) and cut.shape == reference.shape
    assert torch.equal(cut.to_dense(), reference.to_dense())
    assert torch.equal(ours._adjust(q_len, kv_len).to_dense(), cut.to_dense())
    # the cut map visits every block the map built for the shorter lengths visits (a block cut ragged may
    # stay listed, or stay full: full on all its remaining pairs)
    built = attnc.create_block_mask(banded, 2, 3, q_len, kv_len, device="cpu", BLOCK_SIZE=64)
    assert bool((cut.to_dense() >= built.to_dense()).all())
    with pytest.raises(ValueError, match="build a new one for longer sequences"):
        ours.adjust(400, 300)


@pytest.mark.parametrize("block", [64, (32, 64)])
@pytest.mark.parametrize("with_full", [True, False])
def test_from_kv_blocks_matches_torch(block, with_full) -> None:
    theirs = tfa.create_block_mask(banded, 2, 3, 256, 256, device="cpu", BLOCK_SIZE=block)
    full = (theirs.full_kv_num_blocks, theirs.full_kv_indices) if with_full else ()
    ours = BlockMask.from_kv_blocks(theirs.kv_num_blocks, theirs.kv_indices, *full, BLOCK_SIZE=block,
                                    mask_mod=banded)
    reference = tfa.BlockMask.from_kv_blocks(theirs.kv_num_blocks, theirs.kv_indices, *full, BLOCK_SIZE=block,
                                             mask_mod=banded)
    assert_same_map(ours, reference)
    assert torch.equal(ours.q_indices[..., :1], reference.q_indices[..., :1])
    assert ours.mask_mod is banded
    short = BlockMask.from_kv_blocks(theirs.kv_num_blocks, theirs.kv_indices, seq_lengths=(250, 240),
                                     BLOCK_SIZE=block, compute_q_blocks=False)
    assert short.seq_lengths == (250, 240) and short.q_indices is None and short.full_kv_indices is None


def test_from_kv_blocks_rejects_what_torch_rejects_with_a_message() -> None:
    ours, _ = pair(B=1, H=1, Q=128, KV=128)
    counts, indices = ours.kv_num_blocks, ours.kv_indices
    with pytest.raises(AssertionError, match="full_kv_num_blocks and full_kv_indices must be given together"):
        BlockMask.from_kv_blocks(counts, indices, full_kv_num_blocks=counts)
    with pytest.raises(ValueError, match="full_kv_num_blocks and full_kv_indices must be given together"):
        BlockMask.from_kv_blocks(counts, indices, full_kv_indices=indices)
    with pytest.raises(ValueError, match=r"kv_indices must be an int32 tensor, got torch\.int64"):
        BlockMask.from_kv_blocks(counts, indices.long())
    with pytest.raises(ValueError, match="kv_indices must be \\[\\*batch, query blocks, key blocks\\]"):
        BlockMask.from_kv_blocks(counts, indices[0])
    with pytest.raises(ValueError, match="kv_num_blocks must lie in \\[0, 2\\]"):
        BlockMask.from_kv_blocks(counts + 2, indices)
    with pytest.raises(ValueError, match="lists a block outside \\[0, 2\\)"):
        BlockMask.from_kv_blocks(counts, indices + 5)


def test_as_tuple_and_to_follow_torch() -> None:
    ours, theirs = pair()
    flat, reference = ours.as_tuple(), theirs.as_tuple()
    assert len(flat) == len(reference)
    assert flat[:2] == reference[:2] and flat[-3:-1] == reference[-3:-1] and flat[-1] is causal
    assert all(torch.equal(a, b) for a, b in zip(flat[2:10:2], reference[2:10:2], strict=True))  # the counts
    moved = ours.to("meta")
    assert moved.kv_indices.is_meta and not ours.kv_indices.is_meta


# -- torch's and sliced maps drive attnc's kernels ------------------------------------------------------------


def inputs(B=2, H=2, Q=100, KV=100, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, n, D, generator=g) for n in (Q, KV, KV)]


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_a_torch_block_mask_drives_attnc(backend) -> None:
    q, k, v = inputs()
    theirs = tfa.create_block_mask(causal, 2, 2, 100, 100, device="cpu", BLOCK_SIZE=32)
    expected = tfa.flex_attention(q, k, v, block_mask=theirs)
    got = attnc.flex_attention(q, k, v, block_mask=theirs, backend=backend)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=2e-5)


def test_the_decoding_idiom_of_a_sliced_map_with_reassigned_lengths_and_mask() -> None:
    """One query at position `pos` against a cache of S keys: select its query block, shift the mask, and
    set the lengths, as FlexAttention's decoding examples do."""
    S, block, pos = 128, 32, 77
    q, k, v = inputs(B=1, H=2, Q=1, KV=S, seed=3)
    ours, theirs = (make(causal, 1, 2, S, S, device="cpu", BLOCK_SIZE=block)
                    for make in (attnc.create_block_mask, tfa.create_block_mask))

    def shifted(b, h, q_idx, kv_idx):
        return causal(b, h, q_idx + pos, kv_idx)

    results = []
    for base in (ours, theirs):
        step = base[:, :, torch.tensor([pos // block])]
        step.mask_mod, step.seq_lengths = shifted, (1, S)
        results.append(attnc.flex_attention(q, k, v, block_mask=step, backend="triton"))
    reference = tfa.flex_attention(q, k, v, block_mask=tfa.create_block_mask(shifted, 1, 2, 1, S, device="cpu"))
    for got in results:
        torch.testing.assert_close(got, reference, atol=2e-5, rtol=2e-5)


def test_a_map_whose_lengths_do_not_fit_its_lists_is_refused_before_launch() -> None:
    ours, _ = pair(B=1, H=1, Q=128, KV=128)
    ours.seq_lengths = (128, 300)
    with pytest.raises(BlockMaskError, match=r"make \(2, 5\) blocks, but kv_indices has \(2, 2\)"):
        as_batched(ours)
    q, k, v = inputs(B=1, H=1, Q=128, KV=300)
    with pytest.raises(ValueError, match="set seq_lengths to the lengths the lists were built for"):
        attnc.flex_attention(q, k, v, block_mask=ours, backend="reference")


@pytest.mark.parametrize(("q_len", "kv_len"), [(100, 90), (70, 128)])
def test_a_cut_map_with_ragged_full_blocks_gives_exact_attention(q_len, kv_len) -> None:
    """Cutting leaves blocks that stick out past the new ends listed as full: kernels must mask them."""
    base = attnc.create_block_mask(banded, 1, 2, 128, 128, device="cpu", BLOCK_SIZE=32)
    cut = base.adjust(q_len, kv_len)
    q, k, v = inputs(B=1, H=2, Q=q_len, KV=kv_len, seed=5)
    for tensor in (q, k, v):
        tensor.requires_grad_(True)
    got = attnc.flex_attention(q, k, v, block_mask=cut, backend="triton")
    expected = attnc.flex_attention(q, k, v, mask_mod=banded, backend="reference")
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=2e-5)
    grads = torch.autograd.grad(got.sum(), (q, k, v))
    expected_grads = torch.autograd.grad(expected.sum(), (q, k, v))
    for a, b in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
