"""Quickstart: a causal mask with ALiBi, compiled once and called like any attention function.

    python examples/quickstart.py

On a machine without a GPU the kernel runs in the Triton interpreter (small shapes, slow but exact).
"""

from __future__ import annotations

import torch

import attnc
from attnc import variants as V

device = "cuda" if torch.cuda.is_available() else "cpu"
heads, length, head_dim = 4, 256 if device == "cuda" else 96, 64
q, k, v = (torch.randn(1, heads, length, head_dim, device=device) for _ in range(3))

attn = attnc.compile(mask_mod=V.causal(), score_mod=V.alibi(heads, device=device))
out = attn(q, k, v, backend="triton")
reference = attn(q, k, v, backend="reference")

print(f"variant: {attn.mask_mod} with {attn.score_mod}")
print(f"output {tuple(out.shape)}, max |kernel - reference| = {(out - reference).abs().max():.2e}")
print(f"tiles (64 x 64): {attn.tile_stats(1, heads, length, length, BLOCK_M=64, BLOCK_N=64)}")
