"""BlockMask and build_block_mask against a brute-force block classification, and the mask combinators."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from attnc.runtime.block_mask import BlockMask, build_block_mask
from attnc.variants.combinators import and_masks, noop_mask, or_masks

# -- masks ---------------------------------------------------------------------------------------------


def causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def window(b, h, q_idx, kv_idx):
    return (q_idx - kv_idx <= 50) & (kv_idx - q_idx <= 50)


def document_mask(lengths: list[int]):
    doc = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))

    def document(b, h, q_idx, kv_idx):
        return doc[q_idx] == doc[kv_idx]

    return document


def table_mask(table: torch.Tensor):
    """A mask read from a dense [B, H, Q, KV] bool table (random masks, per-batch / per-head masks)."""

    def from_table(b, h, q_idx, kv_idx):
        return table[b, h, q_idx, kv_idx]

    return from_table


def per_head(b, h, q_idx, kv_idx):
    return (kv_idx % (h + 2)) == 0


# -- brute force -----------------------------------------------------------------------------------------


def dense_mask(mask_fn, B: int, H: int, Q: int, KV: int) -> torch.Tensor:
    """The mask on every (b, h, q, kv), each index passed as a full [B, H, Q, KV] grid."""
    grids = torch.meshgrid(*(torch.arange(n, dtype=torch.int32) for n in (B, H, Q, KV)), indexing="ij")
    return torch.as_tensor(mask_fn(*grids)).expand(B, H, Q, KV)


def brute_classes(dense: torch.Tensor, q_block: int, kv_block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(partial, full) per block, one block at a time."""
    B, H, Q, KV = dense.shape
    n_q, n_kv = math.ceil(Q / q_block), math.ceil(KV / kv_block)
    partial = torch.zeros(B, H, n_q, n_kv, dtype=torch.bool)
    full = torch.zeros(B, H, n_q, n_kv, dtype=torch.bool)
    for i in range(n_q):
        for j in range(n_kv):
            tile = dense[:, :, i * q_block:(i + 1) * q_block, j * kv_block:(j + 1) * kv_block].flatten(2)
            inside = (i + 1) * q_block <= Q and (j + 1) * kv_block <= KV
            full[:, :, i, j] = tile.all(-1) & inside
            partial[:, :, i, j] = tile.any(-1) & ~full[:, :, i, j]
    return partial, full


def listed(count: torch.Tensor, indices: torch.Tensor) -> list:
    """The visited block numbers of every row, as nested lists."""
    return [[row[:n].tolist() for row, n in zip(r, c, strict=True)] for r, c in zip(
        indices.flatten(0, 1), count.flatten(0, 1), strict=True)]


def expected_lists(classes: torch.Tensor) -> list:
    return [[torch.nonzero(row).flatten().tolist() for row in bh] for bh in classes.flatten(0, 1)]


def assert_matches_brute(bm: BlockMask, mask_fn, B: int, H: int, Q: int, KV: int) -> None:
    partial, full = brute_classes(dense_mask(mask_fn, B, H, Q, KV), *bm.BLOCK_SIZE)
    assert listed(bm.kv_num_blocks, bm.kv_indices) == expected_lists(partial)
    assert listed(bm.full_kv_num_blocks, bm.full_kv_indices) == expected_lists(full)
    assert listed(bm.q_num_blocks, bm.q_indices) == expected_lists(partial.transpose(-2, -1))
    assert listed(bm.full_q_num_blocks, bm.full_q_indices) == expected_lists(full.transpose(-2, -1))
    for name in BlockMask.TENSOR_FIELDS[1::2]:  # every index row is a permutation: safe to prefetch
        table = getattr(bm, name)
        expected = torch.arange(table.shape[-1], dtype=torch.int32).expand_as(table)
        assert torch.equal(table.sort(-1).values, expected), name


# -- build_block_mask against brute force --------------------------------------------------------------

_GEN = torch.Generator().manual_seed(0)
_RANDOM = torch.rand(2, 3, 70, 90, generator=_GEN) < 0.3

CASES = [
    # (mask_fn, B, H, Q_LEN, KV_LEN, BLOCK_SIZE)
    pytest.param(causal, None, None, 256, 256, 64, id="causal"),
    pytest.param(causal, 1, 1, 200, 300, 64, id="causal-ragged-q<kv"),
    pytest.param(causal, None, None, 300, 130, (64, 32), id="causal-q>kv-nonsquare"),
    pytest.param(window, None, None, 300, 300, 64, id="sliding-window"),
    pytest.param(window, None, None, 100, 77, 16, id="window-tiny-blocks"),
    pytest.param(document_mask([40, 100, 7, 150, 36]), None, None, 333, 333, 32, id="document"),
    pytest.param(table_mask(_RANDOM), 2, 3, 70, 90, 16, id="random-per-batch-head"),
    pytest.param(table_mask(_RANDOM[:1, :1] | True), None, None, 70, 90, 16, id="all-true"),
    pytest.param(table_mask(_RANDOM[:1, :1] & False), None, None, 70, 90, 16, id="all-false"),
    pytest.param(per_head, None, 4, 128, 128, (64, 32), id="per-head-broadcast-batch"),
    pytest.param(causal, 2, 3, 96, 96, 32, id="batch-head-given-mask-broadcasts"),
]


@pytest.mark.parametrize(("mask_fn", "B", "H", "Q", "KV", "block"), CASES)
def test_build_matches_brute_force(mask_fn, B, H, Q, KV, block):
    bm = build_block_mask(mask_fn, B, H, Q, KV, device="cpu", BLOCK_SIZE=block)
    assert bm.shape == (B or 1, H or 1, Q, KV)
    assert_matches_brute(bm, mask_fn, B or 1, H or 1, Q, KV)


@given(
    q_len=st.integers(1, 80), kv_len=st.integers(1, 80), heads=st.integers(1, 2),
    block=st.sampled_from([16, (16, 32), (32, 16), 64]), density=st.sampled_from([0.0, 0.05, 0.5, 0.95, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_random_masks_match_brute_force(q_len, kv_len, heads, block, density, seed):
    gen = torch.Generator().manual_seed(seed)
    table = torch.rand(1, heads, q_len, kv_len, generator=gen) < density
    bm = build_block_mask(table_mask(table), None, heads, q_len, kv_len, device="cpu", BLOCK_SIZE=block)
    assert_matches_brute(bm, table_mask(table), 1, heads, q_len, kv_len)


def test_chunked_evaluation_stays_bounded_and_agrees():
    sizes: list[int] = []

    def spy(b, h, q_idx, kv_idx):
        allowed = document_mask([100, 60, 190, 50])(b, h, q_idx, kv_idx)
        sizes.append(torch.broadcast_shapes(b.shape, h.shape, q_idx.shape, kv_idx.shape).numel())
        return allowed

    one_shot = build_block_mask(spy, 2, 1, 400, 400, device="cpu", BLOCK_SIZE=32)
    assert sizes == [2 * 400 * 400]
    sizes.clear()
    chunked = build_block_mask(spy, 2, 1, 400, 400, device="cpu", BLOCK_SIZE=32, chunk_elements=5000)
    assert len(sizes) > 1 and max(sizes) <= 5000
    assert all(torch.equal(a, b) for a, b in zip(one_shot.as_tuple()[2:10], chunked.as_tuple()[2:10], strict=True))


def test_16k_mask_is_built_in_chunks_of_at_most_2_pow_24():
    sizes: list[int] = []

    def spy(b, h, q_idx, kv_idx):
        sizes.append(q_idx.numel() * kv_idx.numel())
        return q_idx >= kv_idx

    bm = build_block_mask(spy, None, None, 16384, 16384, device="cpu")
    assert max(sizes) <= 2**24 and bm.kv_num_blocks.sum() == 128 and bm.full_kv_num_blocks.sum() == 127 * 64


def test_indices_never_exceed_lengths():
    seen: list[tuple[int, int]] = []

    def spy(b, h, q_idx, kv_idx):
        seen.append((int(q_idx.max()), int(kv_idx.max())))
        return causal(b, h, q_idx, kv_idx)

    build_block_mask(spy, None, None, 100, 50, device="cpu", BLOCK_SIZE=64, chunk_elements=64 * 64)
    assert max(q for q, _ in seen) == 99 and max(kv for _, kv in seen) == 49


def test_index_tensors_are_int32_and_broadcastable():
    shapes = []

    def spy(b, h, q_idx, kv_idx):
        shapes.append([(tuple(t.shape), t.dtype) for t in (b, h, q_idx, kv_idx)])
        return q_idx >= kv_idx

    build_block_mask(spy, 2, 3, 20, 10, device="cpu", BLOCK_SIZE=16)
    i32 = torch.int32
    assert shapes == [[((2, 1, 1, 1), i32), ((1, 3, 1, 1), i32), ((1, 1, 20, 1), i32), ((1, 1, 1, 10), i32)]]


# -- BlockMask views -------------------------------------------------------------------------------------


def test_to_dense_and_sparsity_on_causal():
    bm = build_block_mask(causal, None, None, 256, 256, device="cpu", BLOCK_SIZE=64)
    assert torch.equal(bm.to_dense(), torch.ones(4, 4, dtype=torch.int32).tril().view(1, 1, 4, 4))
    assert bm.sparsity() == pytest.approx(37.5)  # 10 of 16 blocks visited
    assert bm.numel() == 256 * 256


def test_to_dense_and_sparsity_ragged():
    bm = build_block_mask(causal, None, None, 200, 300, device="cpu", BLOCK_SIZE=64)
    # 4 x 5 blocks; query block 3 (rows 192..199) is ragged, so its blocks are partial, never full
    expected = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.int32)
    assert torch.equal(bm.to_dense()[0, 0], expected)
    assert bm.full_kv_num_blocks[0, 0].tolist() == [0, 1, 2, 0]
    # weighted as FlexAttention weights it: each of the 10 visited blocks counts its whole 64 x 64 area
    assert bm.sparsity() == pytest.approx(100 * (1 - 10 * 64 * 64 / (200 * 300)))


def test_sparsity_counts_every_batch_and_head():
    bm = build_block_mask(per_head, None, 2, 64, 64, device="cpu", BLOCK_SIZE=16)
    # kv % 2 == 0 and kv % 3 == 0 hit every 16-wide kv block: nothing is skipped
    assert bm.sparsity() == 0.0
    empty = build_block_mask(lambda b, h, q, kv: q < 0, 2, 2, 64, 64, device="cpu", BLOCK_SIZE=16)
    assert empty.sparsity() == 100.0 and empty.to_dense().sum() == 0


def test_repr_is_short_and_shows_sparsity():
    bm = build_block_mask(causal, None, None, 256, 256, device="cpu", BLOCK_SIZE=64)
    assert repr(bm) == "BlockMask(shape=(1, 1, 256, 256), BLOCK_SIZE=(64, 64), sparsity=37.50%, mask_mod=causal)"


def test_as_tuple_follows_flex_order():
    bm = build_block_mask(causal, None, None, 96, 64, device="cpu", BLOCK_SIZE=(32, 16))
    flat = bm.as_tuple()
    assert flat[:2] == (96, 64) and flat[-3:] == (32, 16, causal)
    assert flat[2] is bm.kv_num_blocks and flat[9] is bm.full_q_indices
    assert bm.as_tuple(flatten=False)[0] == (96, 64) and bm.as_tuple(flatten=False)[-2] == (32, 16)


def test_to_moves_every_tensor_and_keeps_the_original():
    bm = build_block_mask(causal, None, None, 64, 64, device="cpu", BLOCK_SIZE=16)
    moved = bm.to("meta")
    assert all(getattr(moved, n).device.type == "meta" for n in BlockMask.TENSOR_FIELDS)
    assert bm.kv_indices.device.type == "cpu" and moved.mask_mod is causal


def test_mask_mod_kept_separately_from_the_evaluator():
    bm = build_block_mask(causal, None, None, 32, 32, device="cpu", BLOCK_SIZE=16, mask_mod=window)
    assert bm.mask_mod is window
    assert build_block_mask(causal, None, None, 32, 32, device="cpu", BLOCK_SIZE=16).mask_mod is causal


# -- errors ----------------------------------------------------------------------------------------------


def test_non_bool_mask_is_rejected_with_a_hint():
    with pytest.raises(TypeError, match=r"must return a bool tensor, got torch.int32; combine .* `&`"):
        build_block_mask(lambda b, h, q, kv: q - kv, None, None, 32, 32, device="cpu", BLOCK_SIZE=16)


@pytest.mark.parametrize("block", [0, (16,), (16, -1), 16.0])
def test_bad_block_size(block):
    with pytest.raises(ValueError, match="BLOCK_SIZE"):
        build_block_mask(causal, None, None, 32, 32, device="cpu", BLOCK_SIZE=block)


def test_invariants_catch_wrong_layouts():
    bm = build_block_mask(causal, None, None, 64, 32, device="cpu", BLOCK_SIZE=16)
    with pytest.raises(ValueError, match=r"make \(4, 2\) blocks, but kv_indices has \(4, 3\)"):
        BlockMask.from_block_classes(torch.ones(1, 1, 4, 3, dtype=torch.bool), None, BLOCK_SIZE=16,
                                     seq_lengths=(64, 32))
    with pytest.raises(ValueError, match="kv_num_blocks must be int32"):
        BlockMask(**{**vars(bm), "kv_num_blocks": bm.kv_num_blocks.long()})
    with pytest.raises(ValueError, match="both be given or both None"):
        BlockMask(**{**vars(bm), "full_kv_num_blocks": None, "full_kv_indices": None})


def test_partial_only_map_to_dense():
    partial = torch.tensor([[[[True, False], [False, True]]]])
    bm = BlockMask.from_block_classes(partial, None, BLOCK_SIZE=16, seq_lengths=(32, 32))
    assert bm.full_kv_indices is None and bm.full_q_num_blocks is None
    assert torch.equal(bm.to_dense(), partial.int()) and bm.sparsity() == 50.0


# -- FlexAttention's own builder, where it runs on CPU ------------------------------------------------------


def _torch_block_mask(mask_fn, B, H, Q, KV, block):
    flex = pytest.importorskip("torch.nn.attention.flex_attention")
    try:
        return flex.create_block_mask(mask_fn, B, H, Q, KV, device="cpu", BLOCK_SIZE=block)
    except Exception as error:  # an older torch may not build block masks on CPU
        pytest.skip(f"torch create_block_mask does not run on CPU here: {error}")


@pytest.mark.parametrize(("mask_fn", "B", "H"), [
    (causal, None, None), (window, None, None), (document_mask([100, 28, 128, 2, 126]), None, None),
    (per_head, 2, 4),
])
def test_agrees_with_torch_create_block_mask(mask_fn, B, H):
    ours = build_block_mask(mask_fn, B, H, 384, 384, device="cpu", BLOCK_SIZE=64)
    theirs = _torch_block_mask(mask_fn, B, H, 384, 384, 64)
    assert torch.equal(ours.to_dense(), theirs.to_dense())
    for name in ("kv_num_blocks", "full_kv_num_blocks", "q_num_blocks", "full_q_num_blocks"):
        assert torch.equal(getattr(ours, name), getattr(theirs, name)), name
    assert listed(ours.kv_num_blocks, ours.kv_indices) == listed(theirs.kv_num_blocks, theirs.kv_indices)
    assert ours.sparsity() == pytest.approx(theirs.sparsity())


# -- combinators -----------------------------------------------------------------------------------------


def _grid(q_len=40, kv_len=50):
    q = torch.arange(q_len, dtype=torch.int32).view(1, 1, -1, 1)
    kv = torch.arange(kv_len, dtype=torch.int32).view(1, 1, 1, -1)
    return torch.zeros(1, 1, 1, 1, dtype=torch.int32), torch.zeros(1, 1, 1, 1, dtype=torch.int32), q, kv


def test_and_or_masks_on_tensors():
    args = _grid()
    both, either = and_masks(causal, window)(*args), or_masks(causal, window)(*args)
    assert torch.equal(both, causal(*args) & window(*args))
    assert torch.equal(either, causal(*args) | window(*args))
    assert not torch.equal(both, either)


def test_three_way_and_builds_the_right_block_mask():
    mods = (causal, window, document_mask([30, 90, 80]))
    combined = and_masks(*mods)
    bm = build_block_mask(combined, None, None, 200, 200, device="cpu", BLOCK_SIZE=32)
    assert_matches_brute(bm, combined, 1, 1, 200, 200)


def test_noop_and_empty_combinations():
    args = _grid()
    assert and_masks() is noop_mask
    allowed = noop_mask(*args)
    assert allowed.dtype == torch.bool and allowed.all() and allowed.shape == (1, 1, 40, 1)
    nothing = or_masks()(*args)
    assert nothing.dtype == torch.bool and not nothing.any()
    bm = build_block_mask(noop_mask, None, None, 64, 48, device="cpu", BLOCK_SIZE=16)
    assert bm.full_kv_num_blocks.sum() == 4 * 3 and bm.kv_num_blocks.sum() == 0


def test_combinator_names_and_closure_layout():
    combined = or_masks(causal, and_masks(window, noop_mask))
    assert combined.__name__ == "or_masks(causal, and_masks(window, noop_mask))"
    # The mods sit in one closed-over tuple: that is where the tracer looks for them.
    cells = [cell.cell_contents for cell in combined.__closure__]
    assert cells == [(causal, cells[0][1])] and cells[0][1].__name__ == "and_masks(window, noop_mask)"


def test_non_callable_is_rejected():
    with pytest.raises(TypeError, match=r"and_masks takes mask_mod functions .* got 3"):
        and_masks(causal, 3)


def _binary(op: str):
    return lambda self, other: Sym(f"({self.text} {op} {getattr(other, 'text', other)})")


class Sym:
    """A stand-in for the tracer's symbolic values: records expressions, refuses truth tests."""

    def __init__(self, text: str):
        self.text = text

    __and__, __or__, __sub__ = _binary("&"), _binary("|"), _binary("-")
    __ge__, __le__, __eq__, __ne__ = _binary(">="), _binary("<="), _binary("=="), _binary("!=")
    __hash__ = None

    def __bool__(self):
        raise TypeError("symbolic value used as a Python bool")


def test_combinators_only_use_overloadable_operators():
    args = [Sym(n) for n in ("b", "h", "q", "kv")]
    assert and_masks(causal, window)(*args).text == "((q >= kv) & (((q - kv) <= 50) & ((kv - q) <= 50)))"
    assert or_masks(causal, noop_mask)(*args).text == "((q >= kv) | (q == q))"
    assert or_masks()(*args).text == "(q != q)"


# -- combinators under attnc's tracer ----------------------------------------------------------------------


def test_traced_combinators_fold_the_noop_away():
    import attnc

    plain = attnc.compile(mask_mod=causal).program.mask
    assert attnc.compile(mask_mod=and_masks(causal, noop_mask)).program.mask is plain
    assert attnc.compile(mask_mod=noop_mask).program.mask.arg is True
    assert attnc.compile(mask_mod=or_masks()).program.mask.arg is False


def test_traced_block_mask_equals_the_dense_one():
    import attnc

    combined = or_masks(and_masks(causal, window), document_mask([30, 90, 80]))
    traced = attnc.create_block_mask(combined, None, 2, 200, 200, device="cpu", BLOCK_SIZE=32)
    dense = build_block_mask(combined, None, 2, 200, 200, device="cpu", BLOCK_SIZE=32)
    assert all(torch.equal(a, b) for a, b in zip(traced.as_tuple()[2:10], dense.as_tuple()[2:10], strict=True))
    assert traced.mask_mod is combined
