"""Hugging Face transformers: attnc kernels behind `attn_implementation="attnc"`.

    import attnc.integrations.transformers as attnc_hf
    attnc_hf.register()
    model = AutoModelForCausalLM.from_config(config, attn_implementation="attnc")

`register()` adds an attention function to transformers' attention interface and, where the release has one
(`transformers.masking_utils.AttentionMaskInterface`), a mask function to its mask interface. The mask function
turns what the model's config asks for (causal, sliding window, chunks, padding from `attention_mask`, packed
sequences found from `position_ids`) into a `TransformersMask` (see `transformers_masks`); the attention function
maps that mask, the layer's `softcap` and `scaling`, and GQA onto one compiled attnc variant. Variants are cached
per mask structure and soft-capping; offsets, windows, the cap, padding and document ids are runtime values of
the variant, so a new batch (or a new layer of the same kind) neither retraces nor recompiles.

Only transformers is imported here lazily (in `register`): the module itself needs nothing but torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from attnc.api import Attention
from attnc.integrations.transformers_masks import (
    MaskStructure,
    MaskValues,
    TransformersMask,
    from_flags,
    from_tensor,
    transformers_mask,
)

__all__ = ["BACKENDS", "TransformersAttention", "TransformersMask", "register"]

BACKENDS = ("auto", "triton", "reference")


def _mods(structure: MaskStructure, capped: bool) -> tuple[Callable | None, Callable | None, Callable]:
    """The mask and score mod of one variant, and `bind(values, cap)` that sets their runtime values.

    The mods read their runtime values from closure variables of this function, which attnc re-reads at every
    call (a captured Python number is a runtime parameter, a captured tensor a runtime argument); `bind`
    assigns them. The structure's flags are plain booleans, so the traced mods keep only the clauses in use."""
    s = structure
    q_offset = kv_offset = 0
    window = chunk = 1
    cap = 1.0
    chunk_start = starts = ends = padding = documents = dense = bias = None

    def mask_mod(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        q, kv = q_idx + q_offset, kv_idx + kv_offset  # positions in the sequence, as transformers' mask functions
        allowed = q_idx == q_idx  # everything, folded away by attnc
        if s.causal:
            allowed = allowed & (kv <= q)
        if s.window:
            allowed = allowed & (kv > q - window)
        if s.bidirectional_window:
            allowed = allowed & (q - kv <= window) & (kv - q <= window)
        if s.chunked:
            allowed = allowed & ((kv - chunk_start[b]) // chunk == (q - chunk_start[b]) // chunk)
        if s.padding == "range":
            allowed = allowed & (kv_idx >= starts[b]) & (kv_idx < ends[b])
        if s.padding == "table":
            allowed = allowed & padding[b, kv_idx]
        if s.documents:
            allowed = allowed & (documents[b, q_idx] == documents[b, kv_idx])
        if s.dense is not None:
            allowed = allowed & dense[b, h, q_idx, kv_idx]
        return allowed

    def score_mod(score: Any, b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        if capped:
            score = cap * torch.tanh(score / cap)  # Gemma 2: after scaling, before the mask's bias
        if s.dense == "bias":
            score = score + bias[b, h, q_idx, kv_idx]
        return score

    def bind(values: MaskValues, new_cap: float | None) -> None:
        nonlocal q_offset, kv_offset, window, chunk, cap, chunk_start, starts, ends, padding, documents, dense, bias
        q_offset, kv_offset, window, chunk = values.q_offset, values.kv_offset, values.window, values.chunk
        chunk_start, starts, ends, padding = values.chunk_start, values.starts, values.ends, values.padding
        documents, dense, bias = values.documents, values.dense, values.bias
        cap = float(new_cap) if new_cap is not None else 1.0

    keeps_score = capped or s.dense == "bias"
    return (None if s.allows_everything else mask_mod), (score_mod if keeps_score else None), bind


class _Variant:
    """One compiled variant: its mods, traced on first use, and their runtime values."""

    def __init__(self, structure: MaskStructure, capped: bool) -> None:
        self._mask_mod, self._score_mod, self._bind = _mods(structure, capped)
        self._attention: Attention | None = None

    def __call__(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, values: MaskValues,
                 cap: float | None, scale: float | None, backend: str, kernel_options: dict | None) -> torch.Tensor:
        self._bind(values, cap)
        if self._attention is None:  # traced once its closure holds real values
            self._attention = Attention(self._mask_mod, self._score_mod)
        return self._attention(query, key, value, scale=scale, backend=backend, kernel_options=kernel_options)


class TransformersAttention:
    """The attention implementation `register` installs: call it as transformers calls attention functions;
    `mask` is its mask function. Holds the compiled variants, one per (mask structure, soft-capped)."""

    def __init__(self, backend: str = "auto") -> None:
        if backend not in BACKENDS:
            raise ValueError(f"attnc: backend must be one of {BACKENDS}, got {backend!r}")
        self.backend = backend
        self._variants: dict[tuple[MaskStructure, bool], _Variant] = {}

    mask = staticmethod(transformers_mask)

    def __call__(self, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 attention_mask: Any, scaling: float | None = None, dropout: float = 0.0,
                 softcap: float | None = None, sliding_window: int | None = None, is_causal: bool | None = None,
                 **kwargs: Any) -> tuple[torch.Tensor, None]:
        """Attention over query [B, Hq, Q, D] and key / value [B, Hkv, KV, D]; returns ([B, Q, Hq, Dv], None)."""
        _refuse_unsupported(dropout, softcap, kwargs)
        mask = _mask_of(attention_mask, module, query, key, is_causal, sliding_window)
        variant = self.variant(mask.structure, softcap is not None)
        out = variant(query, key, value, mask.values, softcap, scaling, self.backend, kwargs.get("kernel_options"))
        return out.transpose(1, 2).contiguous(), None

    def variant(self, structure: MaskStructure, capped: bool) -> _Variant:
        found = self._variants.get((structure, capped))
        if found is None:
            found = self._variants[(structure, capped)] = _Variant(structure, capped)
        return found


def _refuse_unsupported(dropout: float, softcap: float | None, kwargs: dict[str, Any]) -> None:
    if dropout:
        raise ValueError(f"attnc: dropout={dropout} is not supported (attnc attention has no dropout); call "
                         "model.eval() or set the config's attention dropout to 0 for training")
    if softcap is not None and not softcap > 0:
        raise ValueError(f"attnc: softcap must be positive, got {softcap}")
    for name in ("s_aux", "position_bias"):
        if kwargs.get(name) is not None:
            raise ValueError(f"attnc: the {name} argument of transformers' attention functions is not supported "
                             f"yet; use attn_implementation='eager' or 'sdpa' for this model")


def _mask_of(attention_mask: Any, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
             is_causal: bool | None, sliding_window: int | None) -> TransformersMask:
    if isinstance(attention_mask, TransformersMask):
        attention_mask.check_fits(query, key)
        return attention_mask
    if isinstance(attention_mask, torch.Tensor):
        return from_tensor(attention_mask, query, key)
    if attention_mask is None:
        causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
        return from_flags(bool(causal), sliding_window, query, key)
    raise TypeError(f"attnc: attention_mask must be the mask attnc's mask function made, a 4-D tensor or None, "
                    f"got {type(attention_mask).__name__}; was the model's mask made for another implementation?")


def register(name: str = "attnc", *, backend: str = "auto") -> TransformersAttention:
    """Register attnc with transformers under `name`, so `from_pretrained(..., attn_implementation=name)` and
    `from_config(..., attn_implementation=name)` run attnc kernels. `backend` is passed to every call ("auto":
    Triton on a GPU; "triton"; "reference", the IR interpreter). Registering a name again replaces it."""
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"attnc: name must be a non-empty string without '/' (transformers reads a '/' as a "
                         f"Hub kernel), got {name!r}")
    try:
        import transformers
    except ImportError as missing:
        raise ImportError("attnc.integrations.transformers needs transformers: pip install 'attnc[hf]'") from missing
    implementation = TransformersAttention(backend)
    _register_attention(transformers, name, implementation)
    _register_mask(name, implementation.mask)
    return implementation


def _register_attention(transformers: Any, name: str, function: Callable) -> None:
    interface = getattr(transformers, "AttentionInterface", None)
    if interface is not None:
        interface.register(name, function)
        return
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS  # releases before the interface: a dict

    ALL_ATTENTION_FUNCTIONS[name] = function


def _register_mask(name: str, function: Callable) -> None:
    try:
        from transformers.masking_utils import AttentionMaskInterface
    except ImportError:
        return  # releases before the mask interface build their 4-D masks themselves: read as tensors
    AttentionMaskInterface.register(name, function)
