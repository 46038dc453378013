"""Tree attention for speculative decoding: each draft token attends to the context and its ancestors.

Origin: SpecInfer (Miao et al. 2024, "tree-based parallel decoding") and Medusa (Cai et al. 2024):
a tree of candidate continuations is verified in one forward pass, each candidate seeing only the
path from the root to itself.

The tree has n nodes, node i having parent `parents[i]` (an earlier node, or -1 for a root).
The queries are the n nodes; the keys are `prefix` context tokens followed by the n nodes:

    ancestors[i, j] = j is i or an ancestor of i                 (bool [n, n], built by the factory)
    tree(parents, prefix):  kv_idx < prefix  |  ancestors[q_idx, kv_idx - prefix]     (for kv_idx < prefix + n)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from attnc.variants.base import MaskMod

TEXT = """\
# draft tree of 8 nodes after 100 context tokens; ancestors from ancestor_matrix(parents)
param prefix: int = 100
param nodes: int = 8
tensor ancestors: bool[N, N]
mask: (kv < prefix) | ((kv - prefix < nodes) & ancestors[clamp(q, 0, nodes - 1), clamp(kv - prefix, 0, nodes - 1)])
"""


def ancestor_matrix(parents: Sequence[int] | torch.Tensor, device: Any = None) -> torch.Tensor:
    """bool [n, n]: entry [i, j] is true when node j is node i or one of its ancestors."""
    links = [int(p) for p in parents]
    ancestors = torch.eye(len(links), dtype=torch.bool)
    for node, parent in enumerate(links):
        if not -1 <= parent < node:
            raise ValueError(f"tree: parents[{node}] = {parent}; a parent is an earlier node, or -1 for a root")
        if parent >= 0:
            ancestors[node] |= ancestors[parent]  # parents come first, so their rows are complete
    return ancestors.to(device)


def tree(parents: Sequence[int] | torch.Tensor, prefix: int = 0, device: Any = None) -> MaskMod:
    """Tree mask for nodes with the given parents (-1: root), after `prefix` context keys."""
    ancestors = ancestor_matrix(parents, device)
    nodes = ancestors.shape[0]
    if nodes == 0:
        raise ValueError("tree: the tree has no nodes")

    def tree_mask(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        node = kv_idx - prefix
        # explicit clamps keep the read in range when the mod runs on plain tensors too
        on_path = ancestors[torch.clamp(q_idx, 0, nodes - 1), torch.clamp(node, 0, nodes - 1)]
        return (kv_idx < prefix) | ((node < nodes) & on_path)

    parents_shown = tuple(int(p) for p in parents)
    options = {"prefix": prefix} if prefix else {}
    if device is not None:
        options["device"] = str(torch.device(device))
    return MaskMod.named("tree", tree_mask, parents_shown, **options)
