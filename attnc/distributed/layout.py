"""How a sequence is split across the ranks of a group: which global positions each rank holds.

A rank's shard is a concatenation of *segments*; a segment is an arithmetic run of positions
`start, start + stride, ...` (`length` of them). Three layouts:

- `"contiguous"`: rank r holds positions [r L, (r + 1) L), L = S / W. Simple, but under a causal mask the
  last rank has W times the first rank's work.
- `"zigzag"`: the sequence is cut into 2W chunks of C = S / (2W); rank r holds chunks r and 2W - 1 - r, one
  early and one late, so causal work is balanced (Llama 3's context parallelism, Striped/zig-zag ring attention).
- `"striped"`: token i lives on rank i mod W (one segment of stride W); causal work is balanced to within a
  diagonal.

`shard` and `unshard` move a full sequence to this rank's part and back (the inverse needs one all-gather).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.distributed as dist

LAYOUTS = ("contiguous", "zigzag", "striped")


@dataclasses.dataclass(frozen=True)
class Segment:
    """Global positions `start + stride * i` for i in [0, length); `offset`: where the segment begins in
    the rank's local shard."""

    start: int
    length: int
    stride: int
    offset: int

    def positions(self) -> range:
        return range(self.start, self.start + self.stride * self.length, self.stride)


def check_layout(layout: str, S: int, world_size: int) -> None:
    """The layout exists and the world size divides the sequence as it needs; a ValueError names both."""
    if layout not in LAYOUTS:
        raise ValueError(f"attnc.distributed: unknown layout {layout!r}; choose one of {LAYOUTS}")
    if world_size < 1:
        raise ValueError(f"attnc.distributed: world size must be at least 1, got {world_size}")
    parts = 2 * world_size if layout == "zigzag" else world_size
    if S % parts or S == 0:
        need = "2 x world size" if layout == "zigzag" else "the world size"
        raise ValueError(f"attnc.distributed: layout {layout!r} needs a sequence length that is a multiple of "
                         f"{need} ({parts}), got S={S} for world size {world_size}")


def segments(layout: str, S: int, world_size: int, rank: int) -> tuple[Segment, ...]:
    """The segments rank `rank` holds, in the order they are concatenated in its shard."""
    check_layout(layout, S, world_size)
    if layout == "contiguous":
        length = S // world_size
        return (Segment(rank * length, length, 1, 0),)
    if layout == "striped":
        return (Segment(rank, S // world_size, world_size, 0),)
    chunk = S // (2 * world_size)
    return (Segment(rank * chunk, chunk, 1, 0), Segment((2 * world_size - 1 - rank) * chunk, chunk, 1, chunk))


def local_length(layout: str, S: int, world_size: int) -> int:
    check_layout(layout, S, world_size)
    return S // world_size


def global_length(layout: str, local: int, world_size: int) -> int:
    """The full sequence length behind shards of `local` positions; a ValueError where the layout cannot
    split any sequence that way (zig-zag needs an even shard: two equal chunks)."""
    if layout == "zigzag" and local % 2:
        raise ValueError(f"attnc.distributed: a zig-zag shard holds two equal chunks, so its length must be even; "
                         f"got {local}")
    S = local * world_size
    check_layout(layout, S, world_size)
    return S


def shard_positions(layout: str, S: int, world_size: int, rank: int) -> torch.Tensor:
    """int64 global position of every local index of rank `rank`."""
    return torch.cat([torch.arange(seg.start, seg.start + seg.stride * seg.length, seg.stride, dtype=torch.int64)
                      for seg in segments(layout, S, world_size, rank)])


def group_size_and_rank(group: Any) -> tuple[int, int]:
    """(world size, rank) in `group`; (1, 0) without an initialised process group."""
    if not dist.is_available() or not dist.is_initialized():
        if group is not None:
            raise ValueError("attnc.distributed: a group was given but torch.distributed is not initialised")
        return 1, 0
    return dist.get_world_size(group), dist.get_rank(group)


def shard(x: torch.Tensor, *, group: Any = None, layout: str = "zigzag", dim: int = -2) -> torch.Tensor:
    """This rank's part of the full sequence `x` (along `dim`) under `layout`; a contiguous copy."""
    world_size, rank = group_size_and_rank(group)
    S = x.shape[dim]
    index = shard_positions(layout, S, world_size, rank).to(x.device)
    return x.index_select(dim, index).contiguous()


def unshard(x: torch.Tensor, *, group: Any = None, layout: str = "zigzag", dim: int = -2) -> torch.Tensor:
    """The full sequence from every rank's shard `x` (one all-gather; every rank gets the whole)."""
    world_size, _ = group_size_and_rank(group)
    if world_size == 1:
        return x
    local = x.shape[dim]
    S = global_length(layout, local, world_size)
    parts = [torch.empty_like(x) for _ in range(world_size)]
    dist.all_gather(parts, x.contiguous(), group=group)
    full_shape = list(x.shape)
    full_shape[dim] = S
    out = x.new_empty(full_shape)
    for r, part in enumerate(parts):
        out.index_copy_(dim, shard_positions(layout, S, world_size, r).to(x.device), part)
    return out
