"""Attention of new query tokens over a KV cache, contiguous or paged (FlashAttention's `flash_attn_with_kvcache`
layout), for every variant.

The Sq query rows are the last Sq positions of each sequence: a wrapper makes the mods see
`q_idx = cache_seqlens[b] - Sq + i` and `kv_idx` = the absolute position, and allows only `kv_idx <
cache_seqlens[b]`. `cache_seqlens` is a captured tensor read at `b`, a value constant over a tile, so the
tile analysis keeps its closed forms: a causal mask visits the keys up to the query's position, a sliding
window only the window's tiles, and no tile past a sequence's length is read.

Decoding runs split-KV with GQA packing (`attnc.runtime.decode`; see `kvcache_attention`); its kernel reads a
paged cache (`[num_pages, page_size, Hkv, D]` with `block_table [B, max_pages]`) through the table, pages in any
order and shared between sequences. The ordinary forward (longer queries, gradients, torch.compile) runs on a
contiguous copy gathered page by page.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import torch

from attnc.attention import Attention, choose_backend
from attnc.runtime import graph_ops
from attnc.runtime.autograd import needs_grad
from attnc.runtime.decode import KeyLayout


@dataclasses.dataclass
class CachePositions:
    """What a call installs: each sequence's valid length and how many new tokens end it. The wrapped mods
    read them as attributes, so every call's values are runtime data (graph inputs under torch.compile)."""

    lengths: torch.Tensor
    new_tokens: int


class CacheVariant:
    """`mask_mod` / `score_mod` at the positions of the last Sq tokens of each cached sequence."""

    def __init__(self, mask_mod: Callable | None, score_mod: Callable | None) -> None:
        self.positions = CachePositions(torch.zeros(0, dtype=torch.int32), 1)
        self.mask_mod, self.score_mod = _at_cache_positions(mask_mod, score_mod, self.positions)
        self.attention: Attention = Attention(self.mask_mod, self.score_mod)

    def lengths(self, cache_seqlens: torch.Tensor, Sq: int) -> None:
        self.positions.lengths, self.positions.new_tokens = cache_seqlens, Sq


def _at_cache_positions(mask_mod: Callable | None, score_mod: Callable | None,
                        at: CachePositions) -> tuple[Callable, Callable | None]:
    def mask(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        valid = kv_idx < at.lengths[b]
        if mask_mod is None:
            return valid
        return valid & mask_mod(b, h, q_idx + (at.lengths[b] - at.new_tokens), kv_idx)

    def score(s: Any, b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        return score_mod(s, b, h, q_idx + (at.lengths[b] - at.new_tokens), kv_idx)

    return mask, (score if score_mod is not None else None)


def cache_variant(mask_mod: Callable | None, score_mod: Callable | None) -> Any:
    """The wrapped variant of these mods, made once (a plain function: torch.compile calls it while building
    its graph, `graph_ops.made_once`)."""
    return _cache_variant(mask_mod, score_mod)


@functools.lru_cache(maxsize=32)
def _cache_variant(mask_mod: Callable | None, score_mod: Callable | None) -> CacheVariant:
    return CacheVariant(mask_mod, score_mod)


def kvcache_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, cache_seqlens: torch.Tensor, *,
                      block_table: torch.Tensor | None = None, mask_mod: Callable | None = None,
                      score_mod: Callable | None = None, scale: float | None = None, return_lse: bool = False,
                      num_splits: int = 0, backend: str = "auto") -> Any:
    """Attention of `q [B, Sq, Hq, D]` (the last Sq positions of each sequence) over a KV cache: contiguous
    `k_cache, v_cache [B, S_max, Hkv, D]`, or paged `[num_pages, page_size, Hkv, D]` with `block_table
    [B, max_pages]` int32 (page_size a multiple of 16). `cache_seqlens [B]` int32: each sequence's valid
    length, the new tokens included. Mods see `q_idx = cache_seqlens[b] - Sq + i` and absolute `kv_idx`.
    Returns `[B, Sq, Hq, Dv]` (and the lse `[B, Hq, Sq]`, float32, or float64 for float64 inputs).
    A sequence of length 0 gives 0 and -inf.
    Decoding (Sq <= 16, or any Sq with `num_splits` > 0) on the generated kernels runs split-KV (flash-decoding,
    `attnc.runtime.decode`): one program per (batch, kv head, split) whose rows are all the query heads of the GQA
    group times the Sq rows, so each cache element is read once per kv head; only the key tiles the mask keeps
    are read (a sliding window or a document mask over a long cache reads only its tiles); the splits merge
    exactly through their lse. `num_splits`: 0 chooses the split count from the SM count and the most key tiles
    a (sequence, kv head) reads; n > 0 forces n splits (1: one GQA-packed pass). Where that path does not run
    (the reference backend, gradients, torch.compile) the ordinary forward runs and `num_splits` only has to be
    valid: the results are the same either way."""
    if isinstance(num_splits, bool) or not isinstance(num_splits, int) or num_splits < 0:
        raise ValueError(f"attnc.kvcache_attention: num_splits must be an int >= 0 (0: automatic), got {num_splits!r}")
    _check_query(q, k_cache, v_cache)
    _check_cache(k_cache, block_table, cache_seqlens, q)
    variant = graph_ops.made_once(cache_variant, mask_mod, score_mod)
    variant.lengths(cache_seqlens, q.shape[1])
    q4 = q.transpose(1, 2)
    if _decodes(variant, q4, k_cache, v_cache, num_splits, backend):
        # pages are read through the table inside the kernel, and no key past a sequence's length is loaded
        layout = KeyLayout(cache_seqlens, block_table)
        out, lse = variant.attention.decode(q4, k_cache.transpose(1, 2), v_cache.transpose(1, 2), scale,
                                            num_splits=num_splits, layout=layout)
    else:
        k, v = (k_cache, v_cache) if block_table is None else _gathered(k_cache, v_cache, block_table, cache_seqlens)
        out, lse = variant.attention(q4, k.transpose(1, 2), v.transpose(1, 2), scale, True, enable_gqa=True,
                                     backend=backend)
    out = out.transpose(1, 2)
    return (out, lse) if return_lse else out


# Up to this many new tokens per sequence, the automatic choice decodes (as torch's flex_attention does).
DECODE_MAX_QUERIES = 16


def _decodes(variant: CacheVariant, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_splits: int,
             backend: str) -> bool:
    """Whether this call runs the split-KV decode kernels: on the generated kernels, outside torch.compile,
    without gradients, for a few new tokens (or any number with `num_splits` forced)."""
    if torch.compiler.is_compiling() or choose_backend(backend, q) != "triton":
        return False
    if num_splits == 0 and q.shape[2] > DECODE_MAX_QUERIES:
        return False
    bindings = variant.attention.bind_mods(variant.mask_mod, variant.score_mod)
    return not needs_grad(q, k, v, *bindings.tensors)


def _check_query(q: Any, k_cache: Any, v_cache: Any) -> None:
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"attnc.kvcache_attention: {name} must be 4-D, got {got}")
        if t.device != q.device:
            raise ValueError(f"attnc.kvcache_attention: {name} is on {t.device} but q is on {q.device}")
    if k_cache.shape[:3] != v_cache.shape[:3]:
        raise ValueError(f"attnc.kvcache_attention: k_cache {tuple(k_cache.shape)} and v_cache "
                         f"{tuple(v_cache.shape)} must agree but for the head dim")


def _check_cache(k_cache: torch.Tensor, block_table: torch.Tensor | None, cache_seqlens: torch.Tensor,
                 q: torch.Tensor) -> None:
    """The lengths fit the cache; a paged cache's table is int32 [B, max_pages] and lists pages of the pool."""
    B = q.shape[0]
    if block_table is None:
        _check_lengths(cache_seqlens, B, k_cache.shape[1], q)
        if k_cache.shape[0] != B:
            raise ValueError(f"attnc.kvcache_attention: k_cache holds {k_cache.shape[0]} sequences but q has {B}")
        return
    num_pages, page_size = k_cache.shape[:2]
    if page_size % 16:
        raise ValueError(f"attnc.kvcache_attention: page_size must be a multiple of 16, got {page_size}")
    if (not isinstance(block_table, torch.Tensor) or block_table.dtype != torch.int32 or block_table.dim() != 2
            or block_table.shape[0] != B or block_table.device != q.device):
        got = (f"{block_table.dtype} {tuple(block_table.shape)} on {block_table.device}"
               if isinstance(block_table, torch.Tensor) else type(block_table).__name__)
        raise ValueError(f"attnc.kvcache_attention: block_table must be int32 [B={B}, max_pages] on {q.device}, "
                         f"got {got}")
    _check_lengths(cache_seqlens, B, block_table.shape[1] * page_size, q)
    used = _pages_used(block_table, cache_seqlens, page_size)
    graph_ops.require(~(((block_table < 0) | (block_table >= num_pages)) & used).any(),
                      f"attnc.kvcache_attention: block_table lists a page outside the pool [0, {num_pages}) "
                      "among the pages cache_seqlens uses")


def _pages_used(block_table: torch.Tensor, cache_seqlens: torch.Tensor, page_size: int) -> torch.Tensor:
    pages_used = (cache_seqlens.long() + page_size - 1) // page_size
    return torch.arange(block_table.shape[1], device=block_table.device) < pages_used[:, None]


def _gathered(k_cache: torch.Tensor, v_cache: torch.Tensor, block_table: torch.Tensor,
              cache_seqlens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Contiguous `[B, S, Hkv, D]` copies of paged caches, page by page (for the ordinary forward)."""
    used = _pages_used(block_table, cache_seqlens, k_cache.shape[1])
    pages = torch.where(used, block_table, 0).long()  # unused entries may hold anything: never read
    gathered = [cache[pages].flatten(1, 2) for cache in (k_cache, v_cache)]
    return gathered[0], gathered[1]


def _check_lengths(cache_seqlens: Any, B: int, capacity: int, q: torch.Tensor) -> None:
    if (not isinstance(cache_seqlens, torch.Tensor) or cache_seqlens.dtype != torch.int32
            or tuple(cache_seqlens.shape) != (B,) or cache_seqlens.device != q.device):
        got = (f"{cache_seqlens.dtype} {tuple(cache_seqlens.shape)} on {cache_seqlens.device}"
               if isinstance(cache_seqlens, torch.Tensor) else type(cache_seqlens).__name__)
        raise ValueError(f"attnc.kvcache_attention: cache_seqlens must be int32 [B={B}] on {q.device}, got {got}")
    if B:
        graph_ops.require((cache_seqlens.min() >= 0) & (cache_seqlens.max() <= capacity),
                          f"attnc.kvcache_attention: cache_seqlens must lie in [0, {capacity}] (the cache's capacity)",
                          lambda: f"{int(cache_seqlens.min())} ... {int(cache_seqlens.max())}")
