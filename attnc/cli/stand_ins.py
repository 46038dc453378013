"""Synthetic tensors for library variants that need one, so `attnc show`, `viz` and `bench` work without a file.

A family such as `document(doc_ids)` cannot be written with literals. Given `--tensor doc_ids=ids.pt` it reads
the file; without it, show, viz and bench use the stand-in below and say so. The stand-ins are deterministic
(seed 0) and sized for the command's lengths:

    document(doc_ids)                 4 documents of equal length over the longer of Q_LEN and KV_LEN
    document_from_lengths(lengths)    the same 4 documents, as their lengths
    key_padding(lengths)              every batch element keeps the first 3/4 of its keys
    bigbird(block, random)            1 random key block per query block and head
    moba(gate, block, top_k)          a standard normal gate score per (batch, head, query block, key block)
    relative_bias(table)              N(0, 0.1) biases for distances clipped to [-128, 128]
    t5_bias(table)                    N(0, 0.1) biases, one per bucket (num_buckets of the call) and head
    t5_bias_lookup(table)             the same
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from attnc.variants.bigbird import random_blocks

DOCUMENTS = 4  # documents in the synthetic packing
KEPT_KEYS = 0.75  # share of each batch element's keys that key_padding's stand-in keeps
RELATIVE_DISTANCE = 128  # relative_bias's stand-in clips distances to [-128, 128]
BIAS_STD = 0.1


@dataclasses.dataclass(frozen=True)
class Extent:
    """The sizes a command runs at: what a stand-in must cover."""

    q_len: int
    kv_len: int
    heads: int = 1
    batch: int = 1


StandIn = Callable[[Extent, Mapping[str, Any]], tuple[torch.Tensor, str]]  # (extent, bound arguments)


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def _document_lengths(length: int) -> torch.Tensor:
    documents = min(DOCUMENTS, length)
    edges = [length * i // documents for i in range(documents + 1)]
    return torch.tensor([b - a for a, b in itertools.pairwise(edges)], dtype=torch.int32)


def _doc_ids(extent: Extent, bound: Mapping[str, Any]) -> tuple[torch.Tensor, str]:
    length = max(extent.q_len, extent.kv_len)
    lengths = _document_lengths(length)
    ids = torch.repeat_interleave(torch.arange(len(lengths), dtype=torch.int32), lengths)
    return ids, f"{len(lengths)} documents of about {length // len(lengths)} tokens over {length} positions"


def _lengths_of_documents(extent: Extent, bound: Mapping[str, Any]) -> tuple[torch.Tensor, str]:
    length = max(extent.q_len, extent.kv_len)
    lengths = _document_lengths(length)
    return lengths, f"{len(lengths)} documents of lengths {lengths.tolist()}"


def _padding_lengths(extent: Extent, bound: Mapping[str, Any]) -> tuple[torch.Tensor, str]:
    kept = max(1, int(extent.kv_len * KEPT_KEYS))
    return torch.full((extent.batch,), kept, dtype=torch.int32), f"{kept} of {extent.kv_len} keys valid"


def _blocks(extent: Extent, bound: Mapping[str, Any]) -> tuple[int, int, int]:
    block = int(bound["block"])
    if block < 1:
        raise ValueError(f"block must be positive, got {block}")
    return block, math.ceil(extent.q_len / block), math.ceil(extent.kv_len / block)


def _random(extent: Extent, bound: Mapping[str, Any]) -> tuple[torch.Tensor, str]:
    block, q_blocks, kv_blocks = _blocks(extent, bound)
    chosen = random_blocks(extent.heads, q_blocks, kv_blocks, min(1, kv_blocks), generator=_generator())
    return chosen, f"1 random key block per query block of {block} tokens, per head (seed 0)"


def _gate(extent: Extent, bound: Mapping[str, Any]) -> tuple[torch.Tensor, str]:
    block, q_blocks, kv_blocks = _blocks(extent, bound)
    gate = torch.randn(extent.batch, extent.heads, q_blocks, kv_blocks, generator=_generator())
    return gate, f"standard normal gate scores per block of {block} tokens (seed 0)"


def _relative_table(extent: Extent, bound: Mapping[str, Any]) -> tuple[torch.Tensor, str]:
    table = BIAS_STD * torch.randn(extent.heads, 2 * RELATIVE_DISTANCE + 1, generator=_generator())
    return table, f"N(0, {BIAS_STD}) biases for distances clipped to [-{RELATIVE_DISTANCE}, {RELATIVE_DISTANCE}]"


def _t5_table(extent: Extent, bound: Mapping[str, Any]) -> tuple[torch.Tensor, str]:
    buckets = int(bound.get("num_buckets", 32))
    table = BIAS_STD * torch.randn(buckets, extent.heads, generator=_generator())
    return table, f"N(0, {BIAS_STD}) biases for {buckets} buckets (seed 0)"


# (family, parameter) -> how to make its stand-in
STAND_INS: Mapping[tuple[str, str], StandIn] = {
    ("document", "doc_ids"): _doc_ids,
    ("document_from_lengths", "lengths"): _lengths_of_documents,
    ("key_padding", "lengths"): _padding_lengths,
    ("bigbird", "random"): _random,
    ("moba", "gate"): _gate,
    ("relative_bias", "table"): _relative_table,
    ("t5_bias", "table"): _t5_table,
    ("t5_bias_lookup", "table"): _t5_table,
}


def stand_in(family: str, parameter: str, extent: Extent, bound: Mapping[str, Any]) -> tuple[torch.Tensor, str] | None:
    """A synthetic value for `family`'s tensor `parameter` and what it is, or None where there is none."""
    make = STAND_INS.get((family, parameter))
    return None if make is None else make(extent, bound)
