"""Neighborhood attention in 1, 2 or 3 dimensions: each token attends to a window of its neighbours.

Origin: Hassani et al., "Neighborhood Attention Transformer" (CVPR 2023), "Dilated Neighborhood
Attention Transformer" (2022), causal NA in "Faster Neighborhood Attention" (2024), and strided NA in
"Generalized Neighborhood Attention" (GNA, 2025); the definitions are those of the NATTEN library.

Tokens lie on a canvas (D0, ..., Dn-1), flattened in row-major order. Per axis, with the axis
coordinates c_q, c_k of a query and a key, kernel K, dilation d, stride s:

    group    r = c_q % d  (the key must have c_k % d == r); in-group coordinates i = c_q // d, j = c_k // d,
             group length L = (D - r + d - 1) // d
    leader   the query of i's stride group that owns the window:
             non-causal: min((i // s) * s + s // 2, L - 1)     causal: min((i // s) * s + s - 1, L - 1)
    window   non-causal: centre = clamp(leader, K // 2, L - 1 - (K - 1) // 2);
                         centre - K // 2 <= j <= centre + (K - 1) // 2        (clamped at the borders)
             causal:     j <= i  &  leader - j < K

A pair is allowed when it is inside the window on every axis. Windows are clamped at the borders, so
each query sees exactly K keys per axis (the window shifts inward instead of shrinking).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from attnc.variants.base import MaskMod, signature

TEXT = """\
# 2-D neighborhood attention, 7 x 7 window on a 16 x 16 canvas (dilation 1, stride 1, not causal)
# per axis: centre = clamp(coordinate, K // 2, size - 1 - (K - 1) // 2), keys within [centre - 3, centre + 3]
# (the lets build the column axis first, each axis' last coordinate before its window, as the factory does)
param width: int = 16
param before_w: int = 3
param after_w: int = 3
param height: int = 16
param before_h: int = 3
param after_h: int = 3
let col_q = q % width
let col_kv = kv % width
let last_w = width - 1
let col_centre = clamp(clamp(col_q, min=before_w), max=last_w - after_w)
let cols = (col_kv >= col_centre - before_w) & (col_kv <= col_centre + after_w)
let row_q = q // width
let row_kv = kv // width
let last_h = height - 1
let row_centre = clamp(clamp(row_q, min=before_h), max=last_h - after_h)
let rows = (row_kv >= row_centre - before_h) & (row_kv <= row_centre + after_h)
mask: rows & cols
"""

AxisWindow = Callable[[Any, Any, Any], Any]  # (query coordinate, key coordinate, last coordinate) -> bool


def natten(canvas: int | Sequence[int], kernel: int | Sequence[int], dilation: int | Sequence[int] = 1,
           stride: int | Sequence[int] = 1, causal: bool | Sequence[bool] = False) -> MaskMod:
    """Neighborhood attention on a canvas of 1 to 3 axes; kernel, dilation, stride and causal are given
    for all axes at once or per axis. Q_LEN and KV_LEN are the canvas size."""
    sizes = _per_axis(canvas, 0, "canvas")
    if not 1 <= len(sizes) <= 3:
        raise ValueError(f"natten: the canvas has 1 to 3 axes, got {sizes}")
    given = {"kernel": kernel, "dilation": dilation, "stride": stride, "causal": causal}
    settings = {name: _per_axis(value, len(sizes), name) for name, value in given.items()}
    for axis in zip(sizes, *settings.values(), strict=True):
        _check_axis(*axis)
    windows = tuple(_axis_window(*axis) for axis in zip(*settings.values(), strict=True))
    return MaskMod(_neighborhood(sizes, windows), *_name_and_key(canvas, given, sizes, settings))


_DEFAULTS = {"dilation": 1, "stride": 1, "causal": False}


def _name_and_key(canvas: Any, given: dict[str, Any], sizes: tuple[int, ...],
                  settings: dict[str, tuple[Any, ...]]) -> tuple[str, Any]:
    """The name as called (`natten(64, 7, stride=2)`); the key from the per-axis values, so that
    natten(64, 7) == natten((64,), (7,))."""
    options = {n: given[n] for n, default in _DEFAULTS.items() if any(v != default for v in settings[n])}
    name, _ = signature("natten", (canvas, given["kernel"]), options)
    _, key = signature("natten", (sizes, *settings.values()), {})
    return name, key


def _per_axis(value: Any, axes: int, what: str) -> tuple[Any, ...]:
    """`value` for each of `axes` axes (0: as many as given)."""
    values = tuple(value) if isinstance(value, Sequence) else (value,) * max(axes, 1)
    if axes and len(values) != axes:
        raise ValueError(f"natten: {what} has {len(values)} entries for {axes} axes")
    return values


def _neighborhood(sizes: tuple[int, ...], windows: tuple[AxisWindow, ...]) -> Callable[..., Any]:
    def natten_mask(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        allowed, inner = None, None  # inner: the product of the sizes of the axes after this one
        for axis in reversed(range(len(windows))):
            qc, kc = _coordinate(q_idx, inner, sizes[axis], axis), _coordinate(kv_idx, inner, sizes[axis], axis)
            inside = windows[axis](qc, kc, sizes[axis] - 1)
            allowed = inside if allowed is None else inside & allowed
            inner = sizes[axis] if inner is None else inner * sizes[axis]
        return allowed

    return natten_mask


def _coordinate(index: Any, inner: Any, size: Any, axis: int) -> Any:
    """Coordinate along an axis of a row-major flattened index (the first axis needs no modulo)."""
    outer = index if inner is None else index // inner
    return outer if axis == 0 else outer % size


def _check_axis(size: int, kernel: int, dilation: int, stride: int, causal: bool) -> None:
    if not (kernel >= 1 and dilation >= 1 and kernel * dilation <= size and 1 <= stride <= kernel):
        raise ValueError(f"natten: need kernel, dilation >= 1, kernel * dilation <= size and 1 <= stride <= kernel;"
                         f" got size={size}, kernel={kernel}, dilation={dilation}, stride={stride}")


def _axis_window(kernel: int, dilation: int, stride: int, causal: bool) -> AxisWindow:
    """The window test along one axis, built for the settings given (so a dilation or stride of 1 costs
    nothing in the mod); the axis' last coordinate (size - 1) is an argument, from a runtime parameter."""
    window = _causal_window(kernel, stride) if causal else _centred_window(kernel, stride)
    if dilation == 1:
        return window

    def dilated(qc: Any, kc: Any, last: Any) -> Any:
        group = qc % dilation
        # the group's last in-group coordinate: (L - 1) for its length L = (size - group + dilation - 1) // dilation
        return (kc % dilation == group) & window(qc // dilation, kc // dilation, (last - group) // dilation)

    return dilated


def _leader(stride: int, offset: int) -> Callable[[Any, Any], Any]:
    """The query whose window query i uses: i itself, or (stride > 1) the one at `offset` in i's stride group."""
    if stride == 1:
        return lambda i, last: i

    def leader(i: Any, last: Any) -> Any:
        return torch.clamp((i // stride) * stride + offset, max=last)

    return leader


def _centred_window(kernel: int, stride: int) -> Callable[[Any, Any, Any], Any]:
    before, after = kernel // 2, (kernel - 1) // 2
    leader = _leader(stride, stride // 2)

    def centred(i: Any, j: Any, last: Any) -> Any:
        centre = torch.clamp(torch.clamp(leader(i, last), min=before), max=last - after)
        return (j >= centre - before) & (j <= centre + after)

    return centred


def _causal_window(kernel: int, stride: int) -> Callable[[Any, Any, Any], Any]:
    leader = _leader(stride, stride - 1)

    def causal(i: Any, j: Any, last: Any) -> Any:
        return (j <= i) & (leader(i, last) - j < kernel)

    return causal
