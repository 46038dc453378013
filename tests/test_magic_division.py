"""Integer floor division and modulo by a value known outside the loop, through a magic multiplier
(`_div_magic`, `_floordiv_magic`, `_mod_magic` in the kernels' helpers), agree with Python's `//` and `%`
for every sign of numerator and divisor, in the Triton interpreter."""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

from attnc.codegen.templates import helpers


@triton.jit
def _divide(A, D, Q, R, N: tl.constexpr):
    offs = tl.arange(0, N)
    a = tl.load(A + offs)
    d = tl.load(D)
    magic, shift = helpers._div_magic(d)
    tl.store(Q + offs, helpers._floordiv_magic(a, d, magic, shift))
    tl.store(R + offs, helpers._mod_magic(a, d, magic, shift))


DIVISORS = [1, 2, 3, 5, 7, 13, 64, 100, 641, 65536, 65537, 1_000_003, 2**30 + 1, 2**31 - 1, -1, -3, -64, -1000]


@pytest.mark.parametrize("divisor", DIVISORS)
def test_magic_division_matches_python(divisor: int) -> None:
    g = torch.Generator().manual_seed(divisor & 0xFFFF)
    near_zero = torch.arange(-2048, 2048, dtype=torch.int32)
    wide = torch.randint(-(2**31) + 1, 2**31 - 1, (4096,), generator=g, dtype=torch.int64).to(torch.int32)
    multiples = (torch.arange(-1024, 1024, dtype=torch.int64) * abs(divisor)).clamp(-(2**31) + 1, 2**31 - 1)
    a = torch.cat([near_zero, wide, multiples.to(torch.int32), (multiples - 1).clamp(min=-(2**31) + 1).to(torch.int32)])
    n = 1 << (a.numel() - 1).bit_length()
    a = torch.cat([a, torch.zeros(n - a.numel(), dtype=torch.int32)])
    q, r = torch.empty_like(a), torch.empty_like(a)
    _divide[(1,)](a, torch.tensor([divisor], dtype=torch.int32), q, r, N=n)
    wide_a = a.to(torch.int64)
    torch.testing.assert_close(q.to(torch.int64), torch.div(wide_a, divisor, rounding_mode="floor"))
    torch.testing.assert_close(r.to(torch.int64), torch.remainder(wide_a, divisor))
