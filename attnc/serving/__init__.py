"""Serving paths on the same planner and launcher: packed variable-length sequences, attention over a KV cache
(contiguous or paged), and the merge of attentions over disjoint key sets.

Entry points: `varlen_attention` (also `Attention.varlen`), `kvcache_attention` (also `Attention.kvcache`),
`merge_attention`.
"""

from attnc.runtime.merge import merge_attention
from attnc.serving.kvcache import kvcache_attention
from attnc.serving.varlen import varlen_attention

__all__ = ["kvcache_attention", "merge_attention", "varlen_attention"]
