"""Divisions of the tile index by a divisor known outside the loop (`attnc.codegen.skeleton.TileIndex`): the
kernels carry three forms (a positive multiple of the tile length, any positive divisor, anything), the launch
picks the cheapest that holds for the parameter's value, and every form gives the reference interpreter's
result (forward and backward, odd lengths, GQA, rows with no allowed key)."""

from __future__ import annotations

import pytest
import torch

import attnc
from attnc import variants
from attnc.codegen.skeleton import DIVISORS_ANY, DIVISORS_POSITIVE, DIVISORS_TILED
from attnc.runtime import launch, launch_backward

TOL = dict(atol=2e-5, rtol=2e-5)


def inputs(length: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(1, 2, length, 16), (1, 1, length, 16), (1, 1, length, 8)]  # GQA: two query heads per kv head
    return [torch.randn(s, generator=g).requires_grad_(True) for s in shapes]


def divisor_modes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every TILE_DIVISORS value the launches of the test pass to kernels with such divisions, in order."""
    seen: list[int] = []
    original = launch.tile_divisors

    def spy(params, slots, block):
        result = original(params, slots, block)
        if slots:
            seen.append(result)
        return result

    monkeypatch.setattr(launch, "tile_divisors", spy)
    monkeypatch.setattr(launch_backward, "tile_divisors", spy)
    return seen


def assert_matches_reference(attn: attnc.Attention, length: int) -> None:
    q, k, v = inputs(length)
    out, lse = attn(q, k, v, return_lse=True, backend="triton")
    want_out, want_lse = attn(q, k, v, return_lse=True, backend="reference")
    assert not out.isnan().any() and not lse.isnan().any()
    torch.testing.assert_close(out, want_out, **TOL)
    assert torch.equal(lse.isinf(), want_lse.isinf())
    torch.testing.assert_close(lse[~lse.isinf()], want_lse[~want_lse.isinf()], **TOL)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    got = torch.autograd.grad(out, (q, k, v), dout)
    want = torch.autograd.grad(want_out, (q, k, v), dout)
    for name, a, b in zip("qkv", got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=lambda m, n=name: f"d{n}: {m}")


def chunked(chunk: int) -> attnc.Attention:
    # chunked attention with a captured chunk length, inside each chunk only its first 5 keys, and one query per
    # chunk that sees nothing (its row: output 0, lse -inf)
    def mask(b, h, q_idx, kv_idx):
        return (q_idx // chunk == kv_idx // chunk) & (kv_idx % chunk < 5) & (q_idx % chunk != 7)

    def score(s, b, h, q_idx, kv_idx):  # a score mod reading the key only through the aligned remainder
        return s + 0.01 * (kv_idx % chunk).float()

    return attnc.compile(mask, score)


def test_the_kernels_name_the_parameters_dividing_their_tile_index():
    attn = chunked(64)
    assert attn.source.tile_divisors == (0,)
    assert attn.backward_source.dq_tile_divisors == (0,)
    assert attn.backward_source.dkdv_tile_divisors == (0,)
    assert "if TILE_DIVISORS == 2 else" in attn.source.source and "if TILE_DIVISORS == 1 else" in attn.source.source
    plain = attnc.compile(variants.causal())
    assert plain.source.tile_divisors == () and plain.backward_source.dq_tile_divisors == ()


@pytest.mark.parametrize(("chunk", "mode"), [(64, DIVISORS_TILED), (128, DIVISORS_TILED), (48, DIVISORS_POSITIVE),
                                           (-64, DIVISORS_ANY)])
def test_chunk_lengths_of_every_kind_match_the_reference(chunk, mode, monkeypatch):
    # the interpreter's tiles are 64 long: 64 and 128 take the tile-aligned form, 48 the positive one, -64 (floor
    # division by a negative chunk, as Python and PyTorch define it) the general one
    modes = divisor_modes(monkeypatch)
    assert_matches_reference(chunked(chunk), 150)
    assert modes and all(m == mode for m in modes)


def test_a_constant_divisor_picks_its_form_at_compile_time():
    def aligned(b, h, q_idx, kv_idx):  # literal divisors: constants of the IR, not parameters
        return (kv_idx // 64 <= q_idx // 64) & (kv_idx % 64 != 3)

    def unaligned(b, h, q_idx, kv_idx):
        return (kv_idx // 48 <= q_idx // 48) & (kv_idx % 48 != 3)

    for chunk, mask in ((64, aligned), (48, unaligned)):
        attn = attnc.compile(mask)
        assert attn.source.tile_divisors == ()  # nothing for the launch to decide
        assert f"{chunk} % BLOCK_N == 0" in attn.source.source
        assert_matches_reference(attn, 133)


@pytest.mark.parametrize(("canvas", "mode"), [((3, 64), DIVISORS_TILED), ((4, 40), DIVISORS_POSITIVE)])
def test_a_two_dimensional_neighborhood(canvas, mode, monkeypatch):
    modes = divisor_modes(monkeypatch)
    assert_matches_reference(attnc.compile(variants.natten(canvas, 3)), canvas[0] * canvas[1])
    assert modes and all(m == mode for m in modes)


def test_the_launch_names_what_the_dividing_parameters_are():
    assert launch.tile_divisors([64, 7], [0], 64) == DIVISORS_TILED
    assert launch.tile_divisors([256.0], [0], 128) == DIVISORS_TILED
    assert launch.tile_divisors([64, 96], [0, 1], 64) == DIVISORS_POSITIVE
    assert launch.tile_divisors([56], [0], 64) == DIVISORS_POSITIVE
    assert launch.tile_divisors([-64], [0], 64) == DIVISORS_ANY
    assert launch.tile_divisors([64, 0], [0, 1], 64) == DIVISORS_ANY
    assert launch.tile_divisors([64.5], [0], 64) == DIVISORS_ANY
    assert launch.tile_divisors([64], [], 64) == DIVISORS_ANY  # no division: nothing to choose


def test_the_tile_narrows_to_half_where_that_aligns_it():
    assert launch.aligned_block(128, [64], [0]) == 64
    assert launch.aligned_block(128, [128], [0]) == 128
    assert launch.aligned_block(128, [56], [0]) == 128  # no tile length of 64 or more aligns it
    assert launch.aligned_block(64, [32], [0]) == 64  # never below 64
    assert launch.aligned_block(128, [64], []) == 128
