"""Document masking: tokens attend only within their own document of a packed sequence.

Origin: sequence packing for pre-training without cross-document attention (e.g. Llama 3, "we use an
attention mask that prevents self-attention between different documents within the same sequence");
FlexAttention's document mask.

    document(doc_ids):            doc_ids[q_idx] == doc_ids[kv_idx]                  (ids of shape [L])
                                  doc_ids[b, q_idx] == doc_ids[b, kv_idx]            (ids of shape [B, L])
    document_from_lengths(lens):  the same, with doc_ids = 0 for the first lens[0] tokens, 1 for the next
                                  lens[1], ...

Combine with `causal()` for causal packed training: `document(ids) & causal()`.
"""

from __future__ import annotations

from typing import Any

import torch

from attnc.variants.base import MaskMod, signature

TEXT = """\
# packed documents: token i belongs to document doc_ids[i]
tensor doc_ids: int32[L]
mask: doc_ids[q] == doc_ids[kv]
"""


def document(doc_ids: torch.Tensor) -> MaskMod:
    """Same-document mask from an integer id per token: shape [L], or [B, L] for one packing per batch element."""
    if doc_ids.ndim not in (1, 2) or doc_ids.is_floating_point():
        raise ValueError(f"document: doc_ids is an integer tensor of shape [L] or [B, L], got {doc_ids.dtype} "
                         f"of shape {list(doc_ids.shape)}")
    return MaskMod.named("document", _same_document(doc_ids), doc_ids)


def _same_document(doc_ids: torch.Tensor) -> Any:
    if doc_ids.ndim == 1:
        def document_mask(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
            return doc_ids[q_idx] == doc_ids[kv_idx]
    else:
        def document_mask(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
            return doc_ids[b, q_idx] == doc_ids[b, kv_idx]
    return document_mask


def document_ids(lengths: torch.Tensor) -> torch.Tensor:
    """int32 document id per token for documents of the given lengths, in order: [0]*lengths[0] + [1]*lengths[1] ..."""
    if lengths.ndim != 1 or lengths.is_floating_point() or bool((lengths < 0).any()):
        raise ValueError(f"document_ids: lengths is a non-negative integer tensor of shape [D], got {lengths}")
    ids = torch.arange(lengths.numel(), dtype=torch.int32, device=lengths.device)
    return torch.repeat_interleave(ids, lengths)


def document_from_lengths(lengths: torch.Tensor) -> MaskMod:
    """Same-document mask for packed documents of the given lengths (the ids are built once, here)."""
    doc_ids = document_ids(lengths)
    # Keyed by the ids built here, not by `lengths`: the mod keeps these ids even if `lengths` changes later.
    name, _ = signature("document_from_lengths", (lengths,), {})
    _, key = signature("document_from_lengths", (doc_ids,), {})
    return MaskMod(_same_document(doc_ids), name, key)
