"""The public face: `attnc.compile` (native) and `attnc.flex_attention` (FlexAttention-compatible).

`Attention` here is the compiled variant of `attnc.attention` (tracing, kernels, block maps, launches, tuning)
with the paths built on it: packed sequences and KV caches (`attnc.serving`), context parallelism
(`attnc.distributed`) and the static performance reports (`attnc.perf`).
"""

from __future__ import annotations

import collections
import os
from typing import Any

import torch
from torch.nn.attention.flex_attention import AuxOutput, AuxRequest  # noqa: F401  (AuxRequest: re-exported by attnc)

from attnc import attention
from attnc.arguments import shared_kv_batch  # (public here too)
from attnc.attention import (  # noqa: F401  (public here, as before the split)
    _WARNED,
    BACKENDS,
    BUILDERS,
    PLAN_BLOCK,
    CallOptions,
    MaskMod,
    ScoreMod,
    choose_backend,
    evaluate_mask,
)
from attnc.distributed import ring
from attnc.dsl.text import TextVariant, text_variant
from attnc.perf.inspection import inspect_attention, kernel_resources
from attnc.perf.launches import Shape
from attnc.runtime import graph_ops, launch, launch_backward
from attnc.runtime.autograd import needs_grad
from attnc.runtime.block_mask import BlockMask
from attnc.runtime.cache import kernel_cache  # noqa: F401  (public here)
from attnc.runtime.config import KernelConfig
from attnc.serving import kvcache, varlen
from attnc.serving.nested import nested_attention


class Attention(attention.Attention):
    """A compiled attention variant (`attnc.attention.Attention`), with the paths built on it."""

    def distributed(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *, group: Any = None,
                    layout: str = "zigzag", scale: float | None = None, return_lse: bool = False,
                    enable_gqa: bool = False, backend: str = "auto", captured_grads: str = "sum") -> Any:
        """Context-parallel attention of this variant: this rank's shards `[B, H, S_local, D]` of a sequence
        split across the ranks of `group` in `layout`; the mods see global positions (see
        `attnc.distributed.attention`)."""
        if self.text is not None:
            raise ValueError("attnc: context parallelism runs variants written as Python mods; a text variant binds "
                             "its values by name and has no Python mods to move to global positions")
        return ring.attention(query, key, value, group=group, layout=layout, mask_mod=self.mask_mod,
                         score_mod=self.score_mod, scale=scale, return_lse=return_lse, enable_gqa=enable_gqa,
                         backend=backend, captured_grads=captured_grads)

    def varlen(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
               cu_seqlens_k: torch.Tensor, **options: Any) -> Any:
        """This variant over packed variable-length sequences (see `attnc.varlen_attention`)."""
        if self.text is not None:
            raise ValueError("attnc: the packed path runs variants written as Python mods; a text variant binds its "
                             "values by name and has no Python mods to see per-sequence positions through")
        return varlen.varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, mask_mod=self.mask_mod,
                                score_mod=self.score_mod, **options)

    def kvcache(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, cache_seqlens: torch.Tensor,
                **options: Any) -> Any:
        """This variant over a KV cache, contiguous or paged (see `attnc.kvcache_attention`)."""
        if self.text is not None:
            raise ValueError("attnc: the KV-cache path runs variants written as Python mods; a text variant binds "
                             "its values by name and has no Python mods to see cache positions through")
        return kvcache.kvcache_attention(q, k_cache, v_cache, cache_seqlens, mask_mod=self.mask_mod,
                                 score_mod=self.score_mod, **options)

    def resources(self, arch: str = "sm_90", dtype: torch.dtype = torch.bfloat16, head_dim: int = 128,
                  head_dim_v: int | None = None, *, backward: bool = False, config: KernelConfig | None = None,
                  backward_configs: launch_backward.BackwardConfigs | None = None,
                  python: str | None = None) -> dict[str, dict[str, Any]]:
        """Compile the kernels a call launches for `arch` ahead of time (no GPU needed), specialised on the
        arguments of a launch at the benchmark's shape (B=2, H=16, S=4096) as Triton's JIT would; return
        registers, spills and shared memory for the closed-form loops ("forward"), the BlockMask loop
        ("forward_block_mask") and, for a masked variant, the block-map builder ("block_map", blocks of
        128 x 128); with `backward=True` also the backward kernels ("backward_dkdv", "backward_dq" and their
        "_block_mask" loops). `config` / `backward_configs`: the configs to compile (default: what a launch
        on `arch` uses untuned, `tuning.spill_free_default`); `python`: an interpreter with another Triton
        to compile with."""
        return kernel_resources(self, arch=arch, shape=Shape(head_dim=head_dim, head_dim_v=head_dim_v, dtype=dtype),
                                backward=backward, config=config, backward_configs=backward_configs, python=python)

    def inspect(self, arch: str = "sm_90", dtype: torch.dtype = torch.bfloat16, head_dim: int = 128,
                head_dim_v: int | None = None, *, shape: tuple[int, int, int] = (2, 16, 4096), backward: bool = False,
                config: KernelConfig | None = None, backward_configs: launch_backward.BackwardConfigs | None = None,
                python: str | None = None, **values: Any) -> Any:
        """The static performance report (`attnc.perf`): the kernels a call launches at `shape` = (B, H, S)
        compiled for `arch` (no GPU needed) and disassembled, each loop against the yardstick, a plain dense
        FlashAttention-2 compiled in the same run. `values`: a text variant's tensors and parameters by name."""
        return inspect_attention(self, arch=arch, shape=Shape(*shape, head_dim, head_dim_v, dtype), backward=backward,
                                 config=config, backward_configs=backward_configs, values=values or None,
                                 python=python)


_COMPILED: collections.OrderedDict[tuple[Any, Any], Attention] = collections.OrderedDict()
_COMPILED_LIMIT = 256


def compile(mask_mod: MaskMod | str | os.PathLike | TextVariant | None = None, score_mod: ScoreMod | None = None,
            **values: Any) -> Attention:
    """Compile a variant once; call the result like `attn(query, key, value)` many times.

    `attnc.compile(text)` takes the text syntax instead: a string with a `mask:` / `score:` statement (or
    several lines), a path to a `.attn` file, or an `attnc.parse` result. Its tensors and parameter values
    are bound by name, here as defaults (`values`) and in each call."""
    if isinstance(mask_mod, str | os.PathLike | TextVariant):
        if score_mod is not None:
            raise TypeError("attnc.compile: a variant in the text syntax has its score in the text; pass no score_mod")
        return Attention(text=text_variant(mask_mod), defaults=values)
    if values:
        raise ValueError(f"attnc.compile: unexpected keyword arguments {sorted(values)}: binding tensors and "
                         "parameters by name is for variants in the text syntax; Python mods capture their own")
    return Attention(mask_mod, score_mod)


def _compiled(mask_mod: MaskMod | None, score_mod: ScoreMod | None) -> Attention:
    """The Attention of these mods, made once (a bounded cache: flex_attention is called per layer and step)."""
    key = (mask_mod, score_mod)
    found = _COMPILED.get(key)
    if found is None:
        found = _COMPILED[key] = Attention(mask_mod, score_mod)
        if len(_COMPILED) > _COMPILED_LIMIT:
            _COMPILED.popitem(last=False)
    _COMPILED.move_to_end(key)
    return found


def flex_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, score_mod: ScoreMod | None = None,
                   block_mask: Any = None, scale: float | None = None, enable_gqa: bool = False,
                   return_lse: bool = False, kernel_options: dict[str, Any] | None = None, *,
                   return_aux: Any = None, mask_mod: MaskMod | None = None, backend: str = "auto",
                   deterministic: bool = False) -> Any:
    """FlexAttention-compatible entry point: the kernel visits only the blocks `block_mask` lists and
    evaluates its `mask_mod` only on partial blocks. `return_aux=AuxRequest(lse=..., max_scores=...)` returns
    `(out, AuxOutput)` as torch does: the lse and each row's largest logit (after the score mod; -inf for a
    row without keys)."""
    if return_aux is not None and return_lse:
        raise ValueError("attnc: give return_lse or return_aux, not both (return_aux=AuxRequest(lse=True) "
                         "replaces return_lse)")
    if mask_mod is None and block_mask is not None:
        mask_mod = block_mask.mask_mod
    if getattr(query, "is_nested", False):
        return _nested(query, key, value, score_mod, block_mask, scale, return_lse, return_aux, mask_mod, backend)
    want_lse = return_lse or return_aux is not None
    if torch.compiler.is_compiling():  # torch.compile / torch.export: the kernels as custom ops
        if return_aux is not None and return_aux.max_scores:
            raise ValueError("attnc: under torch.compile, return_aux gives the lse only (max_scores is computed "
                             "outside compiled code)")
        options = CallOptions(scale, enable_gqa, backend, kernel_options, deterministic)
        out, lse = graph_ops.attend_mods(_compiled, mask_mod, score_mod, query, key, value, block_mask, options)
        if return_aux is not None:
            return out, AuxOutput(lse=lse if return_aux.lse else None)
        return (out, lse) if want_lse else out
    attn = _compiled(mask_mod, score_mod)
    if block_mask is None and kernel_options is None and _decodes(attn, query, key, value, enable_gqa, backend):
        out, lse = attn.decode(query, *shared_kv_batch(query, key, value), scale)
        result: Any = (out, lse) if want_lse else out
    else:
        result = attn(query, key, value, scale, want_lse, block_mask=block_mask, enable_gqa=enable_gqa,
                      backend=backend, kernel_options=kernel_options, deterministic=deterministic)
    if return_aux is None:
        return result
    out, lse = result
    max_scores = attn.max_scores(query, key, lse, scale, block_mask=block_mask) if return_aux.max_scores else None
    return out, AuxOutput(lse=lse if return_aux.lse else None, max_scores=max_scores)


# Queries this short run split-KV decoding (attnc.runtime.decode), as torch's flex_attention takes its decoding path.
DECODE_MAX_Q_LEN = 16


def _decodes(attn: Attention, query: Any, key: Any, value: Any, enable_gqa: bool, backend: str) -> bool:
    """Whether a flex_attention call without a BlockMask runs the split-KV decode kernels: a short query on the
    generated kernels, without gradients, with inputs the ordinary path accepts (its errors stay its own)."""
    if not all(isinstance(t, torch.Tensor) and t.dim() == 4 for t in (query, key, value)):
        return False
    if query.shape[2] > DECODE_MAX_Q_LEN or query.dtype not in launch.KERNEL_DTYPES:
        return False
    if query.shape[1] != key.shape[1] and not enable_gqa:
        return False
    if attention.choose_backend(backend, query) != "triton":
        return False
    return not needs_grad(query, key, value, *attn.bind_mods(attn.mask_mod, attn.score_mod).tensors)


def _nested(query: Any, key: Any, value: Any, score_mod: ScoreMod | None, block_mask: Any, scale: float | None,
            return_lse: bool, return_aux: Any, mask_mod: MaskMod | None, backend: str) -> Any:
    """Jagged nested inputs run on the packed path (see attnc.serving.nested)."""
    if block_mask is not None or return_aux is not None:
        raise ValueError("attnc: with nested (jagged) inputs, give the mask as mask_mod (attnc finds the blocks "
                         "each sequence needs) and ask for the lse with return_lse")
    return nested_attention(query, key, value, mask_mod=mask_mod, score_mod=score_mod, scale=scale,
                            return_lse=return_lse, backend=backend)


def create_block_mask(mask_mod: MaskMod, B: int | None, H: int | None, Q_LEN: int, KV_LEN: int,
                      device: Any = None, BLOCK_SIZE: int | tuple[int, int] = 128) -> BlockMask:
    """A BlockMask (FlexAttention layout) for `mask_mod`. Classified from the mask's structure (and
    per-block ranges of the tensors it reads) without evaluating it pair by pair, unless it reads a tensor
    through an index argument that depends on both q and kv (`t[q - kv]`); then evaluated by the generated
    builder kernel on a GPU (pair by pair only in the blocks its structure leaves open) and densely, in
    chunks, on the CPU."""
    return _compiled(mask_mod, None).block_mask(B, H, Q_LEN, KV_LEN, device, BLOCK_SIZE)
