"""NATTEN's functional API on attnc: `na1d`, `na2d` and `na3d` with NATTEN's arguments and tensor layout.

Tensors are heads-last, as in NATTEN: `query [B, *spatial, Hq, D]`, `key [B, *spatial, Hkv, D]`, `value
[B, *spatial, Hkv, Dv]`, with 1, 2 or 3 spatial (token layout) dims. The token layout is flattened
row-major and viewed as attnc's `[B, H, L, D]` without a copy; the neighborhood is the mask of
`attnc.variants.natten` (per-dim kernel size, stride, dilation and causality, windows clamped at the
borders), whose tile ranges the kernel computes in closed form: no mask tensor, and only the tiles a
window touches are visited. One compiled `attnc.Attention` serves each neighborhood and token layout, so
repeated calls never trace again.

`additional_keys` / `additional_values` (`[B, S, Hkv, D]` and `[B, S, Hkv, Dv]`) are extra context every
query also attends to, as in NATTEN's neighborhood cross-attention: a second, unmasked attention over
them is merged with the neighborhood's through the log-sum-exp (`attnc.merge_attention`).

NATTEN's options for its own kernels (tile shapes, schedules, `torch_compile`, `attention_kwargs`) have no
counterpart here: their defaults are accepted, anything else is refused by name. See docs/natten.md.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
from collections.abc import Mapping
from typing import Any

import torch

from attnc.api import BACKENDS, Attention
from attnc.api import compile as compile_attention
from attnc.runtime.merge import merge_attention
from attnc.variants.natten import natten as neighborhood_mask

# NATTEN's kernel-tuning arguments and their NATTEN defaults: a default asks for nothing, so it is accepted.
NATTEN_TUNING_DEFAULTS: Mapping[str, Any] = {
    "attention_kwargs": None, "q_tile_shape": None, "kv_tile_shape": None, "backward_q_tile_shape": None,
    "backward_kv_tile_shape": None, "backward_kv_splits": None, "backward_use_pt_reduction": False,
    "run_persistent_kernel": True, "kernel_schedule": None, "torch_compile": False,
}
NATTEN_BACKENDS = ("cutlass-fna", "hopper-fna", "blackwell-fna", "flex-fna")
_LAYOUT_NAMES = {1: "L", 2: "X, Y", 3: "X, Y, Z"}


@dataclasses.dataclass(frozen=True)
class Neighborhood:
    """One neighborhood attention problem's mask, canonical (a value per spatial dim): the cache key of its
    compiled attention."""

    canvas: tuple[int, ...]
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    is_causal: tuple[bool, ...]


def na1d(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kernel_size: Any, stride: Any = 1,
         dilation: Any = 1, is_causal: Any = False, scale: float | None = None,
         additional_keys: torch.Tensor | None = None, additional_values: torch.Tensor | None = None, *,
         return_lse: bool = False, backend: str | None = "auto", kernel_options: dict[str, Any] | None = None,
         **natten_options: Any) -> Any:
    """1-D neighborhood attention: `query [B, L, Hq, D]`, `key [B, L, Hkv, D]`, `value [B, L, Hkv, Dv]`
    -> `[B, L, Hq, Dv]` (and the lse `[B, L, Hq]` with `return_lse=True`). See the module docstring."""
    return neighborhood_attention("na1d", 1, query, key, value, kernel_size, stride, dilation, is_causal, scale,
                                  additional_keys, additional_values, return_lse, backend, kernel_options,
                                  natten_options)


def na2d(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kernel_size: Any, stride: Any = 1,
         dilation: Any = 1, is_causal: Any = False, scale: float | None = None,
         additional_keys: torch.Tensor | None = None, additional_values: torch.Tensor | None = None, *,
         return_lse: bool = False, backend: str | None = "auto", kernel_options: dict[str, Any] | None = None,
         **natten_options: Any) -> Any:
    """2-D neighborhood attention: `query [B, X, Y, Hq, D]`, `key [B, X, Y, Hkv, D]`, `value [B, X, Y, Hkv,
    Dv]` -> `[B, X, Y, Hq, Dv]` (and the lse `[B, X, Y, Hq]` with `return_lse=True`)."""
    return neighborhood_attention("na2d", 2, query, key, value, kernel_size, stride, dilation, is_causal, scale,
                                  additional_keys, additional_values, return_lse, backend, kernel_options,
                                  natten_options)


def na3d(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kernel_size: Any, stride: Any = 1,
         dilation: Any = 1, is_causal: Any = False, scale: float | None = None,
         additional_keys: torch.Tensor | None = None, additional_values: torch.Tensor | None = None, *,
         return_lse: bool = False, backend: str | None = "auto", kernel_options: dict[str, Any] | None = None,
         **natten_options: Any) -> Any:
    """3-D neighborhood attention: `query [B, X, Y, Z, Hq, D]`, `key [B, X, Y, Z, Hkv, D]`, `value [B, X, Y,
    Z, Hkv, Dv]` -> `[B, X, Y, Z, Hq, Dv]` (and the lse `[B, X, Y, Z, Hq]` with `return_lse=True`)."""
    return neighborhood_attention("na3d", 3, query, key, value, kernel_size, stride, dilation, is_causal, scale,
                                  additional_keys, additional_values, return_lse, backend, kernel_options,
                                  natten_options)


def neighborhood_attention(op: str, dims: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           kernel_size: Any, stride: Any, dilation: Any, is_causal: Any, scale: float | None,
                           additional_keys: torch.Tensor | None, additional_values: torch.Tensor | None,
                           return_lse: bool, backend: str | None, kernel_options: dict[str, Any] | None,
                           natten_options: Mapping[str, Any]) -> Any:
    """What na1d / na2d / na3d do, for `dims` spatial dims; `op` names the caller in errors."""
    _check_natten_options(op, natten_options)
    backend = _check_backend(op, backend)
    canvas = _check_tensors(op, dims, query, key, value)
    hood = _neighborhood(op, canvas, kernel_size, stride, dilation, is_causal)
    _check_additional(op, query, key, value, additional_keys, additional_values)
    call = {"backend": backend, "kernel_options": kernel_options}
    out, lse = compiled_neighborhood(hood)(_as_sequence(query), _as_sequence(key), _as_sequence(value), scale,
                                           True, **call)
    if additional_keys is not None and additional_values is not None:
        extra_out, extra_lse = _full_attention()(_as_sequence(query), additional_keys.transpose(1, 2),
                                                 additional_values.transpose(1, 2), scale, True, **call)
        out, lse = merge_attention(out, lse, extra_out, extra_lse)
    out = _as_layout(out, canvas).contiguous()
    return (out, _as_layout(lse, canvas)) if return_lse else out


@functools.lru_cache(maxsize=256)
def compiled_neighborhood(hood: Neighborhood) -> Attention:
    """The compiled attention of one neighborhood on one token layout, built once: later calls with the same
    arguments reuse its trace and kernels."""
    mask = neighborhood_mask(hood.canvas, hood.kernel_size, dilation=hood.dilation, stride=hood.stride,
                             causal=hood.is_causal)
    return compile_attention(mask_mod=mask)


@functools.cache
def _full_attention() -> Attention:
    return compile_attention()


def _as_sequence(t: torch.Tensor) -> torch.Tensor:
    """`[B, *spatial, H, D]` -> attnc's `[B, H, L, D]`, the token layout flattened row-major (a view when the
    input is contiguous; attnc keeps this memory order in its output)."""
    return t.flatten(1, t.dim() - 3).transpose(1, 2)


def _as_layout(t: torch.Tensor, canvas: tuple[int, ...]) -> torch.Tensor:
    """attnc's `[B, H, L, ...]` (output or lse) -> NATTEN's heads-last `[B, *canvas, H, ...]`."""
    return t.transpose(1, 2).unflatten(1, canvas)


# -- argument checks ---------------------------------------------------------------------------------------


def _check_natten_options(op: str, options: Mapping[str, Any]) -> None:
    for name, given in options.items():
        if name not in NATTEN_TUNING_DEFAULTS:
            raise TypeError(f"attnc: {op}() got an unexpected keyword argument {name!r}")
        if _asks_nothing(given, NATTEN_TUNING_DEFAULTS[name]):
            continue
        if name == "attention_kwargs":
            raise ValueError(f"attnc: {op}: attention_kwargs={given!r} is not supported: the attention over "
                             "additional_keys runs with this call's backend and kernel_options")
        raise ValueError(f"attnc: {op}: {name}={given!r} tunes NATTEN's own kernels and has no counterpart in "
                         "attnc, which picks its tiles itself; drop it (attnc's tiles are set with "
                         "kernel_options={'BLOCK_M': ..., 'BLOCK_N': ...}, or found by Attention.tune)")


def _asks_nothing(given: Any, default: Any) -> bool:
    """NATTEN's default value, or an empty attention_kwargs (compared by type first: a tensor is never one)."""
    if given is default or (isinstance(given, dict) and not given and default is None):
        return True
    return type(given) is type(default) and given == default


def _check_backend(op: str, backend: str | None) -> str:
    if backend is None:  # NATTEN's default: pick the best available
        return "auto"
    if backend in NATTEN_BACKENDS:
        raise ValueError(f"attnc: {op}: backend={backend!r} names one of NATTEN's kernels; attnc's backends are "
                         f"{BACKENDS} ('auto' picks the generated kernel on a GPU)")
    if backend not in BACKENDS:
        raise ValueError(f"attnc: {op}: backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def _layout(dims: int, heads: str = "H", head_dim: str = "D") -> str:
    return f"[B, {_LAYOUT_NAMES[dims]}, {heads}, {head_dim}]"


def _check_tensors(op: str, dims: int, query: Any, key: Any, value: Any) -> tuple[int, ...]:
    """Shapes NATTEN accepts (one token layout for q, k and v; GQA by whole groups); returns the layout."""
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"attnc: {op}: {name} must be a tensor {_layout(dims)}, got {type(t).__name__}")
        if t.dim() != dims + 3:
            other = {4: " (use na1d)", 5: " (use na2d)", 6: " (use na3d)"}.get(t.dim(), "")
            raise ValueError(f"attnc: {op}: {name} must be {dims + 3}-D {_layout(dims)} (heads last, as in "
                             f"NATTEN), got shape {tuple(t.shape)}{other}")
    canvas = tuple(query.shape[1:1 + dims])
    for name, t in (("key", key), ("value", value)):
        if tuple(t.shape[1:1 + dims]) != canvas:
            raise ValueError(f"attnc: {op}: {name}'s token layout {tuple(t.shape[1:1 + dims])} differs from "
                             f"query's {canvas}: neighborhood attention needs the same layout for all three")
        if t.shape[0] != query.shape[0]:
            raise ValueError(f"attnc: {op}: {name} has batch {t.shape[0]}, query has {query.shape[0]}")
    if key.shape[-1] != query.shape[-1]:
        raise ValueError(f"attnc: {op}: key head dim {key.shape[-1]} != query head dim {query.shape[-1]}")
    _check_heads(op, query.shape[-2], {"key": key.shape[-2], "value": value.shape[-2]})
    return canvas


def _check_heads(op: str, query_heads: int, kv_heads: Mapping[str, int]) -> None:
    """Key / value heads agree with each other and divide the query heads (GQA / MQA, as NATTEN allows)."""
    (first, heads), *others = kv_heads.items()
    for name, count in others:
        if count != heads:
            raise ValueError(f"attnc: {op}: {name} has {count} heads, {first} has {heads}; they must match")
    if heads == 0 or query_heads % heads:
        raise ValueError(f"attnc: {op}: query heads ({query_heads}) must be a multiple of {first} heads ({heads}) "
                         "(GQA / MQA)")


def _check_additional(op: str, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      additional_keys: Any, additional_values: Any) -> None:
    if additional_keys is None and additional_values is None:
        return
    if additional_keys is None or additional_values is None:
        raise ValueError(f"attnc: {op}: give additional_keys and additional_values together, or neither")
    for name, t in (("additional_keys", additional_keys), ("additional_values", additional_values)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            shown = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"attnc: {op}: {name} must be a 4-D tensor [B, S, H, D] (heads last), got {shown}")
        if t.shape[0] != query.shape[0]:
            raise ValueError(f"attnc: {op}: {name} has batch {t.shape[0]}, query has {query.shape[0]}")
    if additional_keys.shape[1] != additional_values.shape[1]:
        raise ValueError(f"attnc: {op}: additional_keys has {additional_keys.shape[1]} tokens, additional_values "
                         f"has {additional_values.shape[1]}")
    pairs = (("additional_keys", additional_keys, "key", key), ("additional_values", additional_values, "value", value))
    for name, t, like_name, like in pairs:
        if t.shape[-1] != like.shape[-1]:
            raise ValueError(f"attnc: {op}: {name} has head dim {t.shape[-1]}, {like_name} has {like.shape[-1]}")
    _check_heads(op, query.shape[-2], {"key": key.shape[-2], "additional_keys": additional_keys.shape[-2],
                                       "additional_values": additional_values.shape[-2]})


def _neighborhood(op: str, canvas: tuple[int, ...], kernel_size: Any, stride: Any, dilation: Any,
                  is_causal: Any) -> Neighborhood:
    dims = len(canvas)
    kernel = _per_dim(op, "kernel_size", kernel_size, dims)
    strides = _per_dim(op, "stride", 1 if stride is None else stride, dims)
    dilations = _per_dim(op, "dilation", 1 if dilation is None else dilation, dims)
    causal = _causal_per_dim(op, False if is_causal is None else is_causal, dims)
    for size, k, s, d in zip(canvas, kernel, strides, dilations, strict=True):
        if k > size:
            raise ValueError(f"attnc: {op}: kernel_size {kernel} is larger than the token layout {canvas}")
        if k * d > size:
            raise ValueError(f"attnc: {op}: kernel_size * dilation must not exceed the token layout {canvas} in "
                             f"any dim, got kernel_size={kernel}, dilation={dilations}")
        if s > k:
            raise ValueError(f"attnc: {op}: stride must not exceed kernel_size in any dim, got stride={strides}, "
                             f"kernel_size={kernel}")
    return Neighborhood(canvas, kernel, strides, dilations, causal)


def _per_dim(op: str, name: str, value: Any, dims: int) -> tuple[int, ...]:
    """A positive int, or a tuple / list of one per spatial dim."""
    values = tuple(value) if isinstance(value, tuple | list) else (value,) * dims
    if len(values) != dims or not all(_positive_int(v) for v in values):
        raise ValueError(f"attnc: {op}: {name} must be a positive int or a tuple of {dims} positive ints, "
                         f"got {value!r}")
    return tuple(int(v) for v in values)


def _positive_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def _causal_per_dim(op: str, value: Any, dims: int) -> tuple[bool, ...]:
    values = tuple(value) if isinstance(value, tuple | list) else (value,) * dims
    if len(values) != dims or not all(isinstance(v, bool) for v in values):
        raise ValueError(f"attnc: {op}: is_causal must be a bool or a tuple of {dims} bools, got {value!r}")
    return values
