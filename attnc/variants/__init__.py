"""The variant library: one family per module, each a factory returning named, composable mods.

    from attnc import variants as V
    attn = attnc.compile(V.causal() & V.sliding_window(256), V.alibi(8).then(V.softcap(50.0)))

Mask factories return a `MaskMod` (combine with `&`, `|`, `~`), score factories a `ScoreMod` (chain with
`.then`); both are plain callables wherever attnc takes a mod. `FAMILIES` maps each factory's name to it.
Every family module has a docstring with its origin and formula and, where the text syntax can say it, a
`TEXT` constant with the same variant written in that syntax.
"""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType
from typing import Any

from attnc.variants.alibi import alibi, alibi_slopes
from attnc.variants.base import MaskMod, ScoreMod
from attnc.variants.bigbird import bigbird, random_blocks
from attnc.variants.block_causal import block_causal
from attnc.variants.causal import causal, causal_bottom_right
from attnc.variants.chunked import chunked_causal
from attnc.variants.combinators import and_masks, noop_mask, or_masks
from attnc.variants.dilated import dilated_window
from attnc.variants.document import document, document_from_lengths, document_ids
from attnc.variants.gemma2 import LayerMods, gemma2
from attnc.variants.moba import moba, select_blocks
from attnc.variants.natten import natten
from attnc.variants.padding import key_padding
from attnc.variants.prefix_lm import prefix_lm
from attnc.variants.relative_bias import relative_bias
from attnc.variants.sinks import sink_window
from attnc.variants.sliding_window import sliding_window
from attnc.variants.softcap import softcap
from attnc.variants.sparse_transformer import fixed, strided
from attnc.variants.swin import swin
from attnc.variants.t5 import t5_bias, t5_bias_lookup, t5_bucket_table
from attnc.variants.tree import ancestor_matrix, tree

_FACTORIES: tuple[Callable[..., Any], ...] = (
    alibi, bigbird, block_causal, causal, causal_bottom_right, chunked_causal, dilated_window, document,
    document_from_lengths, fixed, gemma2, key_padding, moba, natten, prefix_lm, relative_bias, sink_window,
    sliding_window, softcap, strided, swin, t5_bias, t5_bias_lookup, tree,
)

FAMILIES: MappingProxyType[str, Callable[..., Any]] = MappingProxyType({f.__name__: f for f in _FACTORIES})
"""Factory name -> factory, for tools that list or build variants by name (read-only)."""

__all__ = [
    "FAMILIES", "LayerMods", "MaskMod", "ScoreMod", "alibi", "alibi_slopes", "ancestor_matrix", "and_masks",
    "bigbird", "block_causal", "causal", "causal_bottom_right", "chunked_causal", "dilated_window", "document",
    "document_from_lengths", "document_ids", "fixed", "gemma2", "key_padding", "moba", "natten", "noop_mask",
    "or_masks", "prefix_lm", "random_blocks", "relative_bias", "select_blocks", "sink_window", "sliding_window",
    "softcap", "strided", "swin", "t5_bias", "t5_bias_lookup", "t5_bucket_table", "tree",
]
