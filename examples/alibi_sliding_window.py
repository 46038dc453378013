"""ALiBi with a causal sliding window, from the variant library; the window is a runtime parameter.

    python examples/alibi_sliding_window.py
"""

from __future__ import annotations

import torch

import attnc
from attnc import variants as V

heads, length = 6, 160  # ALiBi slopes for any head count, not only powers of two
q, k, v = (torch.randn(1, heads, length, 32) for _ in range(3))

attn = attnc.compile(mask_mod=V.sliding_window(32), score_mod=V.alibi(heads))
out = attn(q, k, v, backend="triton")
error = (out - attn(q, k, v, backend="reference")).abs().max()
print(f"{attn.mask_mod} + {attn.score_mod}: max |kernel - reference| = {error:.2e}")
print(f"slopes for {heads} heads: {[round(s, 5) for s in V.alibi_slopes(heads)]}")
print(f"tiles (32 x 32): {attn.tile_stats(1, heads, length, length, BLOCK_M=32, BLOCK_N=32)}")
