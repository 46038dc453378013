"""Swin Transformer window attention, plain and shifted, on a 2-D canvas of tokens.

Origin: Liu et al. 2021, "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows".

Swin rolls the image by (-shift, -shift), attends within non-overlapping M x M windows, and masks the
pairs of the wrapped-around border windows that were not neighbours before the roll. On the original
(unrolled) token order that is exactly attention within windows on a grid offset by `shift`, cut at
the borders (the first `shift` rows form one window, the last M - shift rows another): per axis, with
coordinates c_q, c_k (rows: c = idx // W, columns: c = idx % W),

    (c_q - shift) // M == (c_k - shift) // M

(the roll sends c to (c - shift) % D; the tokens with c < shift wrap into the last window, where
Swin's mask keeps them apart from the others, as the floor division by M keeps c - shift < 0 apart).
With shift = 0 this is plain (non-shifted) window attention. The canvas sides must be multiples of M.
"""

from __future__ import annotations

from typing import Any

from attnc.variants.base import MaskMod

TEXT = """\
# Swin shifted windows: 7 x 7 windows shifted by 3 on a 14 x 14 canvas
param width: int = 14
param shift: int = 3
param window: int = 7
mask: ((q // width - shift) // window == (kv // width - shift) // window)""" \
    """ & ((q % width - shift) // window == (kv % width - shift) // window)
"""


def swin(canvas: tuple[int, int], window: int, shift: int = 0) -> MaskMod:
    """Window attention on a (height, width) canvas with `window` x `window` windows shifted by `shift`."""
    height, width = canvas
    if height % window or width % window or not 0 <= shift < window:
        raise ValueError(f"swin: the canvas {canvas} must be a multiple of the window {window}, and 0 <= shift "
                         f"< window (got shift={shift})")

    def swin_mask(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        rows = (q_idx // width - shift) // window == (kv_idx // width - shift) // window
        columns = (q_idx % width - shift) // window == (kv_idx % width - shift) // window
        return rows & columns

    options = {"shift": shift} if shift else {}
    return MaskMod.named("swin", swin_mask, (height, width), window, **options)
