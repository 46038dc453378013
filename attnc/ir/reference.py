"""Reference attention: the dense definition of what a variant computes.

    scores = (q @ k^T) * scale                    (float32, or float64 for the golden reference)
    logits = score_mod(scores, b, h, q, kv)       (the FlexAttention convention: mods see scaled scores)
    logits[~mask_mod(b, h, q, kv)] = -inf
    out = softmax(logits) @ v,   lse = logsumexp(logits)

A row with no allowed key (or only -inf logits) gives out 0 and lse -inf, and finite gradients.
Query rows are processed in chunks so the score matrix of a long sequence never exists at once.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from attnc.ir.interpret import Env, evaluate, index_grids
from attnc.ir.program import Program

_CHUNK_ELEMENTS = 1 << 26  # scores held at once: 256 MiB in float32


def reference_attention(
    program: Program,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    tensors: Sequence[Tensor] = (),
    params: Sequence[int | float] = (),
    scale: float | None = None,
    float64: bool = False,
) -> tuple[Tensor, Tensor]:
    """`(out [B, Hq, Q, Dv] in query.dtype (float64 with float64=True), lse [B, Hq, Q] float32/64)`.

    query `[B, Hq, Q, D]`, key `[B, Hkv, KV, D]`, value `[B, Hkv, KV, Dv]`; query head h reads kv head
    `h // (Hq // Hkv)`. Differentiable w.r.t. query, key, value and captured float tensors."""
    _check_shapes(query, key, value)
    work = torch.float64 if float64 else torch.float32
    (B, Hq, Q, D), KV = query.shape, key.shape[2]
    group = Hq // key.shape[1]
    k, v = (t.to(work).repeat_interleave(group, dim=1) for t in (key, value))
    env = Env(*index_grids(B, Hq, Q, KV, query.device), tensors=tensors, params=params, float64=float64)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    chunks = [
        _attend(program, query[:, :, rows].to(work), k, v, scale, dataclasses.replace(env, q=env.q[:, :, rows]))
        for rows in _row_chunks(B * Hq * KV, Q)
    ]
    out = torch.cat([o for o, _ in chunks], dim=2)
    lse = torch.cat([lse for _, lse in chunks], dim=2)
    return out.to(work if float64 else query.dtype), lse


def reference_gradients(
    program: Program,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    out: Tensor,
    lse: Tensor,
    dout: Tensor,
    dlse: Tensor | None,
    *,
    tensors: Sequence[Tensor] = (),
    params: Sequence[int | float] = (),
    scale: float | None = None,
    float64: bool = False,
) -> tuple[Tensor, ...]:
    """The attention backward against given row statistics, densely: with p = exp(logits - lse) (0 where
    masked, and on rows with lse -inf) and delta = rowsum(dout * out) - dlse, dV = p^T dout and the logits'
    gradient is p * (dout v^T - delta), as the backward kernels compute it. When `out` / `lse` are those of
    another key set that contains this one (a part of a merged attention), the result is this part's share
    of the merged gradients. Returns the gradients of (query, key, value, *tensors), computed by autograd
    through a scalar whose gradient is exactly that; None for tensors that do not require grad."""
    work = torch.float64 if float64 else torch.float32
    (B, Hq, Q, D), KV = query.shape, key.shape[2]
    group = Hq // key.shape[1]
    leaves = [t.detach().requires_grad_() for t in (query, key, value)]
    k, v = (t.to(work).repeat_interleave(group, dim=1) for t in leaves[1:])
    env = Env(*index_grids(B, Hq, Q, KV, query.device), tensors=tensors, params=params, float64=float64)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    with torch.enable_grad():
        logits = _logits(program, leaves[0].to(work), k, scale, env)
        rows = lse.to(work).unsqueeze(-1)
        p = torch.exp(logits - torch.where(rows == -math.inf, math.inf, rows))
        delta = (dout.to(work) * out.to(work)).sum(-1) - (0.0 if dlse is None else dlse.to(work))
        dp = torch.matmul(dout.to(work), v.transpose(-1, -2))
        surrogate = (p * (dp - delta.unsqueeze(-1))).sum()
        learned = [t for t in tensors if t.requires_grad]
        found = torch.autograd.grad(surrogate, [*leaves, *learned], allow_unused=True)
    grads = [torch.zeros_like(x) if g is None else g.to(x.dtype) for x, g in zip(leaves, found[:3], strict=True)]
    rest = iter(found[3:])
    return (*grads, *(next(rest) if t.requires_grad else None for t in tensors))


def _row_chunks(row_elements: int, Q: int) -> list[slice]:
    """Slices of query rows holding at most `_CHUNK_ELEMENTS` scores each (one empty slice if Q == 0)."""
    rows = max(1, _CHUNK_ELEMENTS // max(1, row_elements))
    return [slice(start, start + rows) for start in range(0, max(Q, 1), rows)]


def _check_shapes(query: Tensor, key: Tensor, value: Tensor) -> None:
    if query.dim() != 4 or key.dim() != 4 or value.dim() != 4:
        raise ValueError("query, key and value must be 4-D: [B, H, LEN, D]")
    if not (query.shape[0] == key.shape[0] == value.shape[0]):
        raise ValueError(f"batch sizes differ: {query.shape[0]}, {key.shape[0]}, {value.shape[0]}")
    if key.shape[1] != value.shape[1] or key.shape[2] != value.shape[2]:
        raise ValueError(f"key {tuple(key.shape)} and value {tuple(value.shape)} disagree on heads or length")
    if query.shape[3] != key.shape[3]:
        raise ValueError(f"query head dim {query.shape[3]} != key head dim {key.shape[3]}")
    if query.shape[1] % key.shape[1] != 0:
        raise ValueError(f"query heads ({query.shape[1]}) must be a multiple of kv heads ({key.shape[1]})")


def _attend(program: Program, q: Tensor, k: Tensor, v: Tensor, scale: float, env: Env) -> tuple[Tensor, Tensor]:
    logits = _logits(program, q, k, scale, env)
    return _safe_softmax(logits, v)


def _logits(program: Program, q: Tensor, k: Tensor, scale: float, env: Env) -> Tensor:
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if program.score is not None:
        modded = evaluate(program.score, dataclasses.replace(env, score=scores))
        scores = torch.broadcast_to(modded.to(scores.dtype), scores.shape)
    if program.mask is not None:
        scores = torch.where(evaluate(program.mask, env), scores, -math.inf)
    return scores


def _safe_softmax(logits: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """softmax(logits) @ v and logsumexp(logits); 0 and -inf on rows without a finite logit.

    The row max only stabilises (the result does not depend on it), so it is detached; empty rows use
    max 0 and divide by 1, which keeps every value and every gradient finite."""
    row_max = _row_max(logits).detach()
    row_max = torch.where(row_max == -math.inf, 0.0, row_max)
    weights = torch.exp(logits - row_max)
    total = weights.sum(dim=-1, keepdim=True)
    empty = total == 0
    safe_total = torch.where(empty, 1.0, total)
    out = torch.matmul(weights, v) / safe_total
    lse = torch.where(empty, -math.inf, torch.log(safe_total) + row_max)
    return out, lse.squeeze(-1)


def _row_max(logits: Tensor) -> Tensor:
    if logits.shape[-1] == 0:  # no keys at all
        return logits.new_full((*logits.shape[:-1], 1), -math.inf)
    return logits.amax(dim=-1, keepdim=True)


def reference_max_scores(
    program: Program,
    query: Tensor,
    key: Tensor,
    *,
    tensors: Sequence[Tensor] = (),
    params: Sequence[int | float] = (),
    scale: float | None = None,
) -> Tensor:
    """float32 `[B, Hq, Q]`: each row's largest logit (after the score mod, over allowed keys); -inf for a row
    without one. Not differentiable (FlexAttention's max_scores is a statistic)."""
    _check_shapes(query, key, key)
    (B, Hq, Q, D), KV = query.shape, key.shape[2]
    k = key.float().repeat_interleave(Hq // key.shape[1], dim=1)
    env = Env(*index_grids(B, Hq, Q, KV, query.device), tensors=tensors, params=params)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    with torch.no_grad():
        rows = [_row_max(_logits(program, query[:, :, r].float(), k, scale, dataclasses.replace(env, q=env.q[:, :, r])))
                for r in _row_chunks(B * Hq * KV, Q)]
    return torch.cat(rows, dim=2).squeeze(-1)
