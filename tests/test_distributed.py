"""Context parallelism: every rank's output, lse and gradients equal the single-process result on its shard,
for world sizes 1-4, the three layouts, odd local lengths, GQA, data-dependent masks and a learned bias;
gloo processes on the CPU. Bad calls fail on every rank with a message, never a hang."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import attnc
import attnc.distributed as cp
from attnc.distributed.layout import segments, shard_positions


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    layout: str
    local: int  # positions per rank
    heads: tuple[int, int] = (2, 2)  # (query heads, key/value heads)
    backend: str = "reference"
    captured: str = "sum"  # "local": each rank's share, summed here as a training loop would


def variant(name: str, S: int, heads: int) -> tuple[Callable | None, Callable | None, list[torch.Tensor]]:
    """(mask_mod, score_mod, learned tensors) of a named variant over a sequence of S tokens."""
    if name == "causal":
        return (lambda b, h, q, kv: q >= kv), None, []
    if name == "sliding":
        return (lambda b, h, q, kv: (q >= kv) & (q - kv <= 9)), None, []
    if name == "document":
        doc = (torch.arange(S) * 7 // S).int()  # documents of uneven lengths across shard boundaries

        def document(b, h, q, kv):
            return (doc[q] == doc[kv]) & (q >= kv)

        return document, None, []
    if name == "gated_alibi":  # a learned tensor read through a torch op: its gradient flows through it
        gates = torch.linspace(-1.0, 1.0, heads).requires_grad_(True)

        def gated(score, b, h, q, kv):
            return score + torch.sigmoid(gates)[h] * (kv - q) * 0.5

        return (lambda b, h, q, kv: q >= kv), gated, [gates]
    if name == "alibi":
        slopes = torch.linspace(0.1, 0.6, heads).requires_grad_(True)

        def alibi(score, b, h, q, kv):
            return score + slopes[h] * (kv - q)

        return (lambda b, h, q, kv: q >= kv), alibi, [slopes]
    if name == "full":
        return None, None, []
    raise ValueError(name)


def run_case(case: Case, rank: int, world: int) -> None:
    """One rank's check: its shard of the ring result against the single-process result."""
    S = case.local * world
    Hq, Hkv = case.heads
    mask_mod, score_mod, learned = variant(case.name, S, Hq)
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(2, h, S, 16, generator=g) for h in (Hq, Hkv, Hkv))
    dout, dlse = torch.randn(2, Hq, S, 16, generator=g), torch.randn(2, Hq, S, generator=g)
    gqa = Hq != Hkv

    full = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out, lse = attnc.flex_attention(*full, score_mod=score_mod, mask_mod=mask_mod, return_lse=True,
                                    enable_gqa=gqa, backend="reference")
    finite = torch.isfinite(lse)
    ((out * dout).sum() + (torch.where(finite, lse, 0.0) * dlse).sum()).backward()
    expected_learned = [t.grad.clone() for t in learned]
    for t in learned:
        t.grad = None

    local = [cp.shard(t, layout=case.layout).requires_grad_(True) for t in (q, k, v)]
    got, got_lse = cp.attention(*local, layout=case.layout, mask_mod=mask_mod, score_mod=score_mod,
                                return_lse=True, enable_gqa=gqa, backend=case.backend, captured_grads=case.captured)
    mine = shard_positions(case.layout, S, world, rank)
    local_finite = finite[:, :, mine]
    ((got * dout[:, :, mine]).sum() + (torch.where(local_finite, got_lse, 0.0) * dlse[:, :, mine]).sum()).backward()

    where = f"{case}, rank {rank} of {world}"
    tol = {"atol": 1e-4, "rtol": 1e-4}
    torch.testing.assert_close(got, out[:, :, mine].detach(), **tol, msg=lambda m: f"{where}: out: {m}")
    assert torch.equal(torch.isfinite(got_lse), local_finite), where
    expected_lse = torch.where(finite, lse, 0.0)[:, :, mine].detach()
    torch.testing.assert_close(torch.where(local_finite, got_lse, 0.0), expected_lse, **tol,
                               msg=lambda m: f"{where}: lse: {m}")
    for name, local_t, full_t in zip("qkv", local, full, strict=True):
        torch.testing.assert_close(local_t.grad, full_t.grad[:, :, mine], **tol,
                                   msg=lambda m, name=name: f"{where}: d{name}: {m}")
    for t, expected in zip(learned, expected_learned, strict=True):
        if case.captured == "local" and world > 1:
            dist.all_reduce(t.grad)
        torch.testing.assert_close(t.grad, expected, **tol, msg=lambda m: f"{where}: captured gradient: {m}")


def worker(rank: int, world: int, init_file: str, cases: list[Case]) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for case in cases:
            run_case(case, rank, world)
    finally:
        dist.destroy_process_group()


def spawn(target: Callable[..., None], world: int, *args: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(target, args=(world, os.path.join(tmp, "init"), *args), nprocs=world, join=True)


WORLDS = {
    1: [Case("causal", "zigzag", 12), Case("alibi", "contiguous", 7, heads=(4, 2))],
    2: [Case("causal", "zigzag", 14), Case("document", "zigzag", 10), Case("full", "striped", 9),
        Case("alibi", "contiguous", 11, heads=(4, 2)), Case("causal", "zigzag", 10, backend="triton"),
        Case("gated_alibi", "zigzag", 6, heads=(4, 2), backend="triton")],
    3: [Case("causal", "zigzag", 10), Case("sliding", "striped", 9), Case("alibi", "zigzag", 8, heads=(4, 2)),
        Case("alibi", "striped", 5, captured="local"),
        Case("document", "contiguous", 7)],
    4: [Case("causal", "zigzag", 6), Case("causal", "contiguous", 5), Case("causal", "striped", 7),
        Case("sliding", "contiguous", 9), Case("document", "striped", 5), Case("full", "zigzag", 4)],
}


@pytest.mark.parametrize("world", sorted(WORLDS))
def test_ring_attention_equals_one_process(world: int) -> None:
    spawn(worker, world, WORLDS[world])


# -- bad calls fail on every rank -------------------------------------------------------------------------------


def bad_calls(rank: int, world: int, init_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        q = torch.randn(1, 2, 8 + (rank == 1) * 2, 16)
        with pytest.raises(ValueError, match="ranks disagree on the shard shapes"):
            cp.attention(q, q, q, layout="contiguous", backend="reference")
        q = torch.randn(1, 2, 7, 16)
        with pytest.raises(ValueError, match=r"rank [01]: .*zig-zag shard holds two equal chunks"):
            cp.attention(q, q, q, layout="zigzag", backend="reference")
        mask = (lambda b, h, qi, kv: qi >= kv) if rank == 0 else (lambda b, h, qi, kv: qi <= kv)
        q = torch.randn(1, 2, 8, 16)
        with pytest.raises(ValueError, match="ranks disagree on the variant"):
            cp.attention(q, q, q, layout="striped", mask_mod=mask, backend="reference")
        # the group still works after refusals: nothing is left half-sent
        out = cp.attention(q, q, q, layout="striped", backend="reference")
        assert out.shape == q.shape
    finally:
        dist.destroy_process_group()


def test_bad_calls_fail_on_every_rank_without_a_hang() -> None:
    spawn(bad_calls, 2)


# -- layouts and the plan -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", cp.LAYOUTS)
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_partition_the_sequence(layout: str, world: int) -> None:
    S = 2 * world * 5
    positions = torch.cat([shard_positions(layout, S, world, r) for r in range(world)])
    assert torch.equal(positions.sort().values, torch.arange(S))
    x = torch.arange(S).view(1, 1, S, 1).float()
    for r in range(world):
        assert sum(s.length for s in segments(layout, S, world, r)) == S // world
    assert torch.equal(cp.shard(x, layout=layout), x)  # one process holds everything


def test_layouts_refuse_lengths_they_cannot_split() -> None:
    with pytest.raises(ValueError, match=r"multiple of 2 x world size \(8\), got S=20"):
        cp.plan(None, 20, 4, "zigzag")
    with pytest.raises(ValueError, match="unknown layout 'ring'"):
        cp.plan(None, 16, 2, "ring")


def test_causal_work_is_balanced_by_zigzag_and_striped_but_not_contiguous() -> None:
    def causal(b, h, q, kv):
        return q >= kv

    plans = {layout: cp.plan(causal, 8192, 4, layout) for layout in cp.LAYOUTS}
    assert plans["zigzag"].imbalance <= 0.10 and plans["striped"].imbalance <= 0.10
    assert plans["contiguous"].imbalance > 0.5
    contiguous = plans["contiguous"].ranks
    # the first rank attends to its own block only; the last block is needed by no other rank: never sent
    assert contiguous[0].steps_computed == 1 and contiguous[3].forward_bytes_sent == 0
    total = sum(r.computed_pairs for r in plans["zigzag"].ranks)
    assert total >= 8192 * 8193 // 2  # every allowed pair lies in a computed tile
    assert "imbalance" in str(plans["zigzag"])


def test_a_local_window_skips_far_blocks() -> None:
    def window(b, h, q, kv):
        return (q - kv).abs() <= 100

    report = cp.plan(window, 4096, 4, "contiguous")
    assert [r.steps_computed for r in report.ranks] == [2, 3, 3, 2]


def test_a_compiled_variant_runs_distributed_on_one_process() -> None:
    def causal(b, h, q, kv):
        return q >= kv

    attn = attnc.compile(causal)
    q, k, v = (torch.randn(1, 2, 12, 16) for _ in range(3))
    out = attn.distributed(q, k, v, layout="zigzag", backend="reference")
    torch.testing.assert_close(out, attn(q, k, v, backend="reference"), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="text variant"):
        attnc.compile("mask: q >= kv").distributed(q, k, v)


def changing_documents(rank: int, world: int, init_file: str) -> None:
    """The plan is reused between calls only while the data it was decided from is unchanged."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        S = 24
        doc = torch.zeros(S, dtype=torch.int32)

        def document(b, h, q, kv):
            return doc[q] == doc[kv]

        g = torch.Generator().manual_seed(3)
        q, k, v = (torch.randn(1, 2, S, 16, generator=g) for _ in range(3))
        mine = shard_positions("contiguous", S, world, rank)
        # first no block crosses ranks, then every pair is allowed: a stale plan would skip needed blocks
        for ids in (torch.arange(S) // 12, torch.zeros(S), torch.arange(S) // 4):
            doc.copy_(ids)  # in place: the same tensor, a new version
            got = cp.attention(*(cp.shard(t, layout="contiguous") for t in (q, k, v)), layout="contiguous",
                               mask_mod=document, backend="reference")
            expected = attnc.flex_attention(q, k, v, mask_mod=document, backend="reference")[:, :, mine]
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    finally:
        dist.destroy_process_group()


def test_a_plan_follows_the_data_it_was_decided_from() -> None:
    spawn(changing_documents, 2)
