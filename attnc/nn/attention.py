"""`attnc.nn.Attention`: multi-head self-attention as a `torch.nn` module, over a compiled attnc variant.

    x [B, L, E] -> q, k, v projections -> (RMSNorm of q and k per head) -> (RoPE) -> attnc attention -> output
    projection -> [B, L, E]

The variant is compiled once, when the module is built; the module is a thin layer over `attnc.compile`
(and over `attnc.kvcache_attention` when decoding with a `KVCache`). What the module adds:

- the variant from names, library mods and spec objects, composed: masks with `&`, score mods in order;
- position biases that own their tensors (`ALiBi`, `RelativeBias`, `T5Bias`) as submodules, so `state_dict`,
  `.to()` and optimisers see them, and attnc computes their gradients;
- grouped-query attention (`num_kv_heads`), RoPE, QK-norm, projection biases.

Not here: dropout of attention probabilities. attnc's kernels have none, so `dropout > 0` is refused instead of
being silently applied somewhere else; see docs/nn.md for what to do instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from attnc import variants
from attnc.api import BACKENDS
from attnc.api import Attention as CompiledAttention
from attnc.api import compile as compile_variant
from attnc.nn.kv_cache import KVCache
from attnc.nn.position_bias import BIAS_SPECS, ALiBi, BiasSpec, PositionBias, RelativeBias, T5Bias
from attnc.nn.rope import RotaryEmbedding
from attnc.variants import MaskMod, ScoreMod

VariantPart = str | MaskMod | ScoreMod | BiasSpec
# Variants a name alone describes. A mask name is kept as given and made a mod when compiling (names and
# specs pickle, closures do not); a bias name stands for its spec with the default options.
NAMED_MASKS: dict[str, Callable[[], MaskMod]] = {"causal": variants.causal}
NAMED_BIASES: dict[str, Callable[[], BiasSpec]] = {"alibi": ALiBi, "relative_bias": RelativeBias, "t5": T5Bias}
NAMED_VARIANTS = (*NAMED_MASKS, *NAMED_BIASES)
QK_NORM_EPS = 1e-6  # as Qwen3 uses for its per-head q/k RMSNorm
# What the module builds from its arguments, derived state that copies and pickles rebuild (see __getstate__)
_DERIVED = ("mask_mod", "score_mod", "attention")


class Attention(nn.Module):
    """Multi-head self-attention with an attnc variant; `x [B, L, embed_dim]` (batch first) in and out.

    `num_kv_heads` (default `num_heads`) < `num_heads` is grouped-query attention: query head h reads
    key/value head `h // (num_heads // num_kv_heads)`, and mods see the query head.

    `variant`: a part or a sequence of parts, composed with `mask_mod` and `score_mod` (masks are and-ed;
    score mods apply in the order given, `score_mod` last). A part is a name (`"causal"`, `"alibi"`,
    `"relative_bias"`, `"t5"`), a library mod (`attnc.variants.sliding_window(256)`), or a bias spec whose
    tensors the module owns (`attnc.nn.ALiBi(learnable=True)`, `RelativeBias(max_distance)`, `T5Bias(...)`),
    registered as the submodule `alibi`, `relative_bias` or `t5_bias`.

    `rope`: None or False (none), True (RoPE over the whole head, base 10000), a number (its base), or an
    `attnc.nn.RotaryEmbedding`. `qk_norm`: RMSNorm over each head's features of q and k, before RoPE.
    `bias`: biases on the four projections. `scale`: the logit scale (default 1 / sqrt(head_dim)).
    `backend`: as for `attnc.compile`'s calls ("auto", "triton", "reference")."""

    def __init__(self, embed_dim: int, num_heads: int, num_kv_heads: int | None = None, *,
                 variant: VariantPart | Sequence[VariantPart] | None = None, mask_mod: Callable | None = None,
                 score_mod: Callable | None = None, bias: bool = False, qk_norm: bool = False,
                 rope: bool | float | RotaryEmbedding | None = None, dropout: float = 0.0,
                 scale: float | None = None, backend: str = "auto") -> None:
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        _check_heads(embed_dim, num_heads, num_kv_heads)
        _check_options(bias=bias, qk_norm=qk_norm, dropout=dropout, scale=scale, backend=backend)
        self.embed_dim, self.num_heads, self.num_kv_heads = embed_dim, num_heads, num_kv_heads
        self.head_dim = embed_dim // num_heads
        self.scale, self.backend = (None if scale is None else float(scale)), backend
        self.q_proj = nn.Linear(embed_dim, num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(embed_dim, num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(embed_dim, num_kv_heads * self.head_dim, bias=bias)
        self.out_proj = nn.Linear(num_heads * self.head_dim, embed_dim, bias=bias)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=QK_NORM_EPS) if qk_norm else None
        self.k_norm = nn.RMSNorm(self.head_dim, eps=QK_NORM_EPS) if qk_norm else None
        self.rope = _rotary(rope, self.head_dim)
        self.variant_parts = _variant_parts(variant)
        self.user_mask_mod = _checked_mod("mask_mod", mask_mod)
        self.user_score_mod = _checked_mod("score_mod", score_mod)
        for spec in self.variant_parts:
            if isinstance(spec, BIAS_SPECS):
                self._add_bias(spec, num_heads)
        self._compile()

    def _add_bias(self, spec: BiasSpec, num_heads: int) -> None:
        if hasattr(self, spec.attribute):
            raise ValueError(f"attnc.nn.Attention: variant lists {spec.attribute} twice; give each bias once")
        self.add_module(spec.attribute, spec.build(num_heads))

    def _compile(self) -> None:
        """The variant's mods (reading this module's bias tensors) and the compiled attention."""
        masks: list[Any] = [_mask_part(p) for p in self.variant_parts if isinstance(p, str | MaskMod)]
        scores: list[Any] = [self._score_part(p) for p in self.variant_parts if not isinstance(p, str | MaskMod)]
        masks += [self.user_mask_mod] if self.user_mask_mod is not None else []
        scores += [self.user_score_mod] if self.user_score_mod is not None else []
        self.mask_mod: MaskMod | None = _all_of(masks)
        self.score_mod: ScoreMod | None = _chained(scores)
        self.attention: CompiledAttention = compile_variant(self.mask_mod, self.score_mod)

    def _score_part(self, part: ScoreMod | BiasSpec) -> ScoreMod:
        if isinstance(part, ScoreMod):
            return part
        bias: PositionBias = getattr(self, part.attribute)
        return bias.score_mod()

    # nn.Module is copied (copy.deepcopy: nn.TransformerEncoder's layer clones) and pickled through its
    # __dict__. The mods close over the bias submodules, so a copy must make mods over *its* submodules, not
    # share the original's; and closures do not pickle. Both drop the derived state and build it again.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in _DERIVED:
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._compile()

    def extra_repr(self) -> str:
        shown = [f"embed_dim={self.embed_dim}", f"num_heads={self.num_heads}"]
        if self.num_kv_heads != self.num_heads:
            shown.append(f"num_kv_heads={self.num_kv_heads}")
        shown += [f"mask_mod={self.mask_mod!r}"] if self.mask_mod is not None else []
        shown += [f"score_mod={self.score_mod!r}"] if self.score_mod is not None else []
        return ", ".join(shown)

    def new_kv_cache(self, batch_size: int, max_seq_len: int, *, dtype: torch.dtype | None = None,
                     device: Any = None) -> KVCache:
        """An empty `KVCache` for this layer (default dtype and device: the projections')."""
        weight = self.k_proj.weight
        dtype, device = (weight.dtype if dtype is None else dtype), (weight.device if device is None else device)
        return KVCache(batch_size, max_seq_len, self.num_kv_heads, self.head_dim, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor, *, block_mask: Any = None, kv_cache: KVCache | None = None) -> torch.Tensor:
        """Self-attention of `x [B, L, embed_dim]`. `block_mask`: an `attnc.create_block_mask` result for this
        variant at these lengths (built once, shared by the layers). `kv_cache`: append this call's keys and
        values to the cache and attend over everything cached; the tokens of `x` are the newest of each
        sequence (RoPE and the mods see positions continuing from the cache's lengths)."""
        self._check_input(x, block_mask, kv_cache)
        L = x.shape[1]
        q = self.q_proj(x).unflatten(-1, (self.num_heads, self.head_dim))
        k = self.k_proj(x).unflatten(-1, (self.num_kv_heads, self.head_dim))
        v = self.v_proj(x).unflatten(-1, (self.num_kv_heads, self.head_dim))
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None:
            positions = torch.arange(L, device=x.device) if kv_cache is None else kv_cache.positions(L)
            q, k = self.rope(q, positions), self.rope(k, positions)
        if kv_cache is None:
            attended = self.attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), self.scale,
                                      block_mask=block_mask, backend=self.backend).transpose(1, 2)
        else:
            kv_cache.append(k, v)
            attended = self.attention.kvcache(q, kv_cache.keys, kv_cache.values, kv_cache.lengths, scale=self.scale,
                                              backend=self.backend)
        return self.out_proj(attended.flatten(2))

    def _check_input(self, x: Any, block_mask: Any, kv_cache: Any) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != self.embed_dim:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"attnc.nn.Attention: x must be [B, L, embed_dim={self.embed_dim}] (batch first), "
                             f"got {got}")
        if kv_cache is None:
            return
        if not isinstance(kv_cache, KVCache):
            raise TypeError(f"attnc.nn.Attention: kv_cache must be an attnc.nn.KVCache (see new_kv_cache), got "
                            f"{type(kv_cache).__name__}")
        if block_mask is not None:
            raise ValueError("attnc.nn.Attention: give block_mask or kv_cache, not both: with a cache attnc finds "
                             "the keys each new token may attend to from the mask itself")
        kv_cache.check_layer(x.shape[0], self.num_kv_heads, self.head_dim, x.device)


def _check_heads(embed_dim: Any, num_heads: Any, num_kv_heads: Any) -> None:
    for name, value in (("embed_dim", embed_dim), ("num_heads", num_heads), ("num_kv_heads", num_kv_heads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"attnc.nn.Attention: {name} must be a positive int, got {value!r}")
    if embed_dim % num_heads:
        raise ValueError(f"attnc.nn.Attention: embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
    if num_heads % num_kv_heads:
        raise ValueError(f"attnc.nn.Attention: num_heads ({num_heads}) must be a multiple of num_kv_heads "
                         f"({num_kv_heads})")


def _check_options(*, bias: Any, qk_norm: Any, dropout: Any, scale: Any, backend: Any) -> None:
    for name, value in (("bias", bias), ("qk_norm", qk_norm)):
        if not isinstance(value, bool):
            raise TypeError(f"attnc.nn.Attention: {name} must be True or False, got {value!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"attnc.nn.Attention: dropout must be a number in [0, 1), got {dropout!r}")
    if dropout > 0.0:
        raise ValueError(f"attnc.nn.Attention: dropout={dropout}: attnc's kernels do not drop attention "
                         "probabilities, and dropping something else under that name would change what the "
                         "argument means; pass dropout=0.0 and put an nn.Dropout on the module's output (residual "
                         "dropout) if you want one")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, int | float) or not scale > 0):
        raise ValueError(f"attnc.nn.Attention: scale must be a positive number or None, got {scale!r}")
    if backend not in BACKENDS:
        raise ValueError(f"attnc.nn.Attention: backend must be one of {BACKENDS}, got {backend!r}")


def _rotary(rope: Any, head_dim: int) -> RotaryEmbedding | None:
    if rope is None or rope is False:
        return None
    if rope is True:
        return RotaryEmbedding(head_dim)
    if isinstance(rope, int | float):
        return RotaryEmbedding(head_dim, base=rope)
    if isinstance(rope, RotaryEmbedding):
        if rope.dim > head_dim:
            raise ValueError(f"attnc.nn.Attention: rope rotates {rope.dim} features but a head has {head_dim}")
        return rope
    raise TypeError(f"attnc.nn.Attention: rope must be None, True, a base (number) or an attnc.nn.RotaryEmbedding, "
                    f"got {type(rope).__name__}")


def _variant_parts(variant: Any) -> tuple[str | MaskMod | ScoreMod | BiasSpec, ...]:
    if variant is None:
        return ()
    single = isinstance(variant, (str, *BIAS_SPECS)) or callable(variant)  # a mod is also a callable
    parts = [variant] if single else variant
    if not isinstance(parts, Sequence):
        raise TypeError(f"attnc.nn.Attention: variant must be a name, a library mod, a bias spec or a sequence of "
                        f"them, got {type(variant).__name__}")
    return tuple(_variant_part(p) for p in parts)


def _variant_part(part: Any) -> str | MaskMod | ScoreMod | BiasSpec:
    if isinstance(part, (MaskMod, ScoreMod, *BIAS_SPECS)):
        return part
    if isinstance(part, str):
        if part in NAMED_MASKS:
            return part
        if part in NAMED_BIASES:
            return NAMED_BIASES[part]()
        if part in variants.FAMILIES:
            raise ValueError(f"attnc.nn.Attention: variant {part!r} needs arguments: pass attnc.variants.{part}(...) "
                             f"as the variant; by name: {sorted(NAMED_VARIANTS)}")
        raise ValueError(f"attnc.nn.Attention: unknown variant {part!r}; by name: {sorted(NAMED_VARIANTS)}, or any "
                         "attnc.variants factory's result")
    if callable(part):
        raise TypeError(f"attnc.nn.Attention: variant got the plain function {getattr(part, '__name__', part)!r}, "
                        "which may be a mask or a score mod: pass it as mask_mod= or score_mod=")
    raise TypeError(f"attnc.nn.Attention: a variant part must be a name, a library mod or a bias spec, got "
                    f"{type(part).__name__}")


def _mask_part(part: str | MaskMod) -> MaskMod:
    return NAMED_MASKS[part]() if isinstance(part, str) else part


def _checked_mod(name: str, mod: Any) -> Any:
    if mod is not None and not callable(mod):
        raise TypeError(f"attnc.nn.Attention: {name} must be a function, got {type(mod).__name__}")
    if isinstance(mod, ScoreMod if name == "mask_mod" else MaskMod):  # a library mod in the other's place
        raise TypeError(f"attnc.nn.Attention: {name} got the {type(mod).__name__} {mod.name}")
    return mod


def _all_of(masks: list[Any]) -> MaskMod | None:
    if not masks:
        return None
    combined = MaskMod.wrap(masks[0])
    for mask in masks[1:]:
        combined = combined & mask
    return combined


def _chained(scores: list[Any]) -> ScoreMod | None:
    if not scores:
        return None
    combined = ScoreMod.wrap(scores[0])
    for score in scores[1:]:
        combined = combined.then(score)
    return combined
