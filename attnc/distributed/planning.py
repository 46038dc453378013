"""Which (query rank, key block) pairs a ring computes and where each key block travels.

In a ring, the key/value block of rank y visits ranks y, y + 1, ..., y + W - 1 (mod W), one step each. From
the mask's structure (the tile analysis of the variant seen at global positions, or per-block ranges of
the data it reads; never a dense evaluation) we know, for each query segment of rank x and key segment of
rank y, whether any pair is allowed. So a step whose block is masked for all of a rank's queries is not
computed, and a block is forwarded only while some rank further along its path needs it; in the backward
its gradient returns to its owner from the last rank that needed it.

`plan(mask_mod, S, world_size, layout)` reports the same decisions as a table: computed pairs, steps and
bytes per rank, and the imbalance of the work.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import torch

from attnc.distributed.layout import Segment, check_layout, segments
from attnc.distributed.positions import GlobalPositions
from attnc.ir.tiles import EMPTY, FULL, PARTIAL
from attnc.runtime import sparsity


@dataclasses.dataclass(frozen=True)
class Problem:
    """The shapes a ring runs on (batch and query heads: a mask may depend on b and h)."""

    B: int
    H: int
    S: int
    world_size: int
    layout: str
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))


def stride(layout: str, world_size: int) -> int:
    return world_size if layout == "striped" else 1


def tile_classes(variant: GlobalPositions, q: Segment, kv: Segment, problem: Problem,
                 block: int | None) -> torch.Tensor:
    """Classes (EMPTY 0, PARTIAL 1, FULL 2) of the tiles of `q x kv` seen at global positions, `[B, H, nQ, nKV]`;
    `block` None: one tile for the whole pair. A mask the analysis cannot read gives all PARTIAL."""
    attn = variant.at(q.start, kv.start)
    q_block, kv_block = (q.length, kv.length) if block is None else (block, block)
    shape = (problem.B, problem.H, math.ceil(q.length / q_block), math.ceil(kv.length / kv_block))
    mask = attn.program.mask
    if mask is None:
        return torch.full(shape, FULL, dtype=torch.int8)
    if not sparsity.analysable(mask):
        return torch.full(shape, PARTIAL, dtype=torch.int8)
    bindings = attn._bind({})
    classes = sparsity.classify_blocks(attn.program, bindings.tensors, bindings.params, B=problem.B, H=problem.H,
                                       Q_LEN=q.length, KV_LEN=kv.length, q_block=q_block, kv_block=kv_block,
                                       device=problem.device)
    return classes.expand(shape).cpu()


@dataclasses.dataclass(frozen=True)
class RingPlan:
    """needs[x][y]: for each (query segment of rank x, key segment of rank y) pair, whether it is computed."""

    problem: Problem
    needs: tuple[tuple[tuple[tuple[bool, ...], ...], ...], ...]

    @property
    def world_size(self) -> int:
        return self.problem.world_size

    def rank_needs(self, x: int, y: int) -> bool:
        return any(any(row) for row in self.needs[x][y])

    def holder(self, y: int, step: int) -> int:
        """The rank block y is at in `step`."""
        return (y + step) % self.world_size

    def forwarded(self, y: int, step: int) -> bool:
        """Whether block y goes on from its holder in `step` to the next rank: some rank further along its
        path needs it."""
        return any(self.rank_needs(self.holder(y, later), y) for later in range(step + 1, self.world_size))

    def held(self, y: int, step: int) -> bool:
        """Whether block y reached its holder in `step` (the owner always has it)."""
        return step == 0 or self.forwarded(y, step - 1)

    def last_step(self, y: int) -> int:
        """The step in which block y's last user holds it (0: no rank but its owner's may need it); its
        gradient returns from there."""
        steps = [s for s in range(self.world_size) if self.held(y, s) and self.rank_needs(self.holder(y, s), y)]
        return max(steps, default=0)


def ring_plan(variant: GlobalPositions, problem: Problem) -> RingPlan:
    """The computed segment pairs of every (query rank, key rank), one tile test per pair; reused while the
    shapes, the mods' parameters and their captured tensors (by version) stay the same."""
    key = (problem, variant.values_key())
    found = variant.plans.get(key)
    if found is None:
        found = variant.plans[key] = _ring_plan(variant, problem)
        while len(variant.plans) > _PLANS_KEPT:
            del variant.plans[next(iter(variant.plans))]
    return found


_PLANS_KEPT = 8


def _ring_plan(variant: GlobalPositions, problem: Problem) -> RingPlan:
    W = problem.world_size
    parts = [segments(problem.layout, problem.S, W, r) for r in range(W)]
    needs = tuple(
        tuple(tuple(tuple(bool((tile_classes(variant, qs, ks, problem, None) != EMPTY).any())
                          for ks in parts[y]) for qs in parts[x]) for y in range(W))
        for x in range(W))
    return RingPlan(problem, needs)


# -- the report -------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RankLoad:
    rank: int
    computed_pairs: int  # query-key pairs inside the tiles the kernels compute
    steps_computed: int  # key blocks this rank attends to (of world size)
    forward_bytes_sent: int
    backward_bytes_sent: int


@dataclasses.dataclass(frozen=True)
class ContextPlan:
    """Work and traffic per rank of one ring attention; `imbalance` = max / mean - 1 of the work."""

    layout: str
    S: int
    world_size: int
    ranks: tuple[RankLoad, ...]

    @property
    def imbalance(self) -> float:
        work = [r.computed_pairs for r in self.ranks]
        mean = sum(work) / len(work)
        return max(work) / mean - 1.0 if mean else 0.0

    def __str__(self) -> str:
        lines = [f"layout {self.layout}, S={self.S}, world size {self.world_size}: imbalance "
                 f"{100 * self.imbalance:.1f}%",
                 f"{'rank':>4} {'computed pairs':>15} {'steps':>6} {'fwd MB sent':>12} {'bwd MB sent':>12}"]
        for r in self.ranks:
            lines.append(f"{r.rank:>4} {r.computed_pairs:>15,} {r.steps_computed:>3}/{self.world_size:<2} "
                         f"{r.forward_bytes_sent / 2**20:>12.2f} {r.backward_bytes_sent / 2**20:>12.2f}")
        return "\n".join(lines)


def plan(mask_mod: Callable | None, S: int, world_size: int, layout: str = "zigzag", *,
         score_mod: Callable | None = None, B: int = 1, H: int = 1, kv_heads: int | None = None,
         head_dim: int = 128, dtype: torch.dtype = torch.bfloat16, block: int = 128) -> ContextPlan:
    """What ring attention over `world_size` ranks computes and sends for a sequence of `S` tokens: per rank
    the query-key pairs in computed tiles (`block` x `block`), the key blocks attended to, and the bytes of
    K/V (forward) and K/V plus float32 dK/dV (backward) it sends. Decided from the mask's structure."""
    check_layout(layout, S, world_size)
    problem = Problem(B, H, S, world_size, layout)
    variant = variant_for(mask_mod, score_mod, stride(layout, world_size))
    ring = ring_plan(variant, problem)
    parts = [segments(layout, S, world_size, r) for r in range(world_size)]
    block_elements = B * (kv_heads or H) * (S // world_size) * head_dim * 2  # K and V of one shard
    loads = []
    for x in range(world_size):
        pairs = sum(_computed_pairs(variant, qs, ks, problem, block)
                    for y in range(world_size) if ring.rank_needs(x, y)
                    for i, qs in enumerate(parts[x]) for j, ks in enumerate(parts[y]) if ring.needs[x][y][i][j])
        steps = sum(ring.rank_needs(x, y) for y in range(world_size))
        loads.append(RankLoad(x, pairs, steps, *_bytes_sent(ring, x, block_elements, torch.finfo(dtype).bits // 8)))
    return ContextPlan(layout, S, world_size, tuple(loads))


@functools.lru_cache(maxsize=32)
def variant_for(mask_mod: Callable | None, score_mod: Callable | None, stride_: int) -> GlobalPositions:
    """The variant at global positions for segments of stride `stride_`, compiled once per mods."""
    return GlobalPositions(mask_mod, score_mod, stride_, stride_)


def _computed_pairs(variant: GlobalPositions, q: Segment, kv: Segment, problem: Problem, block: int) -> int:
    classes = tile_classes(variant, q, kv, problem, block)
    rows = torch.clamp(q.length - torch.arange(classes.shape[2]) * block, max=block)
    cols = torch.clamp(kv.length - torch.arange(classes.shape[3]) * block, max=block)
    area = rows[:, None] * cols[None, :]
    return int(((classes != EMPTY) * area).sum())


def _bytes_sent(ring: RingPlan, x: int, block_elements: int, element_size: int) -> tuple[int, int]:
    """(forward, backward) bytes rank x sends: each block it forwards (K and V), and in the backward the
    same plus the float32 dK/dV it passes on or returns to the owner."""
    forward = backward = 0
    for y in range(ring.world_size):
        step = (x - y) % ring.world_size
        if not ring.held(y, step):
            continue
        if ring.forwarded(y, step):
            forward += block_elements * element_size
            backward += block_elements * (element_size + 4)
        elif step == ring.last_step(y) and step > 0:
            backward += block_elements * 4
    return forward, backward
