"""The key-side view of a mask: which query tiles a key tile attends to.

Kernels that own key rows (the dK/dV backward) loop over query tiles. Their closed-form ranges come from
the same analysis as the forward's key ranges, applied to the mask with q and kv exchanged: the key
ranges of the swapped mask over a "query" tile are the query ranges of the original mask over that key
tile. The tile test needs no swap: it is a statement about a box, whichever side loops.
"""

from __future__ import annotations

from collections.abc import Mapping

from attnc.ir.node import Node, node, var
from attnc.ir.tiles import kv_full_range, kv_ranges

Range = tuple[Node | None, Node | None]

_SWAP_INDICES = {var("q"): var("kv"), var("kv"): var("q")}
# Range bounds are written over the looping program's tile: rename it back after the swap.
_SWAP_TILES = {var("q_lo"): var("kv_lo"), var("q_hi"): var("kv_hi"), var("kv_lo"): var("q_lo"),
               var("kv_hi"): var("q_hi")}


def substitute(root: Node, mapping: Mapping[Node, Node]) -> Node:
    """`root` with every occurrence of a key of `mapping` replaced by its value (all at once)."""
    done: dict[Node, Node] = {}
    for n in root.walk():
        if n in mapping:
            done[n] = mapping[n]
        elif not n.src:
            done[n] = n
        else:
            done[n] = node(n.op, n.dtype, *(done[s] for s in n.src), arg=n.arg)
    return done[root]


def q_ranges(mask: Node) -> list[Range]:
    """Inclusive int32 query bounds for a key tile [kv_lo, kv_hi]: every query that may attend to a key of
    the tile lies in one of the ranges (None: unbounded on that side); no ranges when the mask is False."""
    swapped = substitute(mask, _SWAP_INDICES)
    return [(_renamed(lo), _renamed(hi)) for lo, hi in kv_ranges(swapped)]


def _renamed(bound: Node | None) -> Node | None:
    return None if bound is None else substitute(bound, _SWAP_TILES)


def q_full_range(mask: Node) -> Range | None:
    """Inclusive int32 query bounds for a key tile [kv_lo, kv_hi] inside which every pair of the tile is
    allowed (`attnc.ir.tiles.kv_full_range` of the swapped mask); None where none are known."""
    full = kv_full_range(substitute(mask, _SWAP_INDICES))
    return None if full is None else (_renamed(full[0]), _renamed(full[1]))
