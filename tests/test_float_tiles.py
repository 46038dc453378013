"""Tile classification of masks with floats in them: constants, parameters, per-head and per-position float
data, float arithmetic on the indices.

Exact where the integer analysis is (an integer compared with a float is an integer comparison: `x < 40.5` is
`x <= 40`), sound everywhere: against brute force on random float masks in any box (also past 2**24, where
float32 stops holding every integer, and with NaN in the data), and end to end against the dense block map,
torch's `create_block_mask` and the reference attention.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.attention.flex_attention import create_block_mask as torch_create_block_mask

import attnc
from attnc.ir import DType, Node, Op, Program, const
from attnc.ir.interpret import Env, evaluate
from attnc.ir.tiles import EMPTY, FULL, PARTIAL, kv_full_range, kv_ranges, tile_test
from attnc.runtime.sparsity import classify_blocks
from tests import ir_strategies as irs
from tests.test_tiles import INT32_MAX, Traced, _box_env, assert_exact, assert_sound, brute_force, classified, traced

WINDOWS = torch.tensor([10.5, 33.0, float("nan"), float("inf"), -3.5, 2.0**25])
SLOPES = torch.tensor([0.1, 0.05, 0.5, 0.25])


def window(w):
    def mask(b, h, q, kv):
        return (q - kv).abs() < w

    return mask


def scaled_causal(scale):
    def mask(b, h, q, kv):
        return q * scale >= kv

    return mask


FAMILIES = {
    "window_constant": (lambda b, h, q, kv: (q - kv).abs() < 20.5, 1, 150, 140),
    "window_integral_constant": (lambda b, h, q, kv: (q - kv).float() <= 20.0, 1, 150, 140),
    "window_parameter": (window(20.5), 1, 150, 140),
    "window_per_head": (lambda b, h, q, kv: (q - kv) < WINDOWS[h], 6, 120, 130),
    "window_per_head_float64": (lambda b, h, q, kv: (q - kv).abs() <= WINDOWS.double()[h], 6, 120, 130),
    "alibi_threshold": (lambda b, h, q, kv: SLOPES[h] * (q - kv) > -4.0, 4, 120, 130),
    "half_causal_parameter": (scaled_causal(0.5), 1, 150, 140),
    "scaled_causal_parameter": (scaled_causal(0.3), 1, 150, 140),
    "scaled_causal_constant": (lambda b, h, q, kv: q * 0.3 >= kv, 1, 150, 140),
    "floor_division": (lambda b, h, q, kv: (q // 2).float() >= kv, 1, 150, 140),
    "floor_of_true_division": (lambda b, h, q, kv: torch.floor(q / 2.0) >= kv, 1, 150, 140),
    "ceil_of_true_division": (lambda b, h, q, kv: torch.ceil(q / 4.0) + 0.5 < kv * 0.25, 1, 150, 140),
    "truncated": (lambda b, h, q, kv: (q * 0.75).int() == kv // 2, 1, 150, 140),
    "half_precision": (lambda b, h, q, kv: (q - kv).half() * 0.5 < 7.25, 1, 150, 140),
    "float_sum": (lambda b, h, q, kv: q.float() - kv.float() >= -10.5, 1, 150, 140),
}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_float_families_are_classified_exactly(name: str) -> None:
    mask_mod, H, Q, KV = FAMILIES[name]
    assert_exact(traced(mask_mod), H, Q, KV, sizes=(16, 32))


def test_true_division_is_sound_and_decides_most_tiles() -> None:
    m = traced(lambda b, h, q, kv: q / (kv + 1) >= 2)
    expected, got = brute_force(m, 1, 150, 140, 16, 16), classified_tiles(m, 150, 140, 16)
    assert_sound(expected, got)
    # a quotient is widened by a few units in the last place (a GPU divides approximately): tiles whose
    # corner meets the threshold exactly stay partial
    assert (got == PARTIAL).sum() <= 2 * (expected == PARTIAL).sum()


def classified_tiles(m: Traced, Q: int, KV: int, block: int) -> torch.Tensor:
    return classified(m, 1, Q, KV, block, block)[0]


def test_a_float_constant_gives_the_integer_mask_s_tests() -> None:
    as_float = traced(lambda b, h, q, kv: (q - kv).abs() < 40.5).mask
    as_int = traced(lambda b, h, q, kv: (q - kv).abs() <= 40).mask
    assert tile_test(as_float) == tile_test(as_int)
    assert kv_ranges(as_float) == kv_ranges(as_int)
    assert kv_full_range(as_float) == kv_full_range(as_int)


@pytest.mark.parametrize("mask_mod", [window(20.5), scaled_causal(0.5), scaled_causal(0.3),
                                      lambda b, h, q, kv: (q - kv) < WINDOWS[h]])
def test_float_masks_keep_one_closed_form_key_range(mask_mod) -> None:
    """Exactness conditions read the query tile only: no extra key range (which would cost the off-band
    loop), and a full range where the mask has a band."""
    mask = traced(mask_mod).mask
    assert len(kv_ranges(mask)) == 1
    assert kv_full_range(mask) is not None


def test_a_nan_parameter_allows_nothing() -> None:
    m = dataclasses.replace(traced(window(20.5)), params=(math.nan,))
    assert (classified_tiles(m, 64, 64, 16) == EMPTY).all()
    m = dataclasses.replace(m, params=(math.inf,))
    assert_sound(brute_force(m, 1, 64, 64, 16, 16), classified_tiles(m, 64, 64, 16))


def test_past_two_to_the_24_float32_rounding_is_never_mistaken_for_order() -> None:
    # 2**24 + 1 rounds to 2**24 in float32: there q.float() >= kv.float() holds for q < kv
    m = traced(lambda b, h, q, kv: q.float() >= kv.float())
    for lo in (2**24 - 40, 2**24 - 3, 2**24 + 1, 2**25 + 5, INT32_MAX - 20):
        box = (lo, lo + 6, lo + 1, lo + 9)
        values = evaluate(m.mask, _box_env(box, 0, 0))
        got = box_class(m.mask, _box_env(box, 0, 0))
        assert got != EMPTY or not values.any()
        assert got != FULL or values.all()
    exact = (2**24 - 40, 2**24 - 34, 2**24 - 20, 2**24 - 10)  # far enough below: decided
    assert box_class(m.mask, _box_env(exact, 0, 0)) == EMPTY


def box_class(mask: Node, env: Env, load_range=None) -> int:
    test = tile_test(mask, load_range=load_range)
    if not evaluate(test.may_true, env):
        return EMPTY
    return FULL if not evaluate(test.may_false, env) else PARTIAL


# -- soundness on random float masks ------------------------------------------------------------------------


@st.composite
def wide_boxes(draw: st.DrawFn) -> tuple[int, int, int, int]:
    """Small boxes near 0, around 2**24 (where float32 stops holding every integer) and anywhere."""
    start = st.one_of(st.integers(0, 120), st.integers(2**24 - 40, 2**24 + 40), st.integers(2**11 - 20, 2**11 + 20),
                      st.integers(0, INT32_MAX - 6))
    q_lo = draw(start)
    kv_lo = draw(st.one_of(start, st.integers(max(0, q_lo - 50), min(q_lo + 50, INT32_MAX - 6))))
    return q_lo, q_lo + draw(st.integers(0, 6)), kv_lo, kv_lo + draw(st.integers(0, 6))


def box_load_range(mask: Node, env: Env):
    """The exact (min, max, NaN state) of each per-position load over the box, as constants."""
    bounds = {}
    for n in mask.walk():
        if n.op is Op.LOAD and n.deps & {"q", "kv"}:
            values = evaluate(n, env).flatten().double()
            nan = values.isnan()
            kept = values[~nan]
            lo, hi = (kept.min().item(), kept.max().item()) if len(kept) else (0.0, 0.0)
            state = int(nan.any()) + int(nan.all())
            pair = (const(lo, n.dtype), const(hi, n.dtype))
            bounds[n] = pair if not state else (*pair, const(state, DType.int32))
    return bounds.get


@settings(max_examples=150, deadline=None)
@given(irs.float_masks(), irs.float_mask_values(), wide_boxes(), st.integers(0, irs.HEADS - 1), st.booleans())
def test_random_float_masks_are_classified_soundly_in_any_box(mask, values, box, h, ranged) -> None:
    tensors, params = values
    env = _box_env(box, 0, h, tensors, params)
    allowed = evaluate(mask, env)
    got = box_class(mask, env, box_load_range(mask, env) if ranged else None)
    assert got != EMPTY or not allowed.any(), f"EMPTY, but the mask holds in {box}"
    assert got != FULL or allowed.all(), f"FULL, but the mask fails in {box}"


@settings(max_examples=30, deadline=None)
@given(irs.float_masks(), irs.float_mask_values(), st.integers(20, 70), st.integers(20, 70), st.integers(3, 17),
       st.integers(3, 17))
def test_random_float_masks_are_classified_soundly_by_blocks(mask, values, Q, KV, bq, bk) -> None:
    """The sparsity engine end to end (per-tile tables of the float data, NaN states) against brute force."""
    tensors, params = values
    program = Program(mask=mask, tensors=irs.FLOAT_MASK_TENSORS, params=irs.FLOAT_MASK_PARAMS)
    classes = classify_blocks(program, tensors, params, B=1, H=irs.HEADS, Q_LEN=Q, KV_LEN=KV, q_block=bq,
                              kv_block=bk, device=torch.device("cpu"))
    expected = brute_force(Traced(mask, tensors, params), irs.HEADS, Q, KV, bq, bk)
    assert_sound(expected, classes[0])


# -- against torch and the reference attention --------------------------------------------------------------


def torch_examples() -> dict[str, object]:
    window_t = torch.tensor([40.5, 100.25, 7.0, 300.0])
    return {
        "abs_window_40.5": lambda b, h, q, kv: (q - kv).abs() < 40.5,
        "window_parameter": window(40.5),
        "window_per_head": lambda b, h, q, kv: (q - kv) < window_t[h],
        "alibi_threshold": lambda b, h, q, kv: SLOPES[h] * (q - kv) > -4.0,
        "half_causal": lambda b, h, q, kv: q * 0.5 >= kv,
        "floor_division_as_float": lambda b, h, q, kv: (q // 2).float() >= kv,
        "floor_of_true_division": lambda b, h, q, kv: torch.floor(q / 2.0) >= kv,
        "true_division": lambda b, h, q, kv: q / (kv + 1) >= 2,
    }


@pytest.mark.parametrize("name", sorted(torch_examples()))
def test_block_maps_equal_torch_s(name: str) -> None:
    mask_mod, S = torch_examples()[name], 1024
    ours = attnc.create_block_mask(mask_mod, None, 4, S, S, device="cpu")
    theirs = torch_create_block_mask(mask_mod, None, 4, S, S, device="cpu")
    assert ours.sparsity() == pytest.approx(theirs.sparsity())
    assert torch.equal(ours.to_dense().bool().expand(1, 4, 8, 8), theirs.to_dense().bool().expand(1, 4, 8, 8))


def test_nan_in_float_data_never_makes_a_block_full() -> None:
    S = 256
    limits = torch.full((S,), 1000.0)
    limits[64:96], limits[130] = math.nan, math.nan
    for mask_mod in (lambda b, h, q, kv: (q - kv).abs() < limits[q], lambda b, h, q, kv: limits[kv] * 0.5 >= q * 0.25,
                     lambda b, h, q, kv: (q - kv).float() != limits[q]):
        ours = attnc.create_block_mask(mask_mod, None, None, S, S, device="cpu", BLOCK_SIZE=32)
        theirs = torch_create_block_mask(mask_mod, None, None, S, S, device="cpu", BLOCK_SIZE=32)
        assert torch.equal(ours.kv_num_blocks, theirs.kv_num_blocks)
        assert torch.equal(ours.full_kv_num_blocks, theirs.full_kv_num_blocks)


@pytest.mark.parametrize("name", ["window_parameter", "alibi_threshold", "half_causal", "true_division"])
def test_kernel_with_a_float_mask_matches_the_reference(name: str) -> None:
    mask_mod = torch_examples()[name]
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, n, 16, generator=g) for n in (150, 130, 130))
    attn = attnc.compile(mask_mod)
    out, lse = attn(q, k, v, return_lse=True, backend="triton", kernel_options={"BLOCK_M": 32, "BLOCK_N": 32})
    ref_out, ref_lse = attn(q, k, v, return_lse=True, backend="reference")
    torch.testing.assert_close(out, ref_out, atol=2e-5, rtol=2e-5)
    assert torch.equal(lse.isinf(), ref_lse.isinf())
    stats = attn.tile_stats(1, 4, 150, 130, BLOCK_M=32, BLOCK_N=32)
    assert stats["empty"] > 0 and (stats["full"] > 0 or name == "window_parameter")


def test_sign_of_nan_is_zero_in_kernels_as_in_torch() -> None:
    S = 40
    data = torch.linspace(-2.0, 2.0, S)
    data[::3] = math.nan
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, S, 16, generator=g) for _ in range(3))
    attn = attnc.compile(mask_mod=lambda b, h, q_idx, kv_idx: torch.sign(data[kv_idx]) >= 0,
                         score_mod=lambda s, b, h, q_idx, kv_idx: s + torch.sign(data[q_idx]))
    out = attn(q, k, v, backend="triton", kernel_options={"BLOCK_M": 16, "BLOCK_N": 16})
    torch.testing.assert_close(out, attn(q, k, v, backend="reference"), atol=2e-5, rtol=2e-5)
