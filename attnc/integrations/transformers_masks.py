"""What a transformers attention mask means, in terms attnc compiles: `TransformersMask`.

transformers builds a model's masks by composing small index functions (`causal_mask_function`, a sliding-window
overlay, the packed-sequence and padding functions, ...) and hands the composition, with the 2-D padding mask and
the query/key offsets, to the mask function registered for the attention implementation. Here that composition is
read back into a `MaskStructure` (which clauses the mask has: decides the kernel) and `MaskValues` (offsets,
window, padding ranges or table, document ids: runtime arguments, so a new batch never recompiles). A composition
this module does not recognise (a model's own `or_mask_function`, block-wise overlays, ...) is materialised by
transformers' own `sdpa_mask` and read from that dense table: slower, never wrong.

The recognition goes by the qualified names of transformers' mask functions and the names of their closure
variables; a transformers release that renames them lands in the dense path, not in a wrong mask.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import torch

_MASKING_MODULE = "transformers.masking_utils"


@dataclasses.dataclass(frozen=True)
class MaskStructure:
    """The clauses of a mask, each ANDed in; what a compiled kernel depends on."""

    causal: bool = False  # kv <= q (positions)
    window: bool = False  # kv > q - window: a causal sliding window of `window` keys, the query's own included
    bidirectional_window: bool = False  # |q - kv| <= window
    chunked: bool = False  # (kv - chunk_start[b]) // chunk == (q - chunk_start[b]) // chunk
    padding: str | None = None  # "range": starts[b] <= kv_idx < ends[b]; "table": padding[b, kv_idx]
    documents: bool = False  # documents[b, q_idx] == documents[b, kv_idx] (packed sequences)
    dense: str | None = None  # "bool": dense[b, h, q_idx, kv_idx] allows; "bias": also added to the score

    @property
    def allows_everything(self) -> bool:
        return self == MaskStructure()


@dataclasses.dataclass(frozen=True, eq=False)
class MaskValues:
    """The runtime values of a mask's clauses (those its structure does not use are left at their defaults)."""

    q_offset: int = 0  # position of query row 0
    kv_offset: int = 0  # position of key column 0
    window: int = 1
    chunk: int = 1
    chunk_start: torch.Tensor | None = None  # int32 [B]
    starts: torch.Tensor | None = None  # int32 [B]
    ends: torch.Tensor | None = None  # int32 [B]
    padding: torch.Tensor | None = None  # bool [B, KV_LEN]
    documents: torch.Tensor | None = None  # int32 [B, Q_LEN]
    dense: torch.Tensor | None = None  # bool [B or 1, H or 1, Q_LEN, KV_LEN]
    bias: torch.Tensor | None = None  # float, as `dense`, zero where dense forbids


@dataclasses.dataclass(frozen=True, eq=False)
class TransformersMask:
    """The mask of one attention call, as the registered mask function gives it to the attention function."""

    structure: MaskStructure
    values: MaskValues
    batch_size: int
    q_length: int
    kv_length: int

    # A mask made in advance (`generate` with a static cache does) comes back to the mask function as the
    # model's `attention_mask`; transformers reads its `ndim` on the way (2 would mean padding) before the mask
    # function returns it unchanged.
    ndim = 4

    def check_fits(self, query: torch.Tensor, key: torch.Tensor) -> None:
        """The attention call's shapes must be those the mask was made for."""
        got = (query.shape[0], query.shape[2], key.shape[2])
        if got != (self.batch_size, self.q_length, self.kv_length):
            raise ValueError(f"attnc: attention_mask was made for batch {self.batch_size}, {self.q_length} queries "
                             f"and {self.kv_length} keys; the attention call has batch {got[0]}, {got[1]} queries "
                             f"and {got[2]} keys")


# ---- the composition transformers hands over, read back -------------------------------------------------


@dataclasses.dataclass
class _Clauses:
    structure: MaskStructure = dataclasses.field(default_factory=MaskStructure)
    values: dict[str, Any] = dataclasses.field(default_factory=dict)
    remapped: bool = False  # positions remapped through position_ids: valid only together with `documents`

    def add(self, other: _Clauses) -> _Clauses | None:
        """Both sets of clauses ANDed; None where they would need the same runtime value twice."""
        if set(self.values) & set(other.values):
            return None
        merged = {f.name: getattr(self.structure, f.name) or getattr(other.structure, f.name)
                  for f in dataclasses.fields(MaskStructure)}
        return _Clauses(MaskStructure(**merged), {**self.values, **other.values}, self.remapped or other.remapped)


def _closure(fn: Callable) -> dict[str, Any]:
    cells = getattr(fn, "__closure__", None) or ()
    return {name: cell.cell_contents for name, cell in zip(fn.__code__.co_freevars, cells, strict=True)}


def _leaf(structure: MaskStructure | None = None, **values: Any) -> _Clauses:
    return _Clauses(structure or MaskStructure(), values)


def _and(fn: Callable) -> _Clauses | None:
    clauses: _Clauses | None = _Clauses()
    for part in _closure(fn).get("mask_functions", ()):
        inner = recognise(part)
        clauses = None if clauses is None or inner is None else clauses.add(inner)
    return clauses


def _remapped(fn: Callable) -> _Clauses | None:
    inner = recognise(_closure(fn)["mask_function"])
    # Within one packed sequence positions step by one with the index, so a mask of the position difference
    # (causal, windows) means the same on indices; only those are accepted under a remap.
    if inner is None or inner.structure.chunked or inner.structure.padding or inner.structure.documents:
        return None
    return dataclasses.replace(inner, remapped=True)


_RECOGNISERS: dict[str, Callable[[Callable], _Clauses | None]] = {
    "causal_mask_function": lambda fn: _leaf(MaskStructure(causal=True)),
    "bidirectional_mask_function": lambda fn: _leaf(),
    "sliding_window_overlay.<locals>.inner_mask":
        lambda fn: _leaf(MaskStructure(window=True), window=int(_closure(fn)["sliding_window"])),
    "sliding_window_bidirectional_overlay.<locals>.inner_mask":
        lambda fn: _leaf(MaskStructure(bidirectional_window=True), window=int(_closure(fn)["sliding_window"])),
    "chunked_overlay.<locals>.inner_mask":
        lambda fn: _leaf(MaskStructure(chunked=True), chunk=int(_closure(fn)["chunk_size"]),
                         chunk_start=_closure(fn)["left_padding"]),
    "packed_sequence_mask_function.<locals>.inner_mask":
        lambda fn: _leaf(MaskStructure(documents=True), documents=_closure(fn)["packed_sequence_mask"]),
    "and_masks.<locals>.and_mask": _and,
    "remap_positions_for_packed_sequence.<locals>.inner_mask": _remapped,
}


def recognise(fn: Callable) -> _Clauses | None:
    """The clauses of one of transformers' mask functions; None for anything else."""
    if getattr(fn, "__module__", None) != _MASKING_MODULE:
        return None
    recogniser = _RECOGNISERS.get(getattr(fn, "__qualname__", ""))
    if recogniser is None:
        return None
    try:
        return recogniser(fn)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None  # a release that changed the function's closure: the dense path is still right


# ---- the mask function registered with transformers ---------------------------------------------------------


def padding_clause(attention_mask: torch.Tensor | None, kv_length: int, kv_offset: int) -> _Clauses:
    """The 2-D padding mask over the keys of this call: as per-row ranges where each row's allowed keys are one
    run (left or right padding), else as a table; no clause where nothing is padded."""
    if attention_mask is None:
        return _Clauses()
    allowed = attention_mask.to(torch.bool)[:, kv_offset:kv_offset + kv_length]
    if allowed.shape[1] < kv_length:  # a static cache longer than the mask: the keys past it are empty slots
        allowed = torch.nn.functional.pad(allowed, (0, kv_length - allowed.shape[1]), value=False)
    if bool(allowed.all()):
        return _Clauses()
    count = allowed.sum(dim=-1)
    starts = allowed.to(torch.int32).argmax(dim=-1)  # the first allowed key (0 where none)
    ends = starts + count
    positions = torch.arange(kv_length, device=allowed.device)
    one_run = ((positions >= starts[:, None]) & (positions < ends[:, None])) == allowed
    if bool(one_run.all()):
        return _leaf(MaskStructure(padding="range"), starts=starts.to(torch.int32), ends=ends.to(torch.int32))
    return _leaf(MaskStructure(padding="table"), padding=allowed.contiguous())


def _query_placement(arguments: dict[str, Any]) -> tuple[int, int] | None:
    """(q_length, q_offset), from the arguments of recent releases or the `cache_position` of earlier ones
    (None where those positions are not one consecutive run)."""
    if arguments.get("q_length") is not None:
        return int(arguments["q_length"]), int(arguments.get("q_offset") or 0)
    positions = arguments.get("cache_position")
    if positions is None or positions.ndim != 1 or positions.numel() == 0:
        return None
    first = int(positions[0])
    consecutive = torch.arange(first, first + positions.numel(), device=positions.device)
    return (positions.numel(), first) if bool((positions == consecutive).all()) else None


def _structured(arguments: dict[str, Any], placement: tuple[int, int]) -> TransformersMask | None:
    q_length, q_offset = placement
    kv_length, kv_offset = int(arguments["kv_length"]), int(arguments.get("kv_offset") or 0)
    from transformers.masking_utils import causal_mask_function  # the default, as in transformers' own

    clauses = recognise(arguments.get("mask_function") or causal_mask_function)
    if clauses is None:
        return None
    if clauses.structure.documents and (q_offset, kv_offset, q_length) != (0, 0, kv_length):
        return None  # packed ids are indexed by query position: only without a cache, as transformers makes them
    if clauses.remapped and not clauses.structure.documents:
        return None
    clauses = clauses.add(padding_clause(arguments.get("attention_mask"), kv_length, kv_offset))
    if clauses is None:
        return None
    values = MaskValues(q_offset=q_offset, kv_offset=kv_offset, **_as_int32(clauses.values))
    return TransformersMask(clauses.structure, values, int(arguments["batch_size"]), q_length, kv_length)


def _as_int32(values: dict[str, Any]) -> dict[str, Any]:
    tensors = ("chunk_start", "starts", "ends", "documents")
    return {k: (v.to(torch.int32).contiguous() if k in tensors else v) for k, v in values.items()}


def _dense(arguments: dict[str, Any]) -> TransformersMask:
    """Any mask, through transformers' own dense construction (a boolean [B, 1, Q, KV] table)."""
    from transformers.masking_utils import sdpa_mask

    accepted = inspect.signature(sdpa_mask).parameters
    forwarded = {**arguments, "allow_is_causal_skip": False}
    if "allow_is_bidirectional_skip" in accepted:
        forwarded["allow_is_bidirectional_skip"] = False
    dense = sdpa_mask(**forwarded)
    batch_size, kv_length = int(arguments["batch_size"]), int(arguments["kv_length"])
    placement = _query_placement(arguments)
    q_length = placement[0] if placement else int(arguments["cache_position"].numel())  # present: checked before
    if dense is None:  # nothing masked
        return TransformersMask(MaskStructure(), MaskValues(), batch_size, q_length, kv_length)
    return TransformersMask(MaskStructure(dense="bool"), MaskValues(dense=dense.to(torch.bool)), batch_size,
                            q_length, kv_length)


def transformers_mask(**arguments: Any) -> TransformersMask:
    """The mask function registered in transformers' mask interface: called with keyword arguments only
    (batch_size, q_length / cache_position, kv_length, offsets, mask_function, attention_mask, ...)."""
    if isinstance(arguments.get("attention_mask"), TransformersMask):
        return arguments["attention_mask"]  # made in advance for this call
    if arguments.get("q_length") is None and arguments.get("cache_position") is None:
        raise ValueError("attnc: the mask function needs the queries' q_length (and q_offset) or their "
                         "cache_position, as transformers passes them")
    placement = _query_placement(arguments)
    described = _structured(arguments, placement) if placement is not None else None
    return described if described is not None else _dense(arguments)


# ---- masks that do not come from the mask interface ---------------------------------------------------------


def from_tensor(mask: torch.Tensor, query: torch.Tensor, key: torch.Tensor) -> TransformersMask:
    """A 4-D mask tensor (a caller's own, or one made by transformers without attnc's mask function): boolean
    (True attends) or additive float (transformers' eager convention: the dtype's minimum, or -inf, forbids)."""
    if mask.ndim != 4:
        raise ValueError(f"attnc: attention_mask as a tensor must be 4-D [batch, heads or 1, queries, keys], got "
                         f"shape {list(mask.shape)}")
    batch, heads, q_length, kv_length = query.shape[0], query.shape[1], query.shape[2], key.shape[2]
    mask = mask[:, :, :, :kv_length]  # masks made for a static cache may be longer, as transformers' eager slices
    if mask.shape[2] != q_length or mask.shape[3] != kv_length or mask.shape[0] not in (1, batch) \
            or mask.shape[1] not in (1, heads):
        raise ValueError(f"attnc: attention_mask of shape {list(mask.shape)} does not fit queries "
                         f"{list(query.shape)} and keys {list(key.shape)}")
    full = (batch, heads, q_length, kv_length)
    if mask.dtype == torch.bool:
        return TransformersMask(MaskStructure(dense="bool"), MaskValues(dense=mask.expand(full)), batch, q_length,
                                kv_length)
    if not mask.is_floating_point():
        raise TypeError(f"attnc: attention_mask as a tensor must be bool or floating, got {mask.dtype}")
    allowed = mask > torch.finfo(mask.dtype).min / 2
    bias = torch.where(allowed, mask, torch.zeros((), dtype=mask.dtype, device=mask.device))
    values = MaskValues(dense=allowed.expand(full), bias=bias.expand(full))
    return TransformersMask(MaskStructure(dense="bias"), values, batch, q_length, kv_length)


def from_flags(causal: bool, sliding_window: int | None, query: torch.Tensor, key: torch.Tensor) -> TransformersMask:
    """No mask object at all: causal as the module says (its last query on its last key, as in decoding with a
    cache), windowed where the call passed a sliding window."""
    q_length, kv_length = query.shape[2], key.shape[2]
    window = bool(causal and sliding_window)
    structure = MaskStructure(causal=causal, window=window)
    values = MaskValues(q_offset=kv_length - q_length, window=int(sliding_window) if window else 1)
    return TransformersMask(structure, values, query.shape[0], q_length, kv_length)
