"""Neighborhood attention over an image-like grid: each pixel of a 12 x 12 feature map attends to the
5 x 5 window around it (clamped at the borders, as NATTEN defines it).

    python examples/natten_2d.py
"""

from __future__ import annotations

import torch

import attnc
from attnc import variants as V

height, width, channels, heads = 12, 12, 32, 2
image = torch.randn(1, heads, height, width, channels)
tokens = image.flatten(2, 3)  # [B, H, height * width, C], row-major

attn = attnc.compile(mask_mod=V.natten((height, width), 5))
out = attn(tokens, tokens, tokens, backend="triton").unflatten(2, (height, width))
error = (out.flatten(2, 3) - attn(tokens, tokens, tokens, backend="reference")).abs().max()
print(f"{attn.mask_mod}: output {tuple(out.shape)}, max |kernel - reference| = {error:.2e}")
stats = attn.tile_stats(1, heads, height * width, height * width, BLOCK_M=16, BLOCK_N=16)
print(f"tiles (16 x 16): {stats} — the kernel finds them in closed form, no mask tensor")
