"""Serving paths on the same planner and launcher: packed variable-length sequences and the merge of
attentions over disjoint key sets.

Entry points: `varlen_attention` (also `Attention.varlen`), `merge_attention`.
"""

from attnc.runtime.merge import merge_attention
from attnc.serving.varlen import varlen_attention

__all__ = ["merge_attention", "varlen_attention"]
