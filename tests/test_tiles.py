"""Tile classification (attnc.ir.tiles) against brute force: the mask evaluated at every pair of a tile.

Sound on random masks (never EMPTY or FULL when the tile is not); exact on random affine masks and on the
attention families kernels skip tiles for, at tile sizes 16 / 32 / 64 with odd lengths and Q != KV.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnc.dsl.trace import trace
from attnc.ir import DType, Node, Op, Program, const, load, node, param, var
from attnc.ir.interpret import Env, evaluate
from attnc.ir.ops import COMPARE
from attnc.ir.passes import optimize
from attnc.ir.tiles import EMPTY, FULL, PARTIAL, classify_grid, kv_ranges, tile_test
from attnc.ir.verify import verify
from tests import ir_strategies as irs

I32, BOOL = DType.int32, DType.bool
INT32_MAX = 2**31 - 1
SIZES = (16, 32, 64)


@dataclasses.dataclass(frozen=True)
class Traced:
    """A mask as production sees it (traced, optimised) with the values it reads."""

    mask: Node
    tensors: tuple[torch.Tensor, ...] = ()
    params: tuple[int | float, ...] = ()


def traced(mask_mod: Callable) -> Traced:
    t = trace(mask_mod, None)
    bindings = t.bind(mask_mod, None)
    return Traced(optimize(t.program).mask, bindings.tensors, bindings.params)


def _grid(values: torch.Tensor, dim: int) -> torch.Tensor:
    shape = [1, 1, 1, 1]
    shape[dim] = -1
    return values.to(torch.int32).view(shape)


def brute_force(m: Traced, H: int, Q: int, KV: int, bq: int, bk: int, b: int = 0) -> torch.Tensor:
    """The minimal classes `[H, q tiles, kv tiles]` of batch `b`: from the mask at every pair."""
    env = Env(b=_grid(torch.tensor([b]), 0), h=_grid(torch.arange(H), 1), q=_grid(torch.arange(Q), 2),
              kv=_grid(torch.arange(KV), 3), tensors=m.tensors, params=m.params)
    allowed = evaluate(m.mask, env).expand(1, H, Q, KV)[0]
    nq, nk = -(-Q // bq), -(-KV // bk)

    def reduce(pad: bool, fn: Callable) -> torch.Tensor:
        padded = torch.full((H, nq * bq, nk * bk), pad)
        padded[:, :Q, :KV] = allowed
        return fn(fn(padded.view(H, nq, bq, nk, bk), dim=4), dim=2)

    some, every = reduce(False, torch.any), reduce(True, torch.all)
    return torch.where(~some, EMPTY, torch.where(every, FULL, PARTIAL)).to(torch.int8)


def tile_bounds(length: int, block: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    lo = torch.arange(0, length, block)
    return _grid(lo, dim), _grid(torch.clamp(lo + block - 1, max=length - 1), dim)


def classified(m: Traced, H: int, Q: int, KV: int, bq: int, bk: int, b: int = 0, **kwargs: object) -> torch.Tensor:
    (q_lo, q_hi), (kv_lo, kv_hi) = tile_bounds(Q, bq, 2), tile_bounds(KV, bk, 3)
    out = classify_grid(m.mask, b=_grid(torch.tensor([b]), 0), h=_grid(torch.arange(H), 1), q_lo=q_lo, q_hi=q_hi,
                        kv_lo=kv_lo, kv_hi=kv_hi, tensors=m.tensors, params=m.params, **kwargs)
    return out.expand(1, H, q_lo.shape[2], kv_lo.shape[3])[0]


def assert_exact(m: Traced, H: int, Q: int, KV: int, sizes: Sequence[int] = SIZES, b: int = 0) -> None:
    for bq, bk in itertools.product(sizes, sizes):
        expected, got = brute_force(m, H, Q, KV, bq, bk, b), classified(m, H, Q, KV, bq, bk, b)
        assert_sound(expected, got)
        wrong = (got != expected).nonzero().tolist()
        assert not wrong, f"tiles {bq}x{bk} [h, i, j] classified PARTIAL but decidable: {wrong[:8]}"


def assert_sound(expected: torch.Tensor, got: torch.Tensor) -> None:
    unsound = ((got == EMPTY) & (expected != EMPTY)) | ((got == FULL) & (expected != FULL))
    assert not unsound.any(), f"unsound at [h, i, j] {unsound.nonzero().tolist()[:8]}"


# -- the families ---------------------------------------------------------------------------------------


def causal(b, h, q, kv):
    return q >= kv


def bottom_right(Q, KV):
    def mask(b, h, q, kv):
        return q + (KV - Q) >= kv

    return mask


def sliding_window(w):
    def mask(b, h, q, kv):
        return (q >= kv) & (q - kv < w)

    return mask


def bidirectional_window(w):
    def mask(b, h, q, kv):
        return (q - kv).abs() <= w

    return mask


def per_head_window(windows):
    def mask(b, h, q, kv):
        return (q >= kv) & (q - kv < windows[h])

    return mask


def prefix_lm(prefix):
    def mask(b, h, q, kv):
        return (kv < prefix) | (q >= kv)

    return mask


def chunked(chunk, constant=False):
    def mask(b, h, q, kv):
        c = int(chunk) if constant else chunk  # int(): a compile-time constant
        return (q // c == kv // c) & (q >= kv)

    return mask


def block_causal(frame):
    def mask(b, h, q, kv):
        return q // frame >= kv // frame

    return mask


def sinks(n_sinks, w):
    def mask(b, h, q, kv):
        return (kv < n_sinks) | ((q - kv < w) & (q >= kv))

    return mask


def dilated(w, d, constant=True):
    def mask(b, h, q, kv):
        dd = int(d) if constant else d
        return ((q - kv) % dd == 0) & (q - kv >= 0) & (q - kv < w * dd)

    return mask


def strided(stride):
    def mask(b, h, q, kv):
        s = int(stride)
        return ((q - kv < s) | ((q - kv) % s == 0)) & (q >= kv)

    return mask


def offsets(shift, floor):
    def mask(b, h, q, kv):
        return (q + shift >= kv) & (kv >= floor) & (q - kv <= 2 * shift + 3)

    return mask


def _neighbourhood_axis(qi, ki, size, k, dil, stride, is_causal):
    """NATTEN on one axis: keys of the query's residue class mod `dil`, a window of `k` class positions
    clamped inside the class (whose length depends on the residue); a stride group shares its window."""
    g = qi % dil
    qg, kg = qi // dil, ki // dil
    n = (size - g + dil - 1) // dil
    if stride > 1:
        qg = torch.clamp((qg // stride) * stride + (stride - 1) // 2, max=n - 1)
    same_class = ki % dil == g
    if is_causal:
        return same_class & (kg >= torch.clamp(qg - k + 1, min=0)) & (kg <= qg)
    start = torch.minimum(torch.clamp(qg - k // 2, min=0), n - k)
    return same_class & (kg >= start) & (kg < start + k)


def natten(canvas, kernel, dilation=None, stride=None, is_causal=None, constant=True):
    """A NATTEN neighbourhood on a row-major canvas (1-D, 2-D or 3-D). Dilation and stride are compile-time
    constants (int() in the mod); canvas and kernel sizes too if `constant`, else runtime parameters."""
    nd = len(canvas)
    dilation, stride = dilation or (1,) * nd, stride or (1,) * nd
    is_causal = is_causal or (False,) * nd

    def mask(b, h, q, kv):
        fix = int if constant else (lambda x: x)
        allowed, qr, kr = None, q, kv
        for axis in reversed(range(nd)):
            size = fix(canvas[axis])
            qa, ka = (qr % size, kr % size) if axis else (qr, kr)
            qr, kr = qr // size, kr // size
            ok = _neighbourhood_axis(qa, ka, size, fix(kernel[axis]), int(dilation[axis]), int(stride[axis]),
                                     is_causal[axis])
            allowed = ok if allowed is None else allowed & ok
        return allowed

    return mask


def video(frames, height, width, kernel):
    """Causal in time, clamped windows in space; sizes are runtime parameters and the frame index divides by
    their product, `q // (height * width)`."""
    def mask(b, h, q, kv):
        plane = height * width
        in_time = (kv // plane <= q // plane) & (kv // plane > q // plane - kernel)
        rows = _neighbourhood_axis((q // width) % height, (kv // width) % height, height, kernel, 1, 1, False)
        cols = _neighbourhood_axis(q % width, kv % width, width, kernel, 1, 1, False)
        return in_time & rows & cols

    return mask


FAMILIES = {
    "causal": (causal, 1, 100, 100),
    "causal_q_ne_kv": (causal, 1, 77, 130),
    "bottom_right": (bottom_right(77, 130), 1, 77, 130),
    "sliding_window": (sliding_window(37), 1, 150, 141),
    "bidirectional_window": (bidirectional_window(13), 1, 129, 150),
    "per_head_window": (per_head_window(torch.tensor([3, 40, 17], dtype=torch.int32)), 3, 150, 150),
    "prefix_lm": (prefix_lm(37), 1, 150, 150),
    "chunked_8": (chunked(8), 1, 150, 133),
    "chunked_48": (chunked(48), 1, 150, 150),
    "chunked_200_constant": (chunked(200, constant=True), 1, 301, 301),
    "chunked_24_constant": (chunked(24, constant=True), 1, 150, 150),
    "block_causal": (block_causal(20), 1, 150, 130),
    "sinks_window": (sinks(4, 30), 1, 150, 150),
    "dilated": (dilated(6, 3), 1, 150, 131),
    "dilated_parameter": (dilated(5, 4, constant=False), 1, 130, 130),
    "strided": (strided(16), 1, 150, 150),
    "strided_small": (strided(5), 1, 101, 99),
    "offsets": (offsets(9, 20), 1, 120, 133),
    "natten_1d": (natten((150,), (7,)), 1, 150, 150),
    "natten_1d_dilated": (natten((150,), (7,), (3,)), 1, 150, 150),
    "natten_1d_causal": (natten((150,), (5,), is_causal=(True,)), 1, 150, 150),
    "natten_1d_strided": (natten((150,), (9,), stride=(4,)), 1, 150, 150),
    "natten_1d_dilated_causal": (natten((149,), (5,), (2,), is_causal=(True,)), 1, 149, 149),
    "natten_1d_parameters": (natten((150,), (7,), constant=False), 1, 150, 150),
    "natten_2d": (natten((12, 12), (5, 5)), 1, 144, 144),
    "natten_2d_rectangular": (natten((10, 13), (3, 5)), 1, 130, 130),
    "natten_2d_dilated": (natten((10, 13), (3, 5), (1, 2)), 1, 130, 130),
    "natten_2d_causal_rows": (natten((12, 12), (3, 5), is_causal=(True, False)), 1, 144, 144),
    "natten_2d_strided": (natten((12, 11), (5, 5), stride=(2, 3)), 1, 132, 132),
    "natten_3d": (natten((4, 5, 6), (3, 3, 3)), 1, 120, 120),
    "video_parameters": (video(2, 10, 10, 3), 1, 200, 200),
}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_families_are_classified_exactly(name: str) -> None:
    mask_mod, H, Q, KV = FAMILIES[name]
    assert_exact(traced(mask_mod), H, Q, KV)


def test_parameter_divisors_stay_exact_where_divided_values_are_used_alone() -> None:
    # the canvas width is a runtime parameter; rows and columns are only read through // and %
    assert_exact(traced(natten((12, 12), (5, 5), constant=False)), 1, 144, 144)


# -- what the tests look like as IR -------------------------------------------------------------------


def test_causal_tests_are_one_comparison_each() -> None:
    test = tile_test(traced(causal).mask)
    assert test.may_true is node(Op.GE, BOOL, var("q_hi"), var("kv_lo"))  # EMPTY: the corner q_hi < kv_lo
    assert test.may_false is node(Op.LT, BOOL, var("q_lo"), var("kv_hi"))  # FULL: q_lo >= kv_hi


@pytest.mark.parametrize("name", ["causal", "sliding_window", "per_head_window", "natten_2d", "chunked_8"])
def test_tile_tests_are_verified_tile_constant_ir(name: str) -> None:
    mask_mod, *_ = FAMILIES[name]
    test = tile_test(traced(mask_mod).mask)
    for root in (test.may_true, test.may_false):
        verify(root, is_mask=True)
        read = {n.arg for n in root.walk() if n.op is Op.VAR}
        assert read <= {"b", "h", "q_lo", "q_hi", "kv_lo", "kv_hi"}
        assert all(not (n.deps & {"q", "kv"}) for n in root.walk() if n.op is Op.LOAD)


def test_parameters_change_the_answer_without_a_new_test() -> None:
    m = traced(sliding_window(10))
    (q_lo, q_hi), (kv_lo, kv_hi) = tile_bounds(64, 16, 2), tile_bounds(64, 16, 3)
    grid = dict(b=_grid(torch.zeros(1), 0), h=_grid(torch.zeros(1), 1), q_lo=q_lo, q_hi=q_hi, kv_lo=kv_lo, kv_hi=kv_hi)
    narrow = classify_grid(m.mask, params=(10,), **grid)
    wide = classify_grid(m.mask, params=(40,), **grid)
    assert (narrow[0, 0, 3, 0] == EMPTY) and (wide[0, 0, 3, 0] == PARTIAL)  # q in [48, 63], kv in [0, 15]


def test_wrap_around_is_never_mistaken_for_order() -> None:
    # q + 100 wraps to negative values for q > 2**31 - 101: there the mask is False, below it True
    m = traced(lambda b, h, q, kv: q + 100 >= kv)
    for q_lo in (INT32_MAX - 140, INT32_MAX - 110, INT32_MAX - 95, INT32_MAX - 30):
        box = (q_lo, q_lo + 20, 0, 20)
        values = evaluate(m.mask, _box_env(box, 0, 0))
        got = _class_at(m.mask, _box_env(box, 0, 0))
        assert got == (FULL if values.all() else PARTIAL)  # wrapping tiles are not decided, the others are


def test_tile_constant_float_conditions_decide_whole_tiles() -> None:
    def mask(b, h, q, kv):
        return (q >= kv) & (temperature > 0.5)

    temperature = 0.1
    m = traced(mask)
    assert (classified(m, 1, 64, 64, 16, 16) == EMPTY).all()
    assert torch.equal(classified(dataclasses.replace(m, params=(0.9,)), 1, 64, 64, 16, 16),
                       brute_force(traced(causal), 1, 64, 64, 16, 16))


def test_tile_constant_conditions_decide_whole_tiles() -> None:
    enabled = torch.tensor([True, False])

    def mask(b, h, q, kv):
        return enabled[h] & (q >= kv)

    m = traced(mask)
    got = classified(m, 2, 64, 64, 16, 16)
    assert (got[1] == EMPTY).all()
    assert torch.equal(got, brute_force(m, 2, 64, 64, 16, 16))


# -- soundness on random masks ----------------------------------------------------------------------


@st.composite
def boxes(draw: st.DrawFn) -> tuple[int, int, int, int]:
    """Small boxes anywhere in the index range, also where `q + c` wraps around int32."""
    start = st.one_of(st.integers(0, 200), st.integers(INT32_MAX - 200, INT32_MAX - 8), st.integers(0, INT32_MAX - 8))
    q_lo, kv_lo = draw(start), draw(start)
    return q_lo, q_lo + draw(st.integers(0, 6)), kv_lo, kv_lo + draw(st.integers(0, 6))


def _scalar(v: int) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.int32)


def _box_env(box: tuple[int, int, int, int], b: int, h: int, tensors: Sequence = (), params: Sequence = ()) -> Env:
    """The box's pairs as index grids, and its bounds as tile variables."""
    q_lo, q_hi, kv_lo, kv_hi = box
    return Env(b=_scalar(b), h=_scalar(h), q=_grid(torch.arange(q_lo, q_hi + 1), 2),
               kv=_grid(torch.arange(kv_lo, kv_hi + 1), 3), tensors=tensors, params=params, q_lo=_scalar(q_lo),
               q_hi=_scalar(q_hi), kv_lo=_scalar(kv_lo), kv_hi=_scalar(kv_hi))


def _class_at(mask: Node, env: Env) -> int:
    test = tile_test(mask)
    if not evaluate(test.may_true, env):
        return EMPTY
    return FULL if not evaluate(test.may_false, env) else PARTIAL


def assert_sound_in_box(mask: Node, box: tuple[int, int, int, int], b: int, h: int, tensors: Sequence = (),
                        params: Sequence = ()) -> int:
    """The class of one box, checked against the mask at its every pair."""
    box_env = _box_env(box, b, h, tensors, params)
    values = evaluate(mask, box_env)
    got = _class_at(mask, box_env)
    assert got != EMPTY or not values.any(), f"EMPTY, but the mask holds in {box}"
    assert got != FULL or values.all(), f"FULL, but the mask fails in {box}"
    return got


@settings(max_examples=100)
@given(irs.masks(depth=4), irs.envs(), boxes(), st.integers(0, 3), st.integers(0, 3))
def test_random_masks_are_classified_soundly(mask: Node, env: Env, box: tuple, b: int, h: int) -> None:
    assert_sound_in_box(mask, box, b, h, env.tensors, env.params)


# -- exactness on random affine masks ---------------------------------------------------------------

Q_, KV_ = var("q"), var("kv")
DIRECTIONS = (Q_, KV_, node(Op.SUB, I32, Q_, KV_))  # affine forms along q, kv and q - kv


def _i(v: int) -> Node:
    return const(v, I32)


@st.composite
def affine_terms(draw: st.DrawFn) -> Node:
    """k * f(d + c) + c' along one direction d, f one of identity, abs, min / max with a constant, floor
    division and modulo by a constant (of a form with a ±1 coefficient: the class the analysis is exact on)."""
    d = draw(st.sampled_from(DIRECTIONS))
    term = node(Op.ADD, I32, d, _i(draw(st.integers(-40, 40))))
    shape = draw(st.sampled_from(["plain", "abs", "min", "max", "floordiv", "mod"]))
    if shape == "abs":
        term = node(Op.ABS, I32, term)
    elif shape in ("min", "max"):
        term = node(Op.MIN if shape == "min" else Op.MAX, I32, term, _i(draw(st.integers(-20, 60))))
    elif shape in ("floordiv", "mod"):
        kind = Op.FLOORDIV if shape == "floordiv" else Op.MOD
        term = node(kind, I32, term, _i(draw(st.sampled_from([2, 3, 7, -4]))))
    scaled = node(Op.MUL, I32, term, _i(draw(st.integers(-3, 3))))
    return node(Op.ADD, I32, scaled, _i(draw(st.integers(-20, 20))))


@st.composite
def affine_atoms(draw: st.DrawFn) -> Node:
    rhs = draw(st.one_of(st.integers(-30, 60).map(_i), st.just(param(0, I32)), st.just(var("h"))))
    return node(draw(st.sampled_from(sorted(COMPARE, key=lambda o: o.value))), BOOL, draw(affine_terms()), rhs)


def affine_masks(leaves: int = 4) -> st.SearchStrategy[Node]:
    """and / or / xor / not / where of affine atoms."""
    def combine(children: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
        pair = st.tuples(st.sampled_from([Op.AND, Op.OR, Op.XOR]), children, children)
        triple = st.tuples(children, children, children)
        negated = children.map(lambda c: node(Op.NOT, BOOL, c))
        return st.one_of(pair.map(lambda t: node(t[0], BOOL, t[1], t[2])), negated,
                         triple.map(lambda t: node(Op.WHERE, BOOL, *t)))

    return st.recursive(affine_atoms(), combine, max_leaves=leaves)


@settings(max_examples=40)
@given(affine_masks(), st.integers(-5, 40), st.integers(3, 12), st.integers(3, 12))
def test_random_affine_masks_are_classified_exactly(mask: Node, offset: int, bq: int, bk: int) -> None:
    m = Traced(optimize(Program(mask=mask)).mask, params=(offset,))
    expected, got = brute_force(m, 2, 45, 38, bq, bk), classified(m, 2, 45, 38, bq, bk)
    assert_sound(expected, got)
    assert torch.equal(expected, got), f"not exact at {(got != expected).nonzero().tolist()[:8]}"


# -- int64 values of b and h -----------------------------------------------------------------------------
# An int64 tensor read at b or h makes PyTorch compare q and kv in int64. Values the analysis can track
# (within +-2**36) are decided exactly; others, and arithmetic that may wrap around, leave tiles PARTIAL.


def test_int64_padding_per_batch_is_exact() -> None:
    lengths = torch.tensor([150, 0, 37, 64, 2**33, -5], dtype=torch.int64)

    def mask(b, h, q, kv):
        return kv < lengths[b]

    m = traced(mask)
    for b in range(len(lengths)):
        assert_exact(m, 1, 70, 141, sizes=(16, 32), b=b)


def test_int64_per_head_window_is_exact() -> None:
    windows = torch.tensor([3, 40, 0, 2**34], dtype=torch.int64)
    assert_exact(traced(bidirectional_window_at(windows)), 4, 100, 90, sizes=(16, 32))


def bidirectional_window_at(windows: torch.Tensor) -> Callable:
    def mask(b, h, q, kv):
        return (q - kv).abs() <= windows[h]

    return mask


def test_int64_sums_and_extremes_are_exact() -> None:
    lengths = torch.tensor([90, 33], dtype=torch.int64)
    shifts = torch.tensor([-7, 12], dtype=torch.int64)
    windows = torch.tensor([20, 5, 60], dtype=torch.int64)

    def mask(b, h, q, kv):
        reach = torch.minimum(q + shifts[b], lengths[b] - 1)
        return (kv <= reach) & (torch.maximum(kv, q - windows[h]) + shifts[b] >= q - 3)

    m = traced(mask)
    for b in range(2):
        assert_exact(m, 3, 100, 100, sizes=(16, 32), b=b)


def test_int64_arithmetic_that_may_wrap_stays_sound() -> None:
    # batch 0: kv + offset wraps around int64 from kv = 50 on (the mask turns True there); batch 1 is plain
    offsets = torch.tensor([2**63 - 50, 7], dtype=torch.int64)
    lengths = torch.tensor([100, 60], dtype=torch.int64)

    def mask(b, h, q, kv):
        return kv + offsets[b] < lengths[b]

    m = traced(mask)
    expected, got = brute_force(m, 1, 64, 100, 16, 16, b=0), classified(m, 1, 64, 100, 16, 16, b=0)
    assert_sound(expected, got)
    assert (expected != PARTIAL).any()  # the wrap-around makes decidable tiles that must not be trusted
    assert_exact(m, 1, 64, 100, sizes=(16,), b=1)


def test_int64_values_narrowed_to_int32_stay_sound() -> None:
    # (kv + big).to(int32) wraps around int32: for 2**31 - 10 from kv = 10 on, for 2**32 + 5 it is kv + 5
    big = torch.tensor([2**31 - 10, 2**32 + 5, 3], dtype=torch.int64)

    def mask(b, h, q, kv):
        return (kv + big[b]).to(torch.int32) >= q

    m = traced(mask)
    boxes = [(0, 20, 0, 20), (0, 5, 12, 30), (30, 40, 0, 8), (INT32_MAX - 30, INT32_MAX, INT32_MAX - 40, INT32_MAX)]
    for b, box in itertools.product(range(3), boxes):
        assert_sound_in_box(m.mask, box, b, 0, m.tensors)
    assert_exact(m, 1, 64, 64, sizes=(16,), b=2)


def test_divisors_that_are_not_positive_or_wrap_stay_sound() -> None:
    divisors = torch.tensor([-1, 3, 2**40], dtype=torch.int64)

    def by_load(b, h, q, kv):
        return q // divisors[h] >= kv

    m = traced(by_load)
    assert_sound(brute_force(m, 3, 64, 64, 16, 16), classified(m, 3, 64, 64, 16, 16))
    # a product of parameters that wraps around int32: 65537 * 65537 is 131073 there, not 2**32 + 131073
    d = node(Op.MUL, I32, param(0, I32), param(1, I32))
    product = node(Op.EQ, BOOL, node(Op.FLOORDIV, I32, Q_, d), node(Op.FLOORDIV, I32, KV_, d))
    for box in [(131060, 131080, 131060, 131080), (131060, 131070, 131075, 131080)]:
        assert_sound_in_box(product, box, 0, 0, params=(65537, 65537))


# -- loads read through per-tile ranges ------------------------------------------------------------------


def test_per_tile_ranges_of_loads_decide_document_tiles() -> None:
    doc = torch.repeat_interleave(torch.arange(5, dtype=torch.int32), torch.tensor([30, 7, 50, 1, 62]))

    def document(b, h, q, kv):
        return doc[q] == doc[kv]

    m = traced(document)
    block = 16
    tiles = torch.nn.functional.pad(doc, (0, -len(doc) % block), value=int(doc[-1])).view(-1, block)
    ranges = (tiles.amin(1), tiles.amax(1))
    n = len(m.tensors)

    def load_range(load_node: Node) -> tuple[Node, Node] | None:
        axis = "q" if "q" in load_node.deps else "kv"
        tile = node(Op.FLOORDIV, I32, var(f"{axis}_lo"), _i(block))
        return load(n, I32, tile), load(n + 1, I32, tile)

    with_ranges = dataclasses.replace(m, tensors=(*m.tensors, *ranges))
    L = len(doc)
    got = classified(with_ranges, 1, L, L, block, block, load_range=load_range)
    assert torch.equal(got, brute_force(m, 1, L, L, block, block))  # ids are sorted and contiguous
    assert (classified(m, 1, L, L, block, block) == PARTIAL).all()  # without ranges nothing is known


# -- closed-form key ranges ---------------------------------------------------------------------------------


def _kv_sets(m: Traced, Q: int, KV: int, block: int) -> list[tuple[set[int], set[int]]]:
    """Per query tile: the keys some query of the tile attends to, and the union of `kv_ranges` in [0, KV)."""
    ranges = kv_ranges(m.mask)
    out = []
    for q_lo in range(0, Q, block):
        q_hi = min(q_lo + block - 1, Q - 1)
        env = Env(b=torch.tensor(0), h=torch.tensor(0), q=_grid(torch.arange(q_lo, q_hi + 1), 2),
                  kv=_grid(torch.arange(KV), 3), tensors=m.tensors, params=m.params,
                  q_lo=torch.tensor(q_lo, dtype=torch.int32), q_hi=torch.tensor(q_hi, dtype=torch.int32))
        allowed = evaluate(m.mask, env).expand(1, 1, q_hi - q_lo + 1, KV).any(2).flatten()
        covered: set[int] = set()
        for lo, hi in ranges:
            a = 0 if lo is None else int(evaluate(lo, env))
            b = KV - 1 if hi is None else int(evaluate(hi, env))
            covered |= set(range(max(a, 0), min(b, KV - 1) + 1))
        out.append((set(allowed.nonzero().flatten().tolist()), covered))
    return out


@pytest.mark.parametrize("name", ["causal", "causal_q_ne_kv", "bottom_right", "sliding_window", "bidirectional_window",
                                  "prefix_lm", "sinks_window", "offsets"])
def test_kv_ranges_are_the_keys_a_query_tile_attends(name: str) -> None:
    mask_mod, _, Q, KV = FAMILIES[name]
    for block in (16, 48):
        for allowed, covered in _kv_sets(traced(mask_mod), Q, KV, block):
            assert allowed == covered


@pytest.mark.parametrize("name", ["chunked_8", "block_causal", "dilated", "strided", "natten_1d", "natten_2d",
                                  "per_head_window"])
def test_kv_ranges_cover_the_keys_a_query_tile_attends(name: str) -> None:
    mask_mod, _, Q, KV = FAMILIES[name]
    for allowed, covered in _kv_sets(traced(mask_mod), Q, KV, 32):
        assert allowed <= covered


def test_a_disjunct_without_the_key_allows_every_key_or_none() -> None:
    """`q < 10` reads no key: a query tile past it gets no keys from it (its other disjuncts still count),
    one before it every key. The ranges are then exactly the keys each tile attends to."""

    def early_queries_see_everything(b, h, q_idx, kv_idx):
        return (q_idx < 10) | ((q_idx >= kv_idx) & (q_idx - kv_idx < 5))

    def early_queries_only(b, h, q_idx, kv_idx):
        return q_idx < 10

    for mask_mod in (early_queries_see_everything, early_queries_only):
        for block in (4, 8, 16):
            for allowed, covered in _kv_sets(traced(mask_mod), 40, 40, block):
                assert allowed == covered
    assert len(kv_ranges(traced(early_queries_see_everything).mask)) == 1  # one loop, no tile test


def test_kv_ranges_name_each_disjunct() -> None:
    assert kv_ranges(traced(causal).mask) == [(None, var("q_hi"))]
    ranges = kv_ranges(traced(sinks(4, 30)).mask)  # the sinks [.., S - 1] and the window [q_lo - w + 1, q_hi]
    assert len(ranges) == 2 and {lo is None for lo, _ in ranges} == {True, False}
    assert kv_ranges(const(True, BOOL)) == [(None, None)]
    assert kv_ranges(const(False, BOOL)) == []


@settings(max_examples=40)
@given(affine_masks(), st.integers(-5, 40), st.sampled_from([5, 16]))
def test_kv_ranges_cover_random_affine_masks(mask: Node, offset: int, block: int) -> None:
    m = Traced(optimize(Program(mask=mask)).mask, params=(offset,))
    for allowed, covered in _kv_sets(m, 40, 37, block):
        assert allowed <= covered
