"""tile_ranges: the per-tile min/max tables themselves, and tile classifications built with them against
brute force (documents sorted and not, one document, many tiny ones, padding, selected blocks).

Soundness is checked everywhere: a tile called empty has no allowed pair, a tile called full allows every
pair (of the positions inside the lengths). For sorted document ids the classification is also exact.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import attnc
from attnc.ir import DType, Op
from attnc.ir.interpret import Env, evaluate, index_grids
from attnc.ir.tiles import classify_grid
from attnc.runtime import sparsity
from attnc.runtime import tile_ranges as tile_ranges_module
from attnc.runtime.tile_ranges import ranged_loads, tile_ranges
from tests.test_sparsity import dense_block_mask
from tests.zoo import DEVICE

EMPTY, PARTIAL, FULL = 0, 1, 2


# -- masks ---------------------------------------------------------------------------------------------


def document_mask(doc: torch.Tensor):
    """`doc [S]` or per batch `doc [B, S]`: pairs in the same document attend."""
    if doc.dim() == 1:
        return lambda b, h, q_idx, kv_idx: doc[q_idx] == doc[kv_idx]
    return lambda b, h, q_idx, kv_idx: doc[b, q_idx] == doc[b, kv_idx]


def sorted_documents(lengths: list[int]) -> torch.Tensor:
    return torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))


def padding_mask(lengths: torch.Tensor):
    def padding(b, h, q_idx, kv_idx):
        return (kv_idx < lengths[b]) & (q_idx < lengths[b])

    return padding


def selection_mask(sel: torch.Tensor):
    def selected(b, h, q_idx, kv_idx):
        return sel[h, q_idx // 64, kv_idx // 64]

    return selected


# -- the two classifications ------------------------------------------------------------------------------


def tile_bounds(length: int, block: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, hi) of every tile, inclusive, hi clipped to the length, laid along `dim` of a 4-d shape."""
    shape = [1, 1, 1, 1]
    shape[dim] = -1
    lo = torch.arange(0, length, block, dtype=torch.int32)
    return lo.view(shape), torch.clamp(lo + block - 1, max=length - 1).view(shape)


def classify(mod, B: int, H: int, S: int, block: int) -> torch.Tensor:
    """int8 `[B, H, nQ, nKV]` from the tile classifier, with the ranges tile_ranges builds."""
    attn = attnc.compile(mod)
    bindings = attn.traced.bind(mod, None)
    ranges = tile_ranges(attn.program, bindings.tensors, bindings.params, B=B, H=H, Q_LEN=S, KV_LEN=S,
                         q_block=block, kv_block=block)
    q_lo, q_hi = tile_bounds(S, block, 2)
    kv_lo, kv_hi = tile_bounds(S, block, 3)
    b, h, _, _ = index_grids(B, H, 1, 1)
    classes = classify_grid(attn.program.mask, b=b, h=h, q_lo=q_lo, q_hi=q_hi, kv_lo=kv_lo, kv_hi=kv_hi,
                            tensors=[*bindings.tensors, *ranges.extra_tensors], params=bindings.params,
                            load_range=ranges.load_range)
    n = math.ceil(S / block)
    return torch.as_tensor(classes).expand(B, H, n, n)


def brute(mod, B: int, H: int, S: int, block: int) -> torch.Tensor:
    """The exact class of every tile, from the dense mask on the positions inside the length."""
    dense = torch.as_tensor(mod(*index_grids(B, H, S, S))).expand(B, H, S, S)
    n = math.ceil(S / block)
    any_set = torch.zeros(B, H, n * block, n * block, dtype=torch.bool)
    all_set = torch.ones(B, H, n * block, n * block, dtype=torch.bool)
    any_set[..., :S, :S] = dense
    all_set[..., :S, :S] = dense  # positions past the length are neither allowed nor masked
    any_tile = any_set.view(B, H, n, block, n, block).any(dim=5).any(dim=3)
    all_tile = all_set.view(B, H, n, block, n, block).all(dim=5).all(dim=3)
    return torch.where(all_tile, FULL, torch.where(any_tile, PARTIAL, EMPTY)).to(torch.int8)


def assert_sound(classes: torch.Tensor, exact: torch.Tensor) -> None:
    called_empty, called_full = classes == EMPTY, classes == FULL
    assert torch.all(exact[called_empty] == EMPTY), "a tile called empty has allowed pairs"
    assert torch.all(exact[called_full] == FULL), "a tile called full has masked pairs"


def check(mod, B: int, H: int, S: int, block: int, *, exact: bool) -> torch.Tensor:
    classes, expected = classify(mod, B, H, S, block), brute(mod, B, H, S, block)
    assert_sound(classes, expected)
    if exact:
        assert torch.equal(classes.to(torch.int8), expected)
    return classes


# -- classifications against brute force ---------------------------------------------------------------------


@pytest.mark.parametrize(("lengths", "block"), [
    ([100, 300, 50, 250, 324], 64),  # uneven documents, 1024 tokens
    ([37, 200, 5, 91, 67], 32),  # 400 tokens: the last tile is ragged
    ([512], 64),  # one document
    ([1, 2, 3] * 40, 16),  # many tiny documents, several per tile
])
def test_sorted_documents_are_classified_exactly(lengths, block):
    classes = check(document_mask(sorted_documents(lengths)), 1, 1, sum(lengths), block, exact=True)
    if len(lengths) == 1:
        assert torch.all(classes == FULL)


def test_sorted_documents_skip_whole_documents_off_the_diagonal():
    doc = sorted_documents([256, 512, 256])  # documents on tile boundaries
    classes = classify(document_mask(doc), 1, 1, 1024, 128)[0, 0]
    tile_doc = doc[::128]
    same = tile_doc.view(-1, 1) == tile_doc.view(1, -1)
    assert torch.equal(classes, torch.where(same, FULL, EMPTY).to(classes.dtype))


def test_documents_per_batch():
    doc = torch.stack([sorted_documents([300, 212]), sorted_documents([64, 64, 384])])
    check(document_mask(doc), 2, 1, 512, 64, exact=True)


def test_unsorted_documents_are_sound():
    gen = torch.Generator().manual_seed(0)
    sorted_ids = sorted_documents([100, 300, 50, 250, 324])
    shuffled = sorted_ids[torch.randperm(1024, generator=gen)]
    check(document_mask(shuffled), 1, 1, 1024, 64, exact=False)
    relabelled = torch.tensor([3, 0, 4, 1, 2])[sorted_ids]  # contiguous documents, ids out of order
    check(document_mask(relabelled), 1, 1, 1024, 64, exact=False)


@given(lengths=st.lists(st.integers(1, 90), min_size=1, max_size=12), block=st.sampled_from([8, 16, 32]),
       shuffle=st.booleans(), seed=st.integers(0, 2**16))
def test_documents_property(lengths, block, shuffle, seed):
    doc = sorted_documents(lengths)
    if shuffle:
        doc = doc[torch.randperm(len(doc), generator=torch.Generator().manual_seed(seed))]
    check(document_mask(doc), 1, 1, len(doc), block, exact=not shuffle)


def test_nested_loads_are_sound():
    doc = sorted_documents([100, 300, 50, 250, 324])
    bias = torch.tensor([[0.5, -1.0, 2.0, 0.0, 1.0], [1.0, 1.0, -1.0, 3.0, -2.0]])

    def biased_document(b, h, q_idx, kv_idx):
        return (doc[q_idx] == doc[kv_idx]) & (bias[h, doc[q_idx]] > 0)

    check(biased_document, 1, 2, 1024, 64, exact=False)


def test_padding_masks():
    lengths = torch.tensor([512, 300, 64, 130])
    check(padding_mask(lengths.to(torch.int32)), 4, 1, 512, 64, exact=True)
    check(padding_mask(lengths), 4, 1, 512, 64, exact=False)  # int64 lengths: sound


def test_selected_blocks_are_classified_exactly():
    # A tile box reads exactly the cells its rows and columns pick, every combination: min/max are tight.
    sel = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(1)) > 0.5
    for block in (32, 64, 128):
        check(selection_mask(sel), 1, 2, 512, block, exact=True)


# -- the tables themselves -----------------------------------------------------------------------------------


@dataclasses.dataclass
class Evaluations:
    elements: int = 0


@contextlib.contextmanager
def counted_evaluations() -> Iterator[Evaluations]:
    """Counts the values the range tables evaluate: the cost measure of the tables (elements, not seconds,
    so a loaded machine cannot fail the test)."""
    counter, original = Evaluations(), tile_ranges_module.evaluate

    def counting(*args, **kwargs):
        values = original(*args, **kwargs)
        counter.elements += values.numel() if isinstance(values, torch.Tensor) else 1
        return values

    tile_ranges_module.evaluate = counting
    try:
        yield counter
    finally:
        tile_ranges_module.evaluate = original


def ranges_of(mod, B: int = 1, H: int = 1, S: int = 100, block: int = 16):
    attn = attnc.compile(mod)
    bindings = attn.traced.bind(mod, None)
    return attn, tile_ranges(attn.program, bindings.tensors, bindings.params, B=B, H=H, Q_LEN=S, KV_LEN=S,
                             q_block=block, kv_block=block)


def test_tables_hold_the_min_and_max_of_each_tile():
    doc = torch.randint(0, 50, (100,), generator=torch.Generator().manual_seed(2))
    _, ranges = ranges_of(document_mask(doc), S=100, block=16)
    expected_min = torch.stack([doc[i:i + 16].min() for i in range(0, 100, 16)])
    expected_max = torch.stack([doc[i:i + 16].max() for i in range(0, 100, 16)])
    assert len(ranges.extra_tensors) == 4  # min and max for doc[q_idx] and for doc[kv_idx]
    for table, expected in zip(ranges.extra_tensors, [expected_min, expected_max] * 2, strict=True):
        assert table.shape == (1, 1, 7)
        assert torch.equal(table[0, 0], expected)


def test_load_range_reads_the_tables_at_the_tile_number():
    doc = sorted_documents([30, 70])
    attn, ranges = ranges_of(document_mask(doc), S=100, block=16)
    loads = ranged_loads(attn.program.mask)
    assert sorted(next(iter(n.deps)) for n in loads) == ["kv", "q"]
    for n in loads:
        low, high = ranges.load_range(n)
        assert low.dtype is high.dtype is n.dtype
        assert min(slot_of(low), slot_of(high)) >= len(attn.program.tensors)  # the extra slots
        axis = next(iter(n.deps))
        for tile in range(7):  # evaluated at a tile box, the pair is that tile's interval
            env = _tile_env(ranges, axis, tile)
            values = doc[tile * 16:(tile + 1) * 16]
            assert int(evaluate(low, env)) == int(values.min())
            assert int(evaluate(high, env)) == int(values.max())


def slot_of(pair_node) -> int:
    """The table slot a range bound reads (through a widening cast for narrowed tables)."""
    (loaded,) = [n for n in pair_node.walk() if n.op is Op.LOAD]
    return loaded.arg


def test_int64_tables_are_narrowed_only_when_the_values_fit():
    for ids, narrowed in ((torch.arange(100) // 10, True), (torch.arange(100) * 2**40, False)):
        attn, ranges = ranges_of(document_mask(ids), S=100, block=16)
        pairs = {next(iter(n.deps)): ranges.load_range(n) for n in ranged_loads(attn.program.mask)}
        (load_q, _), (load_kv, _) = pairs["q"], pairs["kv"]
        assert load_q.dtype is load_kv.dtype is DType.int64
        assert (load_q.op is Op.CAST) is narrowed
        assert {t.dtype for t in ranges.extra_tensors} == {torch.int32 if narrowed else torch.int64}
        env = _tile_env(ranges, "q", 6)
        assert int(evaluate(load_q, env)) == int(ids[96])


def _tile_env(ranges, axis: str, tile: int) -> Env:
    zero = torch.zeros((1, 1, 1, 1), dtype=torch.int32)
    lo = torch.full((1, 1, 1, 1), tile * 16, dtype=torch.int32)
    return Env(b=zero, h=zero, q=zero, kv=zero, tensors=[torch.zeros(1), *ranges.extra_tensors],
               q_lo=lo if axis == "q" else zero, kv_lo=lo if axis == "kv" else zero)


def test_tables_follow_the_batch_and_head_the_load_reads():
    doc = torch.stack([sorted_documents([40, 60]), sorted_documents([90, 10])])
    bias = torch.randn(3, 100, generator=torch.Generator().manual_seed(3))

    def mod(b, h, q_idx, kv_idx):
        return (doc[b, q_idx] == doc[b, kv_idx]) & (bias[h, kv_idx] > 0)

    attn, ranges = ranges_of(mod, B=2, H=3, S=100, block=32)
    tables = {_reads(n): [ranges.extra_tensors[slot_of(pair) - 2] for pair in ranges.load_range(n)]
              for n in ranged_loads(attn.program.mask)}
    assert sorted(tables) == ["bias[h, kv]", "doc[b, kv]", "doc[b, q]"]
    assert {tuple(t.shape) for t in tables["doc[b, q]"] + tables["doc[b, kv]"]} == {(2, 1, 4)}
    low, high = tables["bias[h, kv]"]
    assert low.shape == high.shape == (1, 3, 4) and low.dtype == torch.float32
    assert torch.equal(high[0, :, 3], bias[:, 96:].amax(dim=1))
    assert torch.equal(low[0, :, 0], bias[:, :32].amin(dim=1))
    # int64 document ids that fit are stored as int32 (the classifier tracks ranges by dtype)
    assert sorted(s.dtype.name for s in ranges.tensor_specs) == ["float32"] * 2 + ["int32"] * 4


def _reads(load_node) -> str:
    """`doc[b, q]` / `bias[h, kv]`: which captured tensor (slot 0 doc, 1 bias) at which indices."""
    names = ("doc", "bias")[load_node.arg], ", ".join(index.arg for index in load_node.src)
    return f"{names[0]}[{names[1]}]"


def test_ragged_last_tile_ranges_over_its_own_positions():
    values = torch.tensor([5, 1, 9, 2, 7, 3, 8])  # tiles of 3: [5 1 9] [2 7 3] [8]

    def mod(b, h, q_idx, kv_idx):
        return values[q_idx] > kv_idx

    _, ranges = ranges_of(mod, S=7, block=3)
    low, high = ranges.extra_tensors
    assert low[0, 0].tolist() == [1, 2, 8] and high[0, 0].tolist() == [9, 7, 8]


def test_loads_at_an_index_of_both_or_of_neither_get_no_range():
    table = torch.rand(4, 200) > 0.5
    lengths = torch.tensor([50, 100])

    def mod(b, h, q_idx, kv_idx):
        return table[h, q_idx + kv_idx] & (kv_idx < lengths[b])

    attn, ranges = ranges_of(mod, B=2, H=4, S=100)
    assert ranges.extra_tensors == ()
    assert all(ranges.load_range(n) is None for n in attn.program.mask.walk() if n.op is Op.LOAD)


def test_nan_values_range_over_the_others_with_a_nan_state():
    nan = float("nan")
    values = torch.tensor([2.0, nan, 2.0, 1.0, nan, nan])  # tiles of 2: some NaN, none, all NaN

    def mod(b, h, q_idx, kv_idx):
        return values[q_idx] > 0.75

    attn, ranges = ranges_of(mod, S=6, block=2)
    low, high, state = ranges.extra_tensors
    assert low[0, 0].tolist() == [2.0, 1.0, 0.0] and high[0, 0].tolist() == [2.0, 2.0, 0.0]
    assert state[0, 0].tolist() == [1, 0, 2] and state.dtype == torch.int8
    (load_node,) = ranged_loads(attn.program.mask)
    assert len(ranges.load_range(load_node)) == 3
    # classified: the all-NaN tile allows nothing, the tile with a NaN is never full
    assert classify(mod, 1, 1, 6, 2)[0, 0, :, 0].tolist() == [PARTIAL, FULL, EMPTY]


def test_cost_is_linear_in_the_length():
    # A million tokens: the pairs (10^12) could never be visited, the positions are cheap.
    S = 1 << 20
    doc = torch.arange(S) // 5000
    with counted_evaluations() as evaluated:
        _, ranges = ranges_of(document_mask(doc), S=S, block=128)
    assert 0 < evaluated.elements <= 4 * S
    assert ranges.extra_tensors[0].shape == (1, 1, S // 128)
    assert torch.equal(ranges.extra_tensors[1][0, 0], doc.view(-1, 128)[:, -1])


def test_mismatched_tensors_are_refused():
    attn = attnc.compile(document_mask(sorted_documents([3, 4])))
    with pytest.raises(ValueError, match="captures 1 tensors, got 0"):
        tile_ranges(attn.program, [], (), B=1, H=1, Q_LEN=7, KV_LEN=7, q_block=4, kv_block=4)


def test_lengths_of_zero_need_no_tables():
    attn = attnc.compile(document_mask(sorted_documents([3, 4])))
    bindings = attn.traced.bind(attn.mask_mod, None)
    ranges = tile_ranges(attn.program, bindings.tensors, (), B=1, H=1, Q_LEN=0, KV_LEN=7, q_block=4, kv_block=4)
    assert [tuple(t.shape) for t in ranges.extra_tensors] == [(1, 1, 2), (1, 1, 2)]  # the kv load only


# -- separable loads: block-selection tables and other per-(row, column) tables ------------------------------

Q_ODD, KV_ODD = 197, 230


def separable_masks() -> dict[str, tuple[object, int, int]]:
    """name -> (mask, B, H) for lengths Q_ODD x KV_ODD: tables whose index arguments each move with one of
    q / kv. Built once per call from fixed seeds."""
    gen = torch.Generator().manual_seed(5)
    cells_q, cells_kv = Q_ODD // 64 + 1, KV_ODD // 64 + 1
    sel = torch.rand(3, cells_q, cells_kv, generator=gen) < 0.3
    topk = torch.randint(0, 5, (3, cells_q, cells_kv), generator=gen, dtype=torch.int32)
    scores = torch.rand(3, cells_q, cells_kv, generator=gen, dtype=torch.float64)
    per_batch = torch.rand(2, 3, cells_q, cells_kv, generator=gen) < 0.5
    by_48 = torch.rand(3, cells_q, KV_ODD // 48 + 1, generator=gen) < 0.5
    rows = torch.rand(3, Q_ODD, cells_kv, generator=gen) < 0.5  # a row per query: ranged kv first
    columns = torch.randint(-3, 3, (cells_q, KV_ODD), generator=gen, dtype=torch.int8)  # ranged q first
    halves = torch.rand(cells_q, cells_kv, 2, generator=gen) < 0.5  # two kv arguments
    small = torch.rand(3, 4, 5, generator=gen) < 0.5  # most indices clamped into the last cells
    doc = sorted_documents([50, 3, 90, 54])
    pairs = torch.rand(4, 4, generator=gen) < 0.5  # which documents see which
    return {
        "selected": (lambda b, h, q, kv: sel[h, q // 64, kv // 64], 1, 3),
        "causal_selected": (lambda b, h, q, kv: (q >= kv) & sel[h, q // 64, kv // 64], 1, 3),
        "topk_int": (lambda b, h, q, kv: topk[h, q // 64, kv // 64] > 2, 1, 3),
        "scores_float": (lambda b, h, q, kv: scores[h, q // 64, kv // 64] < 0.4, 1, 3),
        "per_batch": (lambda b, h, q, kv: per_batch[b, h, q // 64, kv // 64], 2, 3),
        "straddling_cells": (lambda b, h, q, kv: by_48[h, q // 64, kv // 48], 1, 3),
        "row_per_query": (lambda b, h, q, kv: rows[h, q, kv // 64], 1, 3),
        "column_per_key_int8": (lambda b, h, q, kv: columns[q // 64, kv] >= 0, 1, 1),
        "two_kv_arguments": (lambda b, h, q, kv: halves[q // 64, kv // 64, kv % 2], 1, 1),
        "clamped": (lambda b, h, q, kv: small[h, q // 16, kv // 16], 1, 3),
        "document_pairs": (lambda b, h, q, kv: pairs[doc[q], doc[kv % 197]], 1, 1),
    }


@pytest.mark.parametrize("block", [32, (64, 16)], ids=["32", "64x16"])
@pytest.mark.parametrize("name", sorted(separable_masks()))
def test_separable_block_maps_equal_the_dense_ones(name, block):
    mask_mod, B, H = separable_masks()[name]
    assert sparsity.analysable(attnc.compile(mask_mod).program.mask)
    analytic = attnc.create_block_mask(mask_mod, B, H, Q_ODD, KV_ODD, device="cpu", BLOCK_SIZE=block)
    dense = dense_block_mask(mask_mod, B, H, Q_ODD, KV_ODD, block)
    assert torch.equal(analytic.to_dense(), dense.to_dense())
    for field in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices"):
        assert torch.equal(getattr(analytic, field), getattr(dense, field)), field


def test_aligned_selection_decides_every_tile():
    sel = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(6)) < 0.4
    attn = attnc.compile(selection_mask(sel))
    bindings = attn.traced.bind(attn.mask_mod, None)
    classes = sparsity.classify_blocks(attn.program, bindings.tensors, bindings.params, B=1, H=2, Q_LEN=256,
                                       KV_LEN=256, q_block=64, kv_block=64, device=torch.device("cpu"))
    assert torch.equal(classes[0], torch.where(sel, FULL, EMPTY).to(torch.int8))
    stats = attn.tile_stats(1, 2, 256, 256, BLOCK_M=64, BLOCK_N=64)
    assert stats == {"empty": int((~sel).sum()), "partial": 0, "full": int(sel.sum())}


def brute_tables(mod, B: int, H: int, q_len: int, kv_len: int, q_block: int, kv_block: int):
    """(min, max) `[B, H, nQ, nKV]` of the mask's one separable load over each tile box, from every pair."""
    attn = attnc.compile(mod)
    bindings = attn.traced.bind(mod, None)
    (loaded,) = [n for n in attn.program.mask.walk() if n.op is Op.LOAD]
    env = Env(*index_grids(B, H, q_len, kv_len), tensors=bindings.tensors, params=bindings.params)
    values = evaluate(loaded, env).expand(B, H, q_len, kv_len)
    nq, nkv = math.ceil(q_len / q_block), math.ceil(kv_len / kv_block)
    boxes = [[values[..., i * q_block:(i + 1) * q_block, j * kv_block:(j + 1) * kv_block].flatten(2)
              for j in range(nkv)] for i in range(nq)]
    low = torch.stack([torch.stack([box.amin(-1) for box in row], -1) for row in boxes], -2)
    high = torch.stack([torch.stack([box.amax(-1) for box in row], -1) for row in boxes], -2)
    return low, high


def separable_ranges(mod, B: int, H: int, q_len: int, kv_len: int, q_block: int, kv_block: int):
    attn = attnc.compile(mod)
    bindings = attn.traced.bind(mod, None)
    return tile_ranges(attn.program, bindings.tensors, bindings.params, B=B, H=H, Q_LEN=q_len, KV_LEN=kv_len,
                       q_block=q_block, kv_block=kv_block)


@given(q_len=st.integers(1, 90), kv_len=st.integers(1, 90), q_div=st.integers(1, 40), kv_div=st.integers(1, 40),
       q_block=st.sampled_from([4, 8, 16, 32]), kv_block=st.sampled_from([4, 8, 16, 32]),
       cells=st.tuples(st.integers(1, 6), st.integers(1, 6)), seed=st.integers(0, 2**16))
def test_separable_tables_are_the_min_and_max_of_each_tile_box(q_len, kv_len, q_div, kv_div, q_block, kv_block,
                                                                cells, seed):
    table = torch.randint(-50, 50, (2, *cells), generator=torch.Generator().manual_seed(seed))

    def mod(b, h, q_idx, kv_idx):
        return table[h, q_idx // q_div, kv_idx // kv_div] > 0

    ranges = separable_ranges(mod, 1, 2, q_len, kv_len, q_block, kv_block)
    low, high = ranges.extra_tensors
    expected_low, expected_high = brute_tables(mod, 1, 2, q_len, kv_len, q_block, kv_block)
    assert low.dtype == torch.int32  # int64 values that fit are narrowed
    assert torch.equal(low.long(), expected_low) and torch.equal(high.long(), expected_high)


def test_separable_tables_follow_the_batch_and_head_the_load_reads():
    per_batch = torch.rand(2, 3, 4, generator=torch.Generator().manual_seed(7))

    def mod(b, h, q_idx, kv_idx):
        return per_batch[b, q_idx // 32, kv_idx // 32] > 0.5

    ranges = separable_ranges(mod, 2, 5, 96, 128, 32, 16)
    assert [tuple(t.shape) for t in ranges.extra_tensors] == [(2, 1, 3, 8)] * 2
    low, high = ranges.extra_tensors
    assert torch.equal(low, per_batch.repeat_interleave(2, dim=2).unsqueeze(1))
    assert torch.equal(low, high)


def test_bool_tables_stay_bool_and_narrow_ints_widen():
    sel = torch.rand(2, 2) < 0.5
    small = torch.randint(-3, 3, (2, 2), dtype=torch.int8)
    for table, dtype in ((sel, torch.bool), (small, torch.int32)):
        def mod(b, h, q_idx, kv_idx, table=table):
            return table[q_idx // 32, kv_idx // 32] != 0

        ranges = separable_ranges(mod, 1, 1, 64, 64, 32, 32)
        assert {t.dtype for t in ranges.extra_tensors} == {dtype}
        assert torch.equal(ranges.extra_tensors[0][0, 0], table.to(dtype))


def test_separable_tables_do_not_depend_on_the_step(monkeypatch):
    gen = torch.Generator().manual_seed(8)
    sel, rows = torch.rand(3, 5, 5, generator=gen) < 0.5, torch.rand(100, 5, generator=gen) < 0.5
    for mod in (selection_mask(sel), lambda b, h, q_idx, kv_idx: rows[q_idx, kv_idx // 23]):
        whole = separable_ranges(mod, 1, 3, 250, 100, 32, 16).extra_tensors
        monkeypatch.setattr(tile_ranges_module, "_STEP_ELEMENTS", 1)  # one tile per step
        stepped = separable_ranges(mod, 1, 3, 250, 100, 32, 16).extra_tensors
        monkeypatch.undo()
        assert all(torch.equal(a, b) for a, b in zip(whole, stepped, strict=True))


def test_nan_reached_by_no_tile_leaves_the_range():
    table = torch.tensor([[0.5, 2.0, float("nan")], [1.0, 0.0, float("nan")]])

    def mod(b, h, q_idx, kv_idx):  # kv_idx // 64 never reaches column 2 at 100 keys
        return table[q_idx // 64, kv_idx // 64] > 0.75

    assert len(separable_ranges(mod, 1, 1, 100, 100, 32, 32).extra_tensors) == 2
    low, high, state = separable_ranges(mod, 1, 1, 100, 200, 32, 32).extra_tensors  # column 2 is read
    assert state[0, 0].tolist() == [[0, 0, 0, 0, 2, 2, 2]] * 4  # key tiles from 128 on read column 2 only
    assert high[0, 0, :, 2].tolist() == [2.0, 2.0, 0.0, 0.0] and low[0, 0, :, 6].tolist() == [0.0] * 4


@pytest.mark.parametrize(("reads", "separable_read"), [
    (lambda t, q, kv: t[q // 32, kv // 32], True),
    (lambda t, q, kv: t[(q + kv) // 32, kv // 32], False),  # an argument moving with both
    (lambda t, q, kv: t[(q - kv) % 8, 0], False),
    (lambda t, q, kv: t[q // 32, t[kv // 32, q // 32]], False),  # the inner read moves with both
])
def test_only_reads_with_an_argument_of_both_indices_are_dense(reads, separable_read):
    table = torch.randint(0, 4, (8, 8), dtype=torch.int32, generator=torch.Generator().manual_seed(9))
    mask = attnc.compile(lambda b, h, q_idx, kv_idx: reads(table, q_idx, kv_idx) > 1).program.mask
    assert sparsity.reads_data(mask)
    assert sparsity.analysable(mask) is separable_read


def test_separable_cost_follows_the_table_not_the_pairs():
    S = 1 << 16  # 4 * 10^9 pairs; the table has 2 * 1025^2 cells
    sel = torch.rand(2, S // 64 + 1, S // 64 + 1, generator=torch.Generator().manual_seed(10)) < 0.3
    with counted_evaluations() as evaluated:
        ranges = separable_ranges(selection_mask(sel), 1, 2, S, S, 128, 128)
    assert evaluated.elements <= 4 * sel.numel()  # the table's cells, never the 4 * 10^9 pairs
    low, high = ranges.extra_tensors
    assert low.shape == (1, 2, S // 128, S // 128)
    cells = sel[:, :S // 64, :S // 64].view(2, S // 128, 2, S // 128, 2)
    assert torch.equal(high[0], cells.any(dim=4).any(dim=2))


def test_kernel_with_a_separable_mask_matches_the_reference():
    sel = torch.rand(2, 2, 3, generator=torch.Generator().manual_seed(11)) < 0.5
    attn = attnc.compile(lambda b, h, q_idx, kv_idx: (q_idx >= kv_idx) & sel[h, q_idx // 64, kv_idx // 64])
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 100, 16, generator=g).to(DEVICE)
    k, v = (torch.randn(1, 2, 130, 16, generator=g).to(DEVICE) for _ in range(2))
    out = attn(q, k, v, backend="triton", kernel_options={"BLOCK_M": 32, "BLOCK_N": 32})
    assert attn.planner._plan is not None  # the block map came from the tables
    torch.testing.assert_close(out, attn(q, k, v, backend="reference"), atol=2e-5, rtol=2e-5, equal_nan=True)
