"""Ring attention for any variant: each rank keeps its queries and passes key/value blocks around the group.

Forward, on rank r in step s: the block of rank y = r - s (mod W) is here; the next block is already in
flight (`batch_isend_irecv` to r + 1 and from r - 1, posted before the computation and waited for after);
each of this rank's query segments attends to each of the block's key segments that the plan says are
not entirely masked, through the variant seen at global positions, and the results merge by their lse.

Backward, the same ring again: the blocks travel with accumulators of their dK / dV (float32, float64 for
float64 inputs). Each rank runs the backward kernels on each computed part (its query segment, a block's key
segment) against the merged output and lse: the softmax they rebuild from the merged lse is the merged one
restricted to the part's keys, so they give exactly that part's dQ, dK / dV (added to the block's
accumulators) and captured-tensor gradients (summed over the group at the end: every rank's queries
contribute to them), without computing any forward again. A block's accumulators go on while a rank further
along its path needs it and then return to the owner.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from attnc.distributed.layout import Segment, check_layout, global_length, group_size_and_rank, segments
from attnc.distributed.planning import Problem, RingPlan, ring_plan, stride, variant_for
from attnc.distributed.positions import GlobalPositions
from attnc.runtime.kernel_options import CallOptions
from attnc.runtime.launch import compute_dtype
from attnc.runtime.merge import merge_into

Pair = tuple[torch.Tensor, torch.Tensor]


@dataclasses.dataclass(frozen=True, eq=False)
class Ring:
    """One call's ring: the group, the plan, the variant at global positions and the call's options."""

    variant: GlobalPositions
    group: Any
    peers: tuple[int, ...]  # global rank of each rank of the group
    rank: int
    plan: RingPlan
    parts: tuple[tuple[Segment, ...], ...]  # each rank's segments
    scale: float | None
    enable_gqa: bool
    backend: str
    sum_captured: bool  # sum captured tensors' gradients over the group (else this rank's share)

    @property
    def world_size(self) -> int:
        return len(self.peers)

    def block_at(self, step: int, rank: int | None = None) -> int:
        """The rank whose block `rank` (default: this one) holds in `step`."""
        return ((self.rank if rank is None else rank) - step) % self.world_size

    def peer(self, rank: int) -> int:
        return self.peers[rank % self.world_size]

    def pairs(self, y: int) -> list[tuple[Segment, Segment]]:
        """The (query segment, key segment) pairs of this rank and block y that are computed."""
        needs = self.plan.needs[self.rank][y]
        return [(qs, ks) for i, qs in enumerate(self.parts[self.rank]) for j, ks in enumerate(self.parts[y])
                if needs[i][j]]

    def attend(self, qs: Segment, ks: Segment, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Pair:
        attn = self.variant.at(qs.start, ks.start)
        return attn(q, k, v, self.scale, True, enable_gqa=self.enable_gqa, backend=self.backend)


def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *, group: Any = None,
              layout: str = "zigzag", mask_mod: Any = None, score_mod: Any = None, scale: float | None = None,
              return_lse: bool = False, enable_gqa: bool = False, backend: str = "auto",
              captured_grads: str = "sum") -> Any:
    """Attention of this rank's query shard over the whole sequence's keys, with K / V passed around the
    ranks of `group`. Shards are `[B, H, S_local, D]` in `layout` (see `attnc.distributed.layout`); mods see
    global positions. Returns this rank's output (and the lse `[B, H, S_local]`, float32, or float64 for
    float64 inputs). Differentiable: every rank must run the backward (it is a collective too).

    `captured_grads`: "sum" (default) gives every rank the gradient of the captured tensors summed over the
    group, the single-device gradient when each rank back-propagates its own shard's loss; "local" gives this
    rank's share only, for training loops that reduce parameter gradients over the group themselves (DDP or
    FSDP over the context-parallel ranks), which would otherwise count them once per rank."""
    if captured_grads not in ("sum", "local"):
        raise ValueError(f"attnc.distributed: captured_grads must be 'sum' or 'local', got {captured_grads!r}")
    world_size, rank = group_size_and_rank(group)
    variant = variant_for(mask_mod, score_mod, stride(layout, world_size))
    S = _checked_length(query, key, value, group, layout, world_size, rank, variant, (scale, enable_gqa, backend))
    problem = Problem(query.shape[0], query.shape[1], S, world_size, layout, query.device)
    peers = tuple(dist.get_global_rank(group, r) if group is not None else r for r in range(world_size)) \
        if world_size > 1 else (0,)
    ring = Ring(variant, group, peers, rank, ring_plan(variant, problem),
                tuple(segments(layout, S, world_size, r) for r in range(world_size)), scale, enable_gqa, backend,
                captured_grads == "sum")
    attn = variant.attention
    bindings = attn._bind({})
    sources = bindings.tensors if bindings.sources is None else bindings.sources
    learned = [t for t in sources if t.is_floating_point() and t.requires_grad]
    out, lse = RingAttention.apply(ring, query, key, value, *learned)
    return (out, lse) if return_lse else out


class RingAttention(torch.autograd.Function):
    """apply(ring, query, key, value, *learned_captured_tensors) -> (out, lse)."""

    @staticmethod
    def forward(ctx: Any, ring: Ring, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                *learned: torch.Tensor) -> Pair:
        out, lse = forward_ring(ring, query, key, value)
        ctx.ring = ring
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(query, key, value, out, lse, *learned)
        return out, lse

    @staticmethod
    def backward(ctx: Any, dout: torch.Tensor | None, dlse: torch.Tensor | None) -> tuple[Any, ...]:
        query, key, value, out, lse, *learned = ctx.saved_tensors
        if dout is None:
            dout = torch.zeros_like(out)
        dq, dk, dv, captured = backward_ring(ctx.ring, query, key, value, out, lse, dout, dlse, learned)
        return (None, dq, dk, dv, *captured)


# -- the forward ring ----------------------------------------------------------------------------------------


def forward_ring(ring: Ring, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Pair:
    B, H, L, _ = q.shape
    acc = compute_dtype(q.dtype)
    out = torch.zeros(B, H, L, v.shape[-1], dtype=acc, device=q.device)
    lse = torch.full((B, H, L), float("-inf"), dtype=acc, device=q.device)
    block: Pair | None = (k.contiguous(), v.contiguous())
    for step in range(ring.world_size):
        y = ring.block_at(step)
        held = block if ring.plan.held(y, step) else None
        works, incoming = pass_blocks(ring, step, held, (k, v))
        if held is not None:
            for qs, ks in ring.pairs(y):
                rows, cols = _span(qs), _span(ks)
                o, part = ring.attend(qs, ks, q[:, :, rows], held[0][:, :, cols], held[1][:, :, cols])
                merge_into(out[:, :, rows], lse[:, :, rows], o, part)
        _wait(works)
        block = incoming
    return out.to(q.dtype), lse


def pass_blocks(ring: Ring, step: int, held: Pair | None, like: Pair) -> tuple[list[Any], Pair | None]:
    """Post the sends of the block held now to the next rank (if some rank further on needs it) and the
    receives of the block the previous rank holds, for the next step."""
    ops: list[Any] = []
    if held is not None and ring.plan.forwarded(ring.block_at(step), step):
        ops += [dist.P2POp(dist.isend, t, ring.peer(ring.rank + 1), ring.group) for t in held]
    incoming = None
    if step + 1 < ring.world_size and ring.plan.forwarded(ring.block_at(step, ring.rank - 1), step):
        incoming = (torch.empty_like(like[0], memory_format=torch.contiguous_format),
                    torch.empty_like(like[1], memory_format=torch.contiguous_format))
        ops += [dist.P2POp(dist.irecv, t, ring.peer(ring.rank - 1), ring.group) for t in incoming]
    return (dist.batch_isend_irecv(ops) if ops else []), incoming


# -- the backward ring ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Gradients:
    """This rank's gradient accumulators."""

    dq: torch.Tensor
    captured: list[torch.Tensor]


def backward_ring(ring: Ring, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                  lse: torch.Tensor, dout: torch.Tensor, dlse: torch.Tensor | None,
                  learned: Sequence[torch.Tensor]) -> tuple[Any, ...]:
    acc = compute_dtype(q.dtype)
    grads = Gradients(torch.zeros(q.shape, dtype=acc, device=q.device),
                      [torch.zeros_like(t, dtype=acc) for t in learned])
    block: Pair | None = (k.contiguous(), v.contiguous())
    accumulators: Pair | None = _zeros(k, v)
    own: Pair | None = None
    for step in range(ring.world_size):
        y = ring.block_at(step)
        held = block if ring.plan.held(y, step) else None
        works, incoming = pass_blocks(ring, step, held, (k, v))
        if held is not None:
            assert accumulators is not None  # a held block always has its accumulators
            for qs, ks in ring.pairs(y):
                _backward_pair(ring, qs, ks, q, held, out, lse, dout, dlse, learned, grads, accumulators)
            if y == ring.rank and ring.plan.last_step(y) == 0:
                own = accumulators
        _wait(works)
        works, next_accumulators, returned = pass_gradients(ring, step, accumulators if held is not None else None,
                                                            (k, v))
        _wait(works)
        own = returned if returned is not None else own
        accumulators = next_accumulators if next_accumulators is not None else _zeros(k, v)
        block = incoming
    dk, dv = own if own is not None else _zeros(k, v)
    captured = [_summed(g, ring).to(t.dtype) for g, t in zip(grads.captured, learned, strict=True)]
    return grads.dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), captured


def _backward_pair(ring: Ring, qs: Segment, ks: Segment, q: torch.Tensor, held: Pair, out: torch.Tensor,
                   lse: torch.Tensor, dout: torch.Tensor, dlse: torch.Tensor | None, learned: Sequence[torch.Tensor],
                   grads: Gradients, accumulators: Pair) -> None:
    """Gradients of one (query segment, key segment) part: the backward kernels run on the part's queries and
    keys against the merged output and lse, which makes their softmax the merged one restricted to the part's
    keys, so what they return is exactly this part's share (no forward is recomputed). The captured slots'
    gradients flow on to the captured tensors they are computed from (derived values) through autograd."""
    rows, cols = _span(qs), _span(ks)
    attn = ring.variant.at(qs.start, ks.start)
    with torch.enable_grad():
        bindings = attn._bind({})  # derived slots keep their graph back to the learned tensors
    wanted = [t.requires_grad and t.is_floating_point() for t in bindings.tensors]
    options = CallOptions(ring.scale, ring.enable_gqa, ring.backend)
    dq, dk, dv, captured = attn.attend_backward(
        q[:, :, rows], held[0][:, :, cols], held[1][:, :, cols], out[:, :, rows], lse[:, :, rows],
        dout[:, :, rows], None if dlse is None else dlse[:, :, rows], bindings, None, options, wanted)
    acc = grads.dq.dtype
    grads.dq[:, :, rows] += dq.to(acc)
    accumulators[0][:, :, cols] += dk.to(acc)
    accumulators[1][:, :, cols] += dv.to(acc)
    slots = [slot for slot in sorted(captured) if bindings.tensors[slot].requires_grad]
    if slots and learned:
        found = torch.autograd.grad([bindings.tensors[s] for s in slots], list(learned),
                                    [captured[s].to(bindings.tensors[s].dtype) for s in slots], allow_unused=True)
        for total, g in zip(grads.captured, found, strict=True):
            if g is not None:
                total += g.to(total.dtype)


def pass_gradients(ring: Ring, step: int, accumulators: Pair | None,
                   like: Pair) -> tuple[list[Any], Pair | None, Pair | None]:
    """After this step's work: the held block's accumulators go to the next rank (if the block goes on) or
    back to its owner (if this was its last user); receive the previous rank's, and this rank's own block's
    final gradients when they come back in this step."""
    ops: list[Any] = []
    y = ring.block_at(step)
    if accumulators is not None:
        if ring.plan.forwarded(y, step):
            ops += [dist.P2POp(dist.isend, t, ring.peer(ring.rank + 1), ring.group) for t in accumulators]
        elif y != ring.rank and step == ring.plan.last_step(y):
            ops += [dist.P2POp(dist.isend, t, ring.peer(y), ring.group) for t in accumulators]
    incoming = None
    if step + 1 < ring.world_size and ring.plan.forwarded(ring.block_at(step, ring.rank - 1), step):
        incoming = _zeros(*like)
        ops += [dist.P2POp(dist.irecv, t, ring.peer(ring.rank - 1), ring.group) for t in incoming]
    returned = None
    last = ring.plan.last_step(ring.rank)
    if step == last and last > 0:
        returned = _zeros(*like)
        ops += [dist.P2POp(dist.irecv, t, ring.peer(ring.plan.holder(ring.rank, last)), ring.group) for t in returned]
    return (dist.batch_isend_irecv(ops) if ops else []), incoming, returned


# -- checks and helpers ----------------------------------------------------------------------------------------


def _checked_length(q: Any, k: Any, v: Any, group: Any, layout: str, world_size: int, rank: int,
                    variant: GlobalPositions, options: tuple[Any, ...]) -> int:
    """The global sequence length, after one collective that compares every rank's call: a problem on any
    rank is raised on every rank (never a hang in the ring), naming the rank and what differs."""
    problem, S = None, 0
    try:
        S = _local_check(q, k, v, layout, world_size)
    except ValueError as error:
        problem = str(error)
    digest = hashlib.sha256(repr(variant.attention.program).encode()).hexdigest()[:16]
    summary = (problem, tuple(map(_describe, (q, k, v))), layout, digest, repr(options))
    if world_size == 1:
        summaries = [summary]
    else:
        summaries = [None] * world_size
        dist.all_gather_object(summaries, summary, group=group)
    for r, other in enumerate(summaries):
        if other[0] is not None:
            raise ValueError(f"attnc.distributed: rank {r}: {other[0]}")
    names = ("shard shapes and dtypes", "layout", "variant (mask_mod / score_mod)", "scale, enable_gqa, backend")
    for r, other in enumerate(summaries):
        for name, mine, theirs in zip(names, summaries[0][1:], other[1:], strict=True):
            if mine != theirs:
                raise ValueError(f"attnc.distributed: ranks disagree on the {name}: rank 0 has {mine}, rank {r} has "
                                 f"{theirs}; every rank must call with the same variant and shard shapes")
    return S


def _local_check(q: Any, k: Any, v: Any, layout: str, world_size: int) -> int:
    for name, t in (("query", q), ("key", k), ("value", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{name} must be a 4-D shard [B, H, S_local, D], got {_describe(t)}")
    if not q.shape[-2] == k.shape[-2] == v.shape[-2]:
        raise ValueError(f"query, key and value shards must hold the same positions (S_local), got "
                         f"{q.shape[-2]}, {k.shape[-2]}, {v.shape[-2]}")
    check_layout(layout, max(1, 2 * world_size), world_size)
    return global_length(layout, q.shape[-2], world_size)


def _describe(t: Any) -> Any:
    return (tuple(t.shape), str(t.dtype)) if isinstance(t, torch.Tensor) else type(t).__name__


def _span(segment: Segment) -> slice:
    return slice(segment.offset, segment.offset + segment.length)


def _zeros(k: torch.Tensor, v: torch.Tensor) -> Pair:
    acc = compute_dtype(k.dtype)
    return (torch.zeros(k.shape, dtype=acc, device=k.device), torch.zeros(v.shape, dtype=acc, device=v.device))


def _wait(works: list[Any]) -> None:
    for work in works:
        work.wait()


def _summed(gradient: torch.Tensor, ring: Ring) -> torch.Tensor:
    if ring.world_size > 1 and ring.sum_captured:
        dist.all_reduce(gradient, group=ring.group)
    return gradient
