"""Masks whose structure attnc analyses: each family of the sparsity engine, written as users write them."""

from __future__ import annotations

import torch


def causal(b, h, q, kv):
    return q >= kv


def bottom_right_causal(q_len: int, kv_len: int):
    offset = kv_len - q_len

    def mask(b, h, q, kv):
        return q + offset >= kv

    return mask


def sliding_window(w: int):
    def mask(b, h, q, kv):
        return (q >= kv) & (q - kv < w)

    return mask


def bidirectional_window(w: int):
    def mask(b, h, q, kv):
        return torch.abs(q - kv) <= w

    return mask


def per_head_window(windows: torch.Tensor):
    def mask(b, h, q, kv):
        return (q >= kv) & (q - kv < windows[h])

    return mask


def prefix_lm(prefix: int):
    def mask(b, h, q, kv):
        return (kv < prefix) | (q >= kv)

    return mask


def chunked_causal(chunk: int):
    def mask(b, h, q, kv):
        return (q // chunk == kv // chunk) & (q >= kv)

    return mask


def block_causal_frames(frame: int):
    def mask(b, h, q, kv):
        return q // frame >= kv // frame

    return mask


def sinks_and_window(sinks: int, w: int):
    def mask(b, h, q, kv):
        return (kv < sinks) | ((q >= kv) & (q - kv < w))

    return mask


def dilated_window(w: int, d: int):
    def mask(b, h, q, kv):
        return ((q - kv) % d == 0) & (q >= kv) & (q - kv < w * d)

    return mask


def strided(local: int, stride: int):
    def mask(b, h, q, kv):
        return (q >= kv) & ((q - kv < local) | ((q - kv) % stride == 0))

    return mask


def _window_1d(qi, ki, size: int, kernel: int, dilation: int = 1, stride: int = 1, is_causal: bool = False):
    """Neighborhood along one axis (NATTEN / GNA): border-clamped window of `kernel` positions around a
    centre snapped to `stride` groups, over the positions of the same residue class mod `dilation`."""
    if dilation > 1:
        same = qi % dilation == ki % dilation
        qi, ki, size = qi // dilation, ki // dilation, size // dilation
    else:
        same = None
    centre = (qi // stride) * stride + (stride - 1) // 2 if stride > 1 else qi
    if is_causal:
        inside = (ki <= qi) & (ki > centre - kernel)
    else:
        start = torch.clamp(centre - kernel // 2, min=0, max=size - kernel)
        inside = (ki >= start) & (ki < start + kernel)
    return inside if same is None else inside & same


def natten_1d(length: int, kernel: int, dilation: int = 1, stride: int = 1, is_causal: bool = False):
    def mask(b, h, q, kv):
        return _window_1d(q, kv, length, kernel, dilation, stride, is_causal)

    return mask


def natten_2d(height: int, width: int, kernel: int, dilation: int = 1, is_causal: bool = False):
    def mask(b, h, q, kv):
        rows = _window_1d(q // width, kv // width, height, kernel, dilation, 1, is_causal)
        cols = _window_1d(q % width, kv % width, width, kernel, dilation)
        return rows & cols

    return mask


def natten_3d(depth: int, height: int, width: int, kernel: int):
    def mask(b, h, q, kv):
        frames = _window_1d(q // (height * width), kv // (height * width), depth, kernel, is_causal=True)
        rows = _window_1d((q // width) % height, (kv // width) % height, height, kernel)
        cols = _window_1d(q % width, kv % width, width, kernel)
        return frames & rows & cols

    return mask


def document(doc_ids: torch.Tensor):
    def mask(b, h, q, kv):
        return (doc_ids[q] == doc_ids[kv]) & (q >= kv)

    return mask


def padding(lengths: torch.Tensor):
    def mask(b, h, q, kv):
        return kv < lengths[b]

    return mask


def float_window(w: float):
    """A window with a float radius: w is a runtime parameter, |q - kv| < w is |q - kv| < ceil(w)."""
    def mask(b, h, q, kv):
        return (q - kv).abs() < w

    return mask


def half_causal(b, h, q, kv):
    """Keys up to half the query position, in float arithmetic: q * 0.5 >= kv is q >= 2 * kv."""
    return q * 0.5 >= kv


def alibi_threshold(slopes: torch.Tensor, limit: float):
    """Keys whose ALiBi bias slopes[h] * (kv - q) is at least -limit (float data times an index)."""
    def mask(b, h, q, kv):
        return slopes[h] * (kv - q) >= -limit

    return mask
