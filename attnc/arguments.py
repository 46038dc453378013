"""Checks of the sizes and tensors a call is given, made before anything is traced, built or launched.

Positions are int32 in mods (FlexAttention's convention) and in kernels, where a tile may reach past the end
of a sequence; a length beyond that would wrap around silently. Heads and head dims of zero leave nothing
to attend with, and a meta tensor has no values: each is named here, at the call that received it.
"""

from __future__ import annotations

import numbers
from typing import Any

import torch

# Tiles of up to 65536 rows may start inside a sequence and end past it: their positions must fit in int32.
MAX_LENGTH = 2**31 - 2**16


def check_length(name: str, n: Any) -> None:
    """A sequence length: an int in [0, MAX_LENGTH]. A symbolic one (torch.compile with dynamic shapes) is
    checked when the call runs with real sizes."""
    if isinstance(n, torch.SymInt):
        return
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"attnc: {name} must be an int, got {type(n).__name__} {n!r}")
    if not 0 <= n <= MAX_LENGTH:
        raise ValueError(f"attnc: {name} = {n} is out of range: positions are int32, so lengths go from 0 to "
                         f"{MAX_LENGTH} (2**31 - 2**16)")


def check_count(name: str, n: Any, *, optional: bool = False) -> None:
    """A batch size, head count or block size: a positive int (None where `optional`: broadcast)."""
    if (n is None and optional) or isinstance(n, torch.SymInt):  # symbolic: checked when the call runs
        return
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"attnc: {name} must be an int, got {type(n).__name__} {n!r}")
    if not 1 <= n <= 2**31 - 1:
        raise ValueError(f"attnc: {name} = {n} must be at least 1 (and fit in int32)")


def check_attention_tensors(query: Any, key: Any, value: Any) -> None:
    """What the shape checks of the launcher assume: real tensors with heads and a head dim."""
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            continue  # the launcher's shape check names these
        if t.device.type == "meta":
            raise ValueError(f"attnc: {name} is a meta tensor (shape {tuple(t.shape)}): it has no values to "
                             "attend over; pass tensors on a CPU or CUDA device")
        if t.shape[1] == 0:
            raise ValueError(f"attnc: {name} has no heads (shape {tuple(t.shape)}); H must be at least 1")
        if t.shape[3] == 0 and name != "value":
            raise ValueError(f"attnc: {name} has head dim 0 (shape {tuple(t.shape)}); D must be at least 1")
        check_length(f"{name} length (dim 2)", t.shape[2])


def shared_kv_batch(query: Any, key: Any, value: Any) -> tuple[Any, Any]:
    """Key / value of batch 1 serve every query batch (one shared KV, as paged caches lay it out), as torch
    broadcasts them: an expanded view, no copy; autograd sums their gradients over the batch."""
    tensors = (query, key, value)
    if all(isinstance(t, torch.Tensor) and t.dim() == 4 for t in tensors) and key.shape[0] == value.shape[0] == 1:
        return key.expand(query.shape[0], -1, -1, -1), value.expand(query.shape[0], -1, -1, -1)
    return key, value
