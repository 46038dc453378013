"""The variant library: each family through the generated kernel against an independent dense formula.

Every expected mask or bias below is written from the family's definition (the paper's sets, the
reference algorithm, plain loops), never by calling the mod, and the expected output is a float64 dense
softmax over it. Plus: ALiBi slopes against the published values, names / equality / hashing, `&` `|` `~`
through `create_block_mask`, `ScoreMod.then`, and the Gemma 2 layer factory.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import math
from collections.abc import Callable

import pytest
import torch

import attnc
import attnc.variants as V
from tests.zoo import DEVICE

Mask = torch.Tensor  # bool, broadcastable to [B, H, Q, KV]
Logits = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (s, h, q, kv)


@dataclasses.dataclass
class Case:
    mask_mod: Callable | None
    score_mod: Callable | None
    allowed: Mask | None  # expected mask
    logits: Logits | None = None  # expected logits from scaled scores s [B, H, Q, KV]
    Q: int = 131
    KV: int = 131
    B: int = 1
    Hq: int = 2
    Hkv: int = 2


def grid(q_len: int, kv_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.arange(q_len)[:, None], torch.arange(kv_len)[None, :]


def from_rows(q_len: int, kv_len: int, keys: Callable[[int], object]) -> Mask:
    """Mask whose row i allows the key positions `keys(i)` (positions outside [0, kv_len) are ignored)."""
    allowed = torch.zeros(q_len, kv_len, dtype=torch.bool)
    for i in range(q_len):
        for j in keys(i):
            if 0 <= j < kv_len:
                allowed[i, j] = True
    return allowed


def dense_attention(q, k, v, allowed: Mask | None, logits: Logits | None) -> torch.Tensor:
    B, H, Q, D = q.shape
    KV, group = k.shape[2], H // k.shape[1]
    k, v = k.double().repeat_interleave(group, 1), v.double().repeat_interleave(group, 1)
    s = q.double() @ k.transpose(-1, -2) / math.sqrt(D)
    if logits is not None:
        s = logits(s, torch.arange(H)[:, None, None], *grid(Q, KV)).double()
    if allowed is not None:
        s = s.masked_fill(~allowed.to(s.device).expand(B, H, Q, KV), -math.inf)
    lse = torch.logsumexp(s, -1, keepdim=True)
    return torch.exp(s - torch.where(lse.isinf(), 0, lse)) @ v


def check_eager(case: Case) -> None:
    """The mods evaluated directly on index tensors (as FlexAttention users do) give the expected mask / logits."""
    shape = (case.B, case.Hq, case.Q, case.KV)
    b, h, qi, ki = (torch.arange(n, device=DEVICE).view([-1 if d == i else 1 for d in range(4)])
                    for i, n in enumerate(shape))
    if case.mask_mod is not None:
        assert torch.equal(case.mask_mod(b, h, qi, ki).cpu().expand(shape), case.allowed.expand(shape))
    if case.score_mod is not None:
        s = torch.randn(shape, generator=torch.Generator().manual_seed(1))
        got = case.score_mod(s.to(DEVICE), b, h, qi, ki).cpu().double()
        torch.testing.assert_close(got, case.logits(s.double(), h.cpu(), qi.cpu(), ki.cpu()).expand(shape))


def check(case: Case, seed: int = 0) -> None:
    check_eager(case)
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(case.B, case.Hq, case.Q, 16, generator=g).to(DEVICE)
    k = torch.randn(case.B, case.Hkv, case.KV, 16, generator=g).to(DEVICE)
    v = torch.randn(case.B, case.Hkv, case.KV, 16, generator=g).to(DEVICE)
    out = attnc.compile(mask_mod=case.mask_mod, score_mod=case.score_mod)(q, k, v, backend="triton")
    expected = dense_attention(q.cpu(), k.cpu(), v.cpu(), case.allowed, case.logits)
    torch.testing.assert_close(out.cpu().double(), expected, atol=2e-5, rtol=2e-5)


# -- masks ------------------------------------------------------------------------------------------------


def causal_cases() -> dict[str, Case]:
    return {
        "causal": Case(V.causal(), None, torch.ones(131, 131, dtype=torch.bool).tril()),
        "causal_bottom_right": Case(V.causal_bottom_right(77, 131), None,
                                    torch.ones(77, 131, dtype=torch.bool).tril(131 - 77), Q=77),
    }


def window_cases() -> dict[str, Case]:
    windows = torch.tensor([3, 40, 17, 1], dtype=torch.int32)
    per_head = torch.stack([from_rows(131, 131, lambda i, w=int(w): range(i - w + 1, i + 1)) for w in windows])
    return {
        "sliding_window": Case(V.sliding_window(24), None, from_rows(131, 131, lambda i: range(i - 23, i + 1))),
        "sliding_window_bidirectional": Case(V.sliding_window(9, causal=False), None,
                                             from_rows(131, 131, lambda i: range(i - 8, i + 9))),
        "sliding_window_per_head": Case(V.sliding_window(windows.to(DEVICE)), None, per_head, Hq=4, Hkv=2),
        "dilated_window": Case(V.dilated_window(8, 3), None, from_rows(131, 131, lambda i: range(i, i - 24, -3))),
        "dilated_window_bidirectional": Case(V.dilated_window(5, 4, causal=False), None,
                                             from_rows(131, 131, lambda i: range(i - 16, i + 17, 4))),
        "sink_window": Case(V.sink_window(4, 30), None,
                            from_rows(131, 131, lambda i: {*range(min(4, i + 1)), *range(i - 29, i + 1)})),
        "chunked_causal": Case(V.chunked_causal(40), None,
                               from_rows(131, 131, lambda i: range(i - i % 40, i + 1))),
        "block_causal": Case(V.block_causal(24), None, from_rows(131, 131, lambda i: range((i // 24 + 1) * 24))),
        "prefix_lm": Case(V.prefix_lm(45), None, from_rows(131, 131, lambda i: range(max(45, i + 1)))),
        "prefix_lm_lengths": Case(V.prefix_lm(torch.tensor([10, 90]).to(DEVICE)), None, torch.stack(
            [from_rows(131, 131, lambda i, p=p: range(max(p, i + 1))) for p in (10, 90)])[:, None], B=2),
    }


def data_cases() -> dict[str, Case]:
    lengths = [40, 1, 70, 20]
    blocks = torch.block_diag(*[torch.ones(n, n) for n in lengths]).bool()
    ids_2d = torch.tensor([[0] * 50 + [1] * 81, [3] * 7 + [5] * 100 + [6] * 24], dtype=torch.int32)
    same_2d = torch.stack([ids[:, None] == ids[None, :] for ids in ids_2d])[:, None]
    padding = torch.stack([torch.arange(131) < n for n in (131, 57)])[:, None, None, :]
    return {
        "document": Case(V.document(torch.tensor([d for d, n in enumerate(lengths) for _ in range(n)]).to(DEVICE)),
                         None, blocks),
        "document_from_lengths": Case(V.document_from_lengths(torch.tensor(lengths).to(DEVICE)), None, blocks),
        "document_batched": Case(V.document(ids_2d.to(DEVICE)), None, same_2d, B=2),
        "key_padding": Case(V.key_padding(torch.tensor([131, 57]).to(DEVICE)), None, padding, B=2),
    }


# -- neighborhoods ------------------------------------------------------------------------------------------


def natten_axis(size: int, kernel: int, dilation: int = 1, stride: int = 1, causal: bool = False) -> Mask:
    """[size, size] window of one axis, from NATTEN's definition: per dilation group, a query's window is
    that of its stride group's leader, clamped to the group (or ending at the query when causal)."""
    allowed = torch.zeros(size, size, dtype=torch.bool)
    for start in range(dilation):
        members = list(range(start, size, dilation))
        n = len(members)
        for i, position in enumerate(members):
            first = i - i % stride
            if causal:
                leader = min(first + stride - 1, n - 1)
                keys = [j for j in range(i + 1) if leader - j < kernel]
            else:
                leader = min(first + stride // 2, n - 1)
                lo = min(max(leader - kernel // 2, 0), n - kernel)
                keys = range(lo, lo + kernel)
            for j in keys:
                allowed[position, members[j]] = True
    return allowed


def natten_dense(canvas: tuple[int, ...], axes: list[Mask]) -> Mask:
    """Combine per-axis windows on a row-major canvas (coordinates from meshgrid, not from // and %)."""
    coords = [c.flatten() for c in torch.meshgrid(*[torch.arange(n) for n in canvas], indexing="ij")]
    allowed = torch.ones(len(coords[0]), len(coords[0]), dtype=torch.bool)
    for c, axis in zip(coords, axes, strict=True):
        allowed &= axis[c[:, None], c[None, :]]
    return allowed


def natten_cases() -> dict[str, Case]:
    return {
        "natten_1d": Case(V.natten(131, 15), None, natten_axis(131, 15)),
        "natten_1d_dilated": Case(V.natten(131, 6, dilation=4), None, natten_axis(131, 6, dilation=4)),
        "natten_1d_strided_causal": Case(V.natten(131, 9, stride=4, causal=True), None,
                                         natten_axis(131, 9, stride=4, causal=True)),
        "natten_2d": Case(V.natten((11, 13), (5, 4), dilation=(2, 1), stride=(1, 2)), None,
                          natten_dense((11, 13), [natten_axis(11, 5, dilation=2), natten_axis(13, 4, stride=2)]),
                          Q=143, KV=143),
        "natten_3d": Case(V.natten((3, 5, 7), 3, causal=(True, False, False)), None,
                          natten_dense((3, 5, 7), [natten_axis(3, 3, causal=True), natten_axis(5, 3),
                                                   natten_axis(7, 3)]), Q=105, KV=105),
    }


def swin_dense(height: int, width: int, window: int, shift: int) -> Mask:
    """The Swin reference algorithm: roll the image by -shift, label the regions of the shifted image
    by slices, attend within a window and a region; map back to the original token order."""
    labels = torch.zeros(height, width, dtype=torch.long)
    cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None)) if shift else (slice(None),)
    for a, rows in enumerate(cuts):
        for c, cols in enumerate(cuts):
            labels[rows, cols] = a * 3 + c
    windows = torch.arange(height // window)[:, None] * (width // window) + torch.arange(width // window)
    windows = windows.repeat_interleave(window, 0).repeat_interleave(window, 1)
    token_at = torch.roll(torch.arange(height * width).reshape(height, width), (-shift, -shift), (0, 1)).flatten()
    key = torch.empty(height * width, 2, dtype=torch.long)
    key[token_at] = torch.stack([windows.flatten(), labels.flatten()], 1)
    return (key[:, None, :] == key[None, :, :]).all(-1)


def structured_cases() -> dict[str, Case]:
    g = torch.Generator().manual_seed(1)
    random = V.random_blocks(2, 9, 9, 2, generator=g)
    gate = torch.randn(1, 2, 9, 9, generator=g)
    parents = [-1, 0, 0, 1, 1, 2, -1, 6, 7]
    return {
        "swin": Case(V.swin((12, 8), 4, shift=2), None, swin_dense(12, 8, 4, 2), Q=96, KV=96),
        "swin_unshifted": Case(V.swin((12, 8), 4), None, swin_dense(12, 8, 4, 0), Q=96, KV=96),
        "strided": Case(V.strided(16), None, from_rows(131, 131, lambda i: {
            *range(max(0, i - 16), i + 1), *(j for j in range(i + 1) if (i - j) % 16 == 0)})),
        "fixed": Case(V.fixed(16, summary=3), None, from_rows(131, 131, lambda i: {
            *(j for j in range(i + 1) if j // 16 == i // 16), *(j for j in range(i + 1) if j % 16 in (13, 14, 15))})),
        "bigbird": Case(V.bigbird(16, random.to(DEVICE)), None, bigbird_dense(16, random, 1, 1, 131)),
        "moba": Case(V.moba(gate.to(DEVICE), 16, 2), None, moba_dense(gate, 16, 2, 131)),
        "tree": Case(V.tree(parents, prefix=50, device=DEVICE), None, tree_dense(parents, 50), Q=9, KV=59),
    }


def expand_blocks(blocks: Mask, block: int, length: int) -> Mask:
    return blocks.repeat_interleave(block, -2).repeat_interleave(block, -1)[..., :length, :length]


def bigbird_dense(block: int, random: Mask, global_blocks: int, window: int, length: int) -> Mask:
    heads, n, _ = random.shape
    blocks = torch.zeros(heads, n, n, dtype=torch.bool)
    for h in range(heads):
        for i in range(n):
            for j in range(n):
                blocks[h, i, j] = i < global_blocks or j < global_blocks or abs(i - j) <= window or random[h, i, j]
    return expand_blocks(blocks, block, length)


def moba_dense(gate: torch.Tensor, block: int, top_k: int, length: int) -> Mask:
    B, H, n, _ = gate.shape
    blocks = torch.zeros(B, H, n, n, dtype=torch.bool)
    for b in range(B):
        for h in range(H):
            for i in range(n):
                best = sorted(range(i), key=lambda j, row=gate[b, h, i]: -float(row[j]))[:top_k]
                for j in [*best, i]:
                    blocks[b, h, i, j] = True
    return expand_blocks(blocks, block, length) & torch.ones(length, length, dtype=torch.bool).tril()


def tree_dense(parents: list[int], prefix: int) -> Mask:
    n = len(parents)
    on_path = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        j = i
        while j != -1:
            on_path[i, j] = True
            j = parents[j]
    return torch.cat([torch.ones(n, prefix, dtype=torch.bool), on_path], 1)


# -- score mods ---------------------------------------------------------------------------------------------


def t5_bucket_dense(rel: torch.Tensor, num_buckets: int, max_distance: int, bidirectional: bool) -> torch.Tensor:
    """T5's relative_position_bucket, as in the reference implementation (int64 throughout)."""
    buckets = torch.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        buckets += (rel > 0).long() * num_buckets
        rel = rel.abs()
    else:
        rel = -torch.minimum(rel, torch.zeros_like(rel))
    max_exact = num_buckets // 2
    large = max_exact + (torch.log(rel.float() / max_exact) / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).long()
    large = torch.minimum(large, torch.full_like(large, num_buckets - 1))
    return buckets + torch.where(rel < max_exact, rel, large)


def score_cases() -> dict[str, Case]:
    g = torch.Generator().manual_seed(2)
    t5_table, t5_causal, rel_table = torch.randn(16, 4, generator=g), torch.randn(16, 2, generator=g), \
        torch.randn(2, 41, generator=g)
    published = torch.tensor([2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8], dtype=torch.float64)[:, None, None]
    causal = torch.ones(131, 131, dtype=torch.bool).tril()

    def t5(table: torch.Tensor, bidirectional: bool) -> Logits:
        return lambda s, h, q, kv: s + table.double()[t5_bucket_dense(kv - q, 16, 90, bidirectional), h]

    return {
        "alibi": Case(V.causal(), V.alibi(4, device=DEVICE), causal,
                      lambda s, h, q, kv: s - published * (q - kv), Hq=4, Hkv=2),
        "softcap": Case(None, V.softcap(2.0), None, lambda s, h, q, kv: 2.0 * torch.tanh(s / 2.0), Q=77),
        "t5_bias": Case(None, V.t5_bias(t5_table.to(DEVICE), 16, 90), None, t5(t5_table, True), Hq=4, Hkv=4),
        "t5_bias_lookup": Case(None, V.t5_bias_lookup(t5_table.to(DEVICE), 16, 90), None, t5(t5_table, True),
                               Hq=4, Hkv=1),
        "t5_bias_causal": Case(V.causal(), V.t5_bias(t5_causal.to(DEVICE), 16, 90, bidirectional=False), causal,
                               t5(t5_causal, False)),
        "relative_bias": Case(None, V.relative_bias(rel_table.to(DEVICE)), None,
                              lambda s, h, q, kv: s + rel_table.double()[h, (q - kv).clamp(-20, 20) + 20], Q=99),
        "alibi_then_softcap": Case(V.causal(), V.alibi(4, device=DEVICE).then(V.softcap(3.0)), causal,
                                   lambda s, h, q, kv: 3.0 * torch.tanh((s - published * (q - kv)) / 3.0), Hq=4),
    }


CASE_TABLES = [causal_cases, window_cases, data_cases, natten_cases, structured_cases, score_cases]
CASE_NAMES = {name: table for table in CASE_TABLES for name in table()}


@pytest.mark.parametrize("name", sorted(CASE_NAMES))
def test_family_kernel_matches_independent_formula(name):
    check(CASE_NAMES[name]()[name])


# -- factories, names, identity ---------------------------------------------------------------------------


def test_alibi_slopes_match_the_published_values():
    assert V.alibi_slopes(8) == [2.0**-i for i in range(1, 9)]
    # not a power of two: the 8-head slopes, then every other 16-head slope (2^-0.5, 2^-1.5, ...)
    assert V.alibi_slopes(12) == pytest.approx([2.0**-i for i in range(1, 9)] + [2.0**-(i + 0.5) for i in range(4)])
    assert V.alibi_slopes(6) == pytest.approx([2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8, 2.0**-1, 2.0**-3])


def test_names_equality_and_hash():
    ids = torch.zeros(8, dtype=torch.int32)
    assert repr(V.sliding_window(256)) == V.sliding_window(256).name == "sliding_window(256)"
    assert repr(V.sliding_window(8, causal=False)) == "sliding_window(8, causal=False)"
    assert repr(V.document(ids)) == "document(tensor[8])"
    assert V.sliding_window(256) == V.sliding_window(256)
    assert hash(V.sliding_window(256)) == hash(V.sliding_window(256))
    assert V.sliding_window(256) != V.sliding_window(128)
    assert V.sliding_window(256) != V.sliding_window(256, causal=False)
    assert V.document(ids) == V.document(ids)
    assert V.document(ids) != V.document(ids.clone())  # tensors count by identity, never by value
    assert V.softcap(50.0) != V.causal() and V.natten(64, 7) == V.natten((64,), (7,))
    assert len({V.causal(), V.causal(), V.alibi(8), V.alibi(8)}) == 2
    copied = copy.deepcopy(V.sliding_window(ids))  # e.g. deep-copying a module that holds its mods
    assert isinstance(copied, V.MaskMod) and copied == V.sliding_window(ids)
    assert copied.name == "sliding_window(tensor[8])"


def test_composition_names_and_keys():
    both = V.causal() & V.sliding_window(16)
    assert repr(both) == "(causal() & sliding_window(16))"
    assert both == V.causal() & V.sliding_window(16) and both != V.sliding_window(16) & V.causal()
    assert repr(V.causal() | ~V.prefix_lm(4)) == "(causal() | ~prefix_lm(4))"

    def early(b, h, q_idx, kv_idx):
        return kv_idx < 4

    assert repr(early & V.causal()) == "(early & causal())" and (early | V.causal()) == (early | V.causal())
    with pytest.raises(TypeError, match="expected a MaskMod or a plain function, got ScoreMod softcap"):
        V.causal() & V.softcap(3.0)
    chained = V.alibi(8).then(V.softcap(30.0))
    assert repr(chained) == "alibi(8).then(softcap(30.0))" and chained == V.alibi(8).then(V.softcap(30.0))


def test_closure_scalars_stay_runtime_parameters():
    small, large = attnc.compile(V.sliding_window(16)), attnc.compile(V.sliding_window(64))
    assert small.program == large.program and len(small.program.params) == 1
    both = attnc.compile(V.causal() & V.sink_window(4, 32) | V.prefix_lm(8))
    assert [p.name for p in both.program.params] == ["sinks", "window", "prefix"]


def test_combinators_through_create_block_mask_equal_the_dense_mask():
    qi, ki = grid(160, 160)
    mod = (V.sliding_window(40) & ~V.chunked_causal(32)) | V.prefix_lm(8)
    expected = ((qi >= ki) & (qi - ki < 40) & ~((qi // 32 == ki // 32) & (qi >= ki))) | (ki < 8) | (qi >= ki)
    assert torch.equal(mod(0, 0, qi, ki), expected)
    block_mask = attnc.create_block_mask(mod, None, None, 160, 160, device=DEVICE, BLOCK_SIZE=16)
    blocks = expected.reshape(10, 16, 10, 16).any(3).any(1)
    assert torch.equal(block_mask.to_dense()[0, 0].bool().cpu(), blocks)


def test_masks_and_score_mods_work_through_flex_attention():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 4, 100, 16, generator=g).to(DEVICE) for _ in range(3))
    mask, score = V.sink_window(2, 20) & V.causal(), V.alibi(4, device=DEVICE).then(V.softcap(4.0))
    block_mask = attnc.create_block_mask(mask, None, None, 100, 100, device=DEVICE, BLOCK_SIZE=32)
    out = attnc.flex_attention(q, k, v, score_mod=score, block_mask=block_mask, backend="triton")
    qi, ki = grid(100, 100)
    slopes = torch.tensor([2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8], dtype=torch.float64)[:, None, None]
    allowed = (qi >= ki) & ((ki < 2) | (qi - ki < 20))
    expected = dense_attention(q.cpu(), k.cpu(), v.cpu(), allowed,
                               lambda s, h, qq, kk: 4.0 * torch.tanh((s + slopes * (kk - qq)) / 4.0))
    torch.testing.assert_close(out.cpu().double(), expected, atol=2e-5, rtol=2e-5)


def test_gemma2_alternates_local_and_global_layers():
    assert V.gemma2(0) == (V.sliding_window(4096), V.softcap(50.0))
    assert V.gemma2(1) == (V.causal(), V.softcap(50.0))
    assert V.gemma2(4, window=24, cap=5.0).mask_mod == V.sliding_window(24)
    mask_mod, score_mod = V.gemma2(2, window=24, cap=5.0)
    local = from_rows(131, 131, lambda i: range(i - 23, i + 1))
    check(Case(mask_mod, score_mod, local, lambda s, h, q, kv: 5.0 * torch.tanh(s / 5.0), Hq=4, Hkv=2))


def test_t5_bucket_table_matches_the_reference_buckets():
    rel = torch.arange(-128, 129)
    assert torch.equal(V.t5_bucket_table().long(), t5_bucket_dense(rel, 32, 128, True))
    assert torch.equal(V.t5_bucket_table(32, 128, bidirectional=False).long(), t5_bucket_dense(rel, 32, 128, False))


def test_tree_ancestors_and_bad_parents():
    assert torch.equal(V.ancestor_matrix([-1, 0, 1, 0]), tree_dense([-1, 0, 1, 0], 0))
    with pytest.raises(ValueError, match="parent is an earlier node"):
        V.tree([-1, 2, 0])


def test_every_family_module_documents_itself_and_registers_its_factories():
    modules = {f.__module__ for f in V.FAMILIES.values()}
    assert len(modules) >= 20
    for name in modules:
        module = importlib.import_module(name)
        assert "Origin:" in module.__doc__, name
        assert any(line.startswith(("mask:", "score:")) for line in module.TEXT.splitlines()), name
    assert V.FAMILIES["natten"] is V.natten and V.FAMILIES["gemma2"] is V.gemma2


# -- the text syntax --------------------------------------------------------------------------------------


def text_representatives() -> dict[str, tuple[object, ...]]:
    """Each family module's TEXT variant built by its factory: (mask_mod, score_mod)."""
    g = torch.Generator().manual_seed(4)
    return {
        "causal": (V.causal(), None), "sliding_window": (V.sliding_window(256), None),
        "dilated": (V.dilated_window(64, 4), None), "prefix_lm": (V.prefix_lm(128), None),
        "chunked": (V.chunked_causal(8192), None), "block_causal": (V.block_causal(256), None),
        "sinks": (V.sink_window(4, 1024), None), "alibi": (None, V.alibi(8)), "softcap": (None, V.softcap(50.0)),
        "relative_bias": (None, V.relative_bias(torch.randn(8, 257, generator=g))),
        "t5": (None, V.t5_bias_lookup(torch.randn(32, 8, generator=g))),
        "document": (V.document(torch.zeros(64, dtype=torch.int32)), None),
        "padding": (V.key_padding(torch.tensor([64, 30], dtype=torch.int32)), None),
        "swin": (V.swin((14, 14), 7, shift=3), None), "sparse_transformer": (V.strided(128), None),
        "bigbird": (V.bigbird(64, V.random_blocks(8, 4, 4, 1, generator=g)), None),
        "moba": (V.moba(torch.randn(1, 8, 4, 4, generator=g), 64, 2), None),
        "tree": (V.tree([-1, 0, 0, 1, 1, 2, -1, 6], prefix=100), None), "gemma2": tuple(V.gemma2(0)),
    }


@pytest.mark.parametrize("family", sorted(text_representatives()))
def test_text_is_the_same_program_as_the_factory(family):
    text = pytest.importorskip("attnc.dsl.text")
    mask_mod, score_mod = text_representatives()[family]
    written = text.parse(importlib.import_module(f"attnc.variants.{family}").TEXT)
    assert written.program == attnc.compile(mask_mod, score_mod).traced.program


def test_natten_text_is_the_same_program_as_the_factory_but_for_param_names():
    # The factory's parameters are named after its closure expressions (`sizes[1]`, and `before` once per
    # axis), which are not names in the text; every node, slot and dtype is the same.
    text = pytest.importorskip("attnc.dsl.text")
    variant = text.parse(importlib.import_module("attnc.variants.natten").TEXT)
    written, traced = variant.program, attnc.compile(V.natten((16, 16), 7)).traced.program
    assert written.replace(params=()) == traced.replace(params=())
    assert [p.dtype for p in written.params] == [p.dtype for p in traced.params]
    assert [p.name for p in written.params] == ["width", "before_w", "after_w", "height", "before_h", "after_h"]
    assert [d.default for d in variant.params] == [16, 3, 3, 16, 3, 3]  # in slot order: the factory's values
    assert [p.name for p in traced.params] == ["sizes[1]", "before", "after", "sizes[0]", "before", "after"]
