"""Rotary position embeddings (RoPE), in the rotate-half layout.

Origin: Su et al. 2021, "RoFormer: Enhanced Transformer with Rotary Position Embedding"; the rotate-half
layout (the two halves of the rotated features form the pairs, rather than even and odd features) is the
one of GPT-NeoX, LLaMA and most checkpoints in circulation.

For the first `dim` features of a head (d = dim / 2 pairs) at position p:

    inv_freq[i] = base ^ (-2 i / dim),  i = 0 .. d - 1
    angle[i]    = p * inv_freq[i]
    x'          = x * cos(angle ++ angle) + rotate_half(x) * sin(angle ++ angle)
    rotate_half([x1, x2]) = [-x2, x1]

Features past `dim` (partial rotary, as in GPT-NeoX's `rotary_pct`) pass through unchanged. The angles are
computed in float32 whatever the input dtype: positions in the thousands times the fastest frequency lose
their phase in half precision.
"""

from __future__ import annotations

import torch
from torch import nn


class RotaryEmbedding(nn.Module):
    """Rotates the first `dim` features of each head by angles proportional to the token's position.

    `forward(x, positions)`: `x [B, L, H, D]` with `D >= dim`, `positions` integer `[L]` (shared by the batch)
    or `[B, L]` (each sequence its own, e.g. continuing from a KV cache's length). The frequencies are a
    non-persistent buffer: they follow `.to(device)` and stay out of `state_dict`, since `dim` and `base`
    define them."""

    inv_freq: torch.Tensor

    def __init__(self, dim: int, base: float = 10000.0) -> None:
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2 or dim % 2:
            raise ValueError(f"attnc.nn.RotaryEmbedding: dim must be a positive even int (features rotated in "
                             f"pairs), got {dim!r}")
        if isinstance(base, bool) or not isinstance(base, int | float) or not base > 1.0:
            raise ValueError(f"attnc.nn.RotaryEmbedding: base must be a number above 1, got {base!r}")
        self.dim, self.base = dim, float(base)
        exponents = torch.arange(0, dim, 2, dtype=torch.float32) / dim
        self.register_buffer("inv_freq", self.base ** -exponents, persistent=False)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, base={self.base:g}"

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        self._check(x, positions)
        cos, sin = self.cos_sin(positions)
        rotated, rest = x[..., : self.dim], x[..., self.dim:]
        # [B or 1, L, 1, dim]: one angle per token and feature, shared by the heads
        cos, sin = (t.unsqueeze(-2).to(x.dtype) for t in (cos, sin))
        out = rotated * cos + rotate_half(rotated) * sin
        return torch.cat((out, rest), dim=-1) if rest.shape[-1] else out

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 `cos, sin` of the angles, `[*positions.shape, dim]`."""
        angles = positions.to(torch.float32).unsqueeze(-1) * self.inv_freq
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos(), angles.sin()

    def _check(self, x: torch.Tensor, positions: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[-1] < self.dim:
            raise ValueError(f"attnc.nn.RotaryEmbedding: x must be [B, L, H, D] with D >= dim={self.dim}, got "
                             f"{tuple(x.shape)}")
        if positions.is_floating_point() or positions.is_complex() or positions.dtype == torch.bool:
            raise TypeError(f"attnc.nn.RotaryEmbedding: positions must be an integer tensor, got {positions.dtype}")
        B, L = x.shape[:2]
        if tuple(positions.shape) not in ((L,), (B, L), (1, L)):
            raise ValueError(f"attnc.nn.RotaryEmbedding: positions must be [L={L}] or [B={B}, L={L}], got "
                             f"{tuple(positions.shape)}")


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """`[x1, x2] -> [-x2, x1]` over the last dimension: the 90-degree turn of each (x1[i], x2[i]) pair."""
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)
