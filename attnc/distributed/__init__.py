"""Context parallelism on torch.distributed: any variant, its sequence split across the ranks of a group.

Each rank holds a shard of the sequence (`shard` / `unshard`, layouts "contiguous", "zigzag", "striped")
and calls `attention(q, k, v, mask_mod=..., score_mod=...)` on its shards; the mods see global positions,
so every variant (data-dependent ones included) means what it means on one device. K/V blocks travel
around a ring of point-to-point transfers that overlap the computation; the mask's structure decides
which blocks a rank computes and how far each block travels (`plan` shows it). Partial results merge
through their lse. Forward and backward; NCCL on GPUs, gloo on CPUs.

Entry points: `shard`, `unshard`, `attention` (also `Attention.distributed`), `plan`.
"""

from attnc.distributed.layout import LAYOUTS, shard, unshard
from attnc.distributed.planning import ContextPlan, RankLoad, plan
from attnc.distributed.ring import attention

__all__ = ["LAYOUTS", "ContextPlan", "RankLoad", "attention", "plan", "shard", "unshard"]
