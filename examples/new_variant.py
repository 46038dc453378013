"""A new attention variant in five lines: every query attends to itself, the 8 tokens before it, and
every 16th token (a strided "summary" lane), with scores damped by distance.

    python examples/new_variant.py
"""

from __future__ import annotations

import torch

import attnc


def local_or_summary(b, h, q_idx, kv_idx):
    return (q_idx >= kv_idx) & ((q_idx - kv_idx <= 8) | (kv_idx % 16 == 15))


def damped(score, b, h, q_idx, kv_idx):
    return score - 0.05 * torch.log1p((q_idx - kv_idx).abs().float())


attn = attnc.compile(mask_mod=local_or_summary, score_mod=damped)

q, k, v = (torch.randn(1, 2, 100, 32) for _ in range(3))
out = attn(q, k, v, backend="triton")
print(f"max |kernel - reference| = {(out - attn(q, k, v, backend='reference')).abs().max():.2e}")
stats = attn.tile_stats(1, 2, 100, 100, BLOCK_M=32, BLOCK_N=32)
print(f"tiles (32 x 32) the kernel skips (empty), masks (partial), attends whole (full): {stats}")
