"""BigBird block-sparse attention: global blocks, a sliding window of blocks, and random blocks.

Origin: Zaheer et al. 2020, "Big Bird: Transformers for Longer Sequences" (the ITC form: existing tokens
made global). Attention is decided per block of `block` tokens; with qb = q_idx // block and
kb = kv_idx // block:

    bigbird(block, random, G, W):  qb < G  |  kb < G  |  |qb - kb| <= W  |  random[h, qb, kb]

The first G blocks attend to and are attended by everything; each block sees W blocks on either side;
`random` (bool [H, nQ, nKV], e.g. from `random_blocks`) adds each head's random blocks.
"""

from __future__ import annotations

from typing import Any

import torch

from attnc.variants.base import MaskMod

TEXT = """\
# BigBird: blocks of 64, 1 global block, 1 block on each side, random blocks from a table
param block: int = 64
param global_blocks: int = 1
param window_blocks: int = 1
tensor random: bool[H, NQ, NKV]
mask: (q // block < global_blocks) | (kv // block < global_blocks)""" \
    """ | (abs(q // block - kv // block) <= window_blocks) | random[h, q // block, kv // block]
"""


def bigbird(block: int, random: torch.Tensor, global_blocks: int = 1, window_blocks: int = 1) -> MaskMod:
    """BigBird over blocks of `block` tokens; `random` is bool [H, ceil(Q_LEN / block), ceil(KV_LEN / block)]."""
    if random.ndim != 3 or random.dtype != torch.bool:
        raise ValueError(f"bigbird: random is a bool tensor of shape [H, nQ, nKV], got {random.dtype} of shape "
                         f"{list(random.shape)}")

    def bigbird_mask(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        qb, kb = q_idx // block, kv_idx // block
        structured = (qb < global_blocks) | (kb < global_blocks) | (torch.abs(qb - kb) <= window_blocks)
        return structured | random[h, qb, kb]

    options = {k: v for k, v, default in (("global_blocks", global_blocks, 1), ("window_blocks", window_blocks, 1))
               if v != default}
    return MaskMod.named("bigbird", bigbird_mask, block, random, **options)


def random_blocks(num_heads: int, q_blocks: int, kv_blocks: int, per_row: int, *,
                  generator: torch.Generator | None = None, device: Any = None) -> torch.Tensor:
    """bool [num_heads, q_blocks, kv_blocks] with `per_row` distinct key blocks drawn uniformly per row."""
    if not 0 <= per_row <= kv_blocks:
        raise ValueError(f"random_blocks: per_row must be in [0, {kv_blocks}], got {per_row}")
    order = torch.rand(num_heads, q_blocks, kv_blocks, generator=generator).argsort(-1)
    chosen = torch.zeros(num_heads, q_blocks, kv_blocks, dtype=torch.bool)
    chosen.scatter_(-1, order[..., :per_row], True)
    return chosen.to(device)
