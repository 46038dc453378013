"""Two-sided integer bounds tested as one unsigned compare (attnc.codegen.intervals): where the rewrite applies,
and that the generated kernels (Triton interpreter on CPU) mask exactly the pairs the reference masks, empty
intervals, strict bounds, bounds at the int32 limits and wrapping key coordinates included."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import attnc
from attnc.codegen.intervals import conjunction_terms
from attnc.codegen.skeleton import Level, level
from attnc.ir.dtypes import DType
from attnc.ir.int_range import INT32, value_bounds
from attnc.ir.node import const, node, param, var
from attnc.ir.ops import Op

I32_MIN, I32_MAX = INT32
UNSIGNED_COMPARE = "tl.uint32) <"


def _per_element(n: Any) -> bool:
    return level(n) is Level.TILE


def _window_mask(lo: int, hi: int) -> Any:
    def window(b, h, q, kv):
        return (kv >= q - lo) & (kv <= q + hi)

    return window


def test_natten_window_compiles_to_unsigned_compares_in_every_kernel() -> None:
    attn = attnc.compile(attnc.variants.natten((8, 8), 3))
    for source in (attn.source.source, attn.decode_source.source, attn.backward_source.source):
        # one interval per axis of the canvas, in the forward, decode and dQ kernels
        assert source.count(UNSIGNED_COMPARE) == 2


def test_bounds_of_different_values_are_not_paired() -> None:
    # q - 3 <= kv and q - kv < 5 bound kv and q - kv (and, in the dK/dV kernel, q - 3 and q + 4 by kv)
    def causal_window(b, h, q, kv):
        return (kv >= q - 3) & (q - kv < 5)

    attn = attnc.compile(causal_window)
    assert UNSIGNED_COMPARE not in attn.source.source + attn.backward_source.source
    two_sided = attnc.compile(_window_mask(3, 4))
    assert two_sided.source.source.count(UNSIGNED_COMPARE) == 1
    assert two_sided.backward_source.source.count(UNSIGNED_COMPARE) == 1  # dQ's; dK/dV's has no shared x


def test_float_bounds_and_one_sided_masks_keep_their_comparisons() -> None:
    def float_window(b, h, q, kv):
        return (kv.float() >= q.float() - 2.5) & (kv.float() <= q.float() + 2.5)

    for mask in (float_window, attnc.variants.causal()):
        assert UNSIGNED_COMPARE not in attnc.compile(mask).source.source


def test_bounds_without_a_hoisted_side_are_not_paired() -> None:
    q, kv = var("q"), var("kv")
    kv2 = node(Op.MUL, DType.int32, kv, const(2, DType.int32))
    # q <= kv <= 2 kv: the upper bound moves with the key (its width would be computed per element)
    moving = node(Op.AND, DType.bool, node(Op.GE, DType.bool, kv, q), node(Op.LE, DType.bool, kv, kv2))
    assert conjunction_terms(moving, _per_element) is None
    # q <= kv and 2 kv <= n: bounds on two different values
    n = param(0, DType.int32)
    split = node(Op.AND, DType.bool, node(Op.GE, DType.bool, kv, q), node(Op.LE, DType.bool, kv2, n))
    assert conjunction_terms(split, _per_element) is None


def test_an_interval_that_may_be_all_of_int32_around_an_unbounded_value_is_not_paired() -> None:
    # kv + n may be INT32_MAX and the bounds (parameters) all of int32: the unsigned width cannot count 2^32 values
    x = node(Op.ADD, DType.int32, var("kv"), param(0, DType.int32))
    lo, hi = param(1, DType.int32), param(2, DType.int32)
    inclusive = node(Op.AND, DType.bool, node(Op.GE, DType.bool, x, lo), node(Op.LE, DType.bool, x, hi))
    assert conjunction_terms(inclusive, _per_element) is None
    # a strict bound leaves at most 2^32 - 1 values; a bounded x (kv itself) is never INT32_MAX
    strict = node(Op.AND, DType.bool, node(Op.GT, DType.bool, x, lo), node(Op.LE, DType.bool, x, hi))
    assert conjunction_terms(strict, _per_element) is not None
    bounded = node(Op.AND, DType.bool, node(Op.GE, DType.bool, var("kv"), lo), node(Op.LE, DType.bool, var("kv"), hi))
    assert conjunction_terms(bounded, _per_element) is not None


def test_value_bounds_of_division_and_remainder_by_unknown_divisors() -> None:
    kv, n = var("kv"), param(0, DType.int32)
    assert value_bounds(node(Op.MOD, DType.int32, kv, n))[1] < I32_MAX
    assert value_bounds(node(Op.MOD, DType.int32, n, kv))[0] > I32_MIN
    assert value_bounds(node(Op.FLOORDIV, DType.int32, kv, n)) == (-value_bounds(kv)[1], value_bounds(kv)[1])
    assert value_bounds(node(Op.FLOORDIV, DType.int32, n, kv)) == INT32  # INT32_MIN // -1 wraps around
    assert value_bounds(n) == INT32


# -- exactness: the generated kernels against the reference ------------------------------------------------------

Q_LEN, KV_LEN = 37, 45  # not multiples of any tile size
_LOWER = {"ge": lambda x, b: x >= b, "gt": lambda x, b: x > b, "le_mirrored": lambda x, b: b <= x}
_UPPER = {"le": lambda x, b: x <= b, "lt": lambda x, b: x < b, "gt_mirrored": lambda x, b: b > x}
# bound values: small ones that make rows empty (lo > hi) or partial, and the int32 limits
_VALUES = st.one_of(st.integers(-8, 50), st.sampled_from([I32_MIN, I32_MIN + 1, I32_MAX - 1, I32_MAX]))


def _run(mask_mod: Any, q_len: int = Q_LEN, kv_len: int = KV_LEN, *, rewritten: bool = True) -> None:
    """The forward's out and lse equal the reference's; `rewritten`: whether the kernel tests an interval."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, n, 16, generator=g) for n in (q_len, kv_len, kv_len))
    attn = attnc.compile(mask_mod)
    assert (UNSIGNED_COMPARE in attn.source.source) == rewritten
    out, lse = attn(q, k, v, return_lse=True, backend="triton")
    ref_out, ref_lse = attn(q, k, v, return_lse=True, backend="reference")
    masked = ref_lse.isinf()
    assert torch.equal(lse.isinf(), masked)
    assert torch.equal(out[masked], torch.zeros_like(out[masked]))  # a row without keys: out 0, lse -inf
    torch.testing.assert_close(out, ref_out, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(lse[~masked], ref_lse[~masked], atol=2e-5, rtol=2e-5)


@given(lower=st.sampled_from(sorted(_LOWER)), upper=st.sampled_from(sorted(_UPPER)), shift=_VALUES,
       lo_values=st.lists(_VALUES, min_size=Q_LEN, max_size=Q_LEN),
       hi_values=st.lists(_VALUES, min_size=Q_LEN, max_size=Q_LEN))
def test_per_row_bounds_from_tensors_mask_exactly(lower: str, upper: str, shift: int, lo_values: list[int],
                                                    hi_values: list[int]) -> None:
    """Each query row's own [lo, hi] (often empty, sometimes at the int32 limits) on the key shifted by a
    parameter, which wraps around where the shift is near the limits."""
    lo_table, hi_table = (torch.tensor(values, dtype=torch.int32) for values in (lo_values, hi_values))

    def rows(b, h, q, kv):
        x = kv + shift
        return _LOWER[lower](x, lo_table[q]) & _UPPER[upper](x, hi_table[q])

    # both bounds inclusive, from tables that may hold INT32_MIN and INT32_MAX, on an x that may be INT32_MAX
    _run(rows, rewritten=lower == "gt" or upper != "le")


@pytest.mark.parametrize(("lo", "hi"), [(3, 5), (0, 0), (5, 3), (-4, -1), (I32_MIN, I32_MAX), (I32_MAX, I32_MIN),
                                        (I32_MIN + 1, I32_MAX - 1)])
def test_parameter_windows_mask_exactly(lo: int, hi: int) -> None:
    """A window around the query whose size parameters may make it empty or wrap its ends around."""
    _run(_window_mask(lo, hi))


def test_natten_2d_and_a_window_with_other_terms_mask_exactly() -> None:
    _run(attnc.variants.natten((5, 9), (3, 3), dilation=(1, 2)), 45, 45)

    def window_after_prefix(b, h, q, kv):  # an interval, a third term and a float comparison
        return (q - 6 < kv) & (kv >= 3) & (kv.float() * 0.5 < 20.0) & (kv <= q + 2)

    _run(window_after_prefix)


def _gradients(mask_mod: Any, backend: str, q_len: int, kv_len: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    inputs = [torch.randn(1, 2, n, 16, generator=g).requires_grad_(True) for n in (q_len, kv_len, kv_len)]
    out, lse = attnc.compile(mask_mod)(*inputs, return_lse=True, backend=backend)
    weights = torch.randn(out.shape, generator=g)
    ((out * weights).sum() + torch.where(lse.isinf(), 0.0, lse).sum()).backward()
    return [t.grad for t in inputs]  # type: ignore[misc]


@pytest.mark.parametrize("case", ["natten", "window", "empty_rows"])
def test_backward_kernels_with_intervals_match_the_reference(case: str) -> None:
    """The dQ kernel pairs bounds on the key's coordinates (dK/dV sees bounds on different query terms)."""
    lo_table = torch.arange(Q_LEN, dtype=torch.int32) % 7 - 2
    hi_table = torch.where(torch.arange(Q_LEN) % 3 == 0, -5, lo_table + 9).to(torch.int32)  # every third row empty

    def empty_rows(b, h, q, kv):
        return (kv >= lo_table[q]) & (kv < hi_table[q])

    mask, q_len, kv_len = {"natten": (attnc.variants.natten((5, 9), 3), 45, 45),
                           "window": (_window_mask(2, 5), Q_LEN, KV_LEN),
                           "empty_rows": (empty_rows, Q_LEN, KV_LEN)}[case]
    assert UNSIGNED_COMPARE in attnc.compile(mask).backward_source.source
    got, expected = (_gradients(mask, backend, q_len, kv_len) for backend in ("triton", "reference"))
    for name, a, b in zip(("dq", "dk", "dv"), got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=2e-4, msg=lambda m, name=name: f"{name}: {m}")


def test_decode_with_an_interval_mask_matches_the_reference() -> None:
    def window(b, h, q, kv):  # the last queries of a long cache, a window of 9 keys ending 3 before each
        return (kv >= q + 30) & (kv <= q + 38)

    attn = attnc.compile(window)
    assert UNSIGNED_COMPARE in attn.decode_source.source
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 2, n, 16, generator=g) for n in (3, KV_LEN, KV_LEN))
    out, lse = attn.decode(q, k, v, num_splits=2)
    ref_out, ref_lse = attn(q, k, v, return_lse=True, backend="reference")
    torch.testing.assert_close(out, ref_out, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(lse, ref_lse, atol=2e-5, rtol=2e-5)


def test_other_terms_choose_the_width_of_one_interval() -> None:
    # NATTEN's two axes: one interval test per pair, the other axis choosing its width (one select on the score)
    attn = attnc.compile(attnc.variants.natten((3, 64), 3))
    masked = [line for line in attn.source.source.splitlines() if "tl.uint32) < tl.where(" in line]
    assert len(masked) == 1 and masked[0].count("tl.where(") == 1
