# What every kernel template shares (its `helpers` hole): the base-2 softmax constants and scalar helpers
# the generated expressions call. Python semantics where Triton's differ: Triton's integer `//` and `%`
# truncate toward zero, Python's (and PyTorch's floor modes) round toward -inf.
import triton
import triton.language as tl

# Single-instruction forms of transcendental functions (tanh.approx.f32 through inline PTX), for kernels
# that say so with a FAST_MATH constexpr of their own: on a GPU, for 16-bit inputs. This module-level
# value is what kernels without that parameter (the block-map builder) see.
FAST_MATH = tl.constexpr(False)
# Every kernel's online softmax runs in base 2: exp(x) = 2^(x log2(e)), log(l) = log2(l) ln(2)
LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _finite_max(m):
    # A row that has seen no allowed key keeps m = -inf; subtracting 0 instead keeps its exponents finite,
    # so such rows accumulate exact zeros instead of NaN.
    return tl.where(m == float("-inf"), 0.0, m)


@triton.jit
def _online_softmax(acc, l_i, m_i, score, v, qk_scale, tile_bias, AFFINE_BIAS: tl.constexpr,
                    HAS_SCORE_MOD: tl.constexpr, SCALE_POSITIVE: tl.constexpr, DOT_PRECISION: tl.constexpr):
    # One key tile of the online softmax in base 2: the running maximum m_i and the exponents are logits times
    # log2(e), and whatever scale the score still lacks reaches it in the multiply-add that subtracts the
    # maximum. `score`: with an affine bias, scaled and biased per column (`tile_bias`, the tile's own term,
    # joins the maximum); with a score mod, the modified score but for a positive last factor, which `qk_scale`
    # carries with log2(e) (`score_log2e` in the tile functions); else q.k, scaled unless SCALE_POSITIVE.
    if AFFINE_BIAS:
        m_new = tl.maximum(m_i, tl.max(score, 1) + tile_bias)
        m_safe = _finite_max(m_new)
        p = tl.exp2(score - (m_safe - tile_bias)[:, None])
    elif HAS_SCORE_MOD or SCALE_POSITIVE:  # the scaled maximum is the maximum of the scaled scores
        m_new = tl.maximum(m_i, tl.max(score, 1) * qk_scale)
        m_safe = _finite_max(m_new)
        p = tl.exp2(score * qk_scale - m_safe[:, None])
    else:
        m_new = tl.maximum(m_i, tl.max(score, 1))
        m_safe = _finite_max(m_new)
        p = tl.exp2(score - m_safe[:, None])
    alpha = tl.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
    return acc, l_i, m_new


@triton.jit
def _float_argument(x, compute: tl.constexpr):
    # A float scalar argument (the scale, a mod's float parameter) for a kernel computing in `compute`. Triton
    # passes every Python float as a float32, so for float64 the launcher sends a double's 64 bits as an integer
    # (`launch.scalar_argument`), which is int64 but for bits that fit in int32 (0.0, or a whole number given
    # for a float parameter): those are read as numbers. float32 arguments pass unchanged.
    if compute == tl.float64:
        if x.dtype == tl.int64:
            return x.to(tl.float64, bitcast=True)
        else:
            return tl.cast(x, tl.float64)
    else:
        return x


@triton.jit
def _float_param(x, compute: tl.constexpr):
    # A mod's float parameter as a tensor of the compute dtype. In the Triton interpreter a float32 one arrives
    # as a Python float, whose `%` raises on a zero divisor where a GPU gives NaN: as a tensor it behaves the
    # same in both.
    return tl.cast(_float_argument(x, compute), compute)


@triton.jit
def _half(x, half: tl.constexpr, compute: tl.constexpr):
    # A 16-bit float result: rounded to `half`, as PyTorch computes it. A float64 kernel keeps it in float64,
    # as the float64 reference keeps every float.
    if compute == tl.float64:
        return tl.cast(x, tl.float64)
    else:
        return tl.cast(x, half)


@triton.jit
def _floordiv(a, b):
    q = a // b
    return tl.where(((a % b) != 0) & ((a < 0) != (b < 0)), q - 1, q)


@triton.jit
def _mod(a, b):
    r = a % b
    return tl.where((r != 0) & ((r < 0) != (b < 0)), r + b, r)


@triton.jit
def _floordiv_float(a, b):
    # As PyTorch's floor division of floats: exact quotient from fmod, then floor with a round-off fix.
    m = a % b
    div = (a - m) / b
    div = tl.where((m != 0) & ((b < 0) != (m < 0)), div - 1.0, div)
    floored = tl.floor(div)
    floored = tl.where(div - floored > 0.5, floored + 1.0, floored)
    return tl.where(b == 0, a / b, floored)


@triton.jit
def _tanh(x, FAST: tl.constexpr):
    if FAST:
        # One MUFU op; absolute error below 2^-10.9 (about 5e-4), under a bf16 rounding step of a logit
        # near 1 and invisible after softmax in 16-bit attention.
        return tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [x.to(tl.float32)],
                                         dtype=tl.float32, is_pure=True, pack=1)
    else:
        # tanh(x) = sign(x) * (1 - e^(-2|x|)) / (1 + e^(-2|x|)): no overflow for large |x|.
        t = tl.exp(-2.0 * tl.abs(x))
        y = (1.0 - t) / (1.0 + t)
        return tl.where(x < 0, -y, y)


@triton.jit
def _log1p(x):
    # log(u) * x / (u - 1) with u = 1 + x cancels the rounding error of forming 1 + x.
    u = 1.0 + x
    exact = u == 1.0
    # the unselected branch divides by 1 instead of 0: no 0 / 0 computed, even where it is discarded
    return tl.where(exact, x, tl.log(u) * (x / tl.where(exact, 1.0, u - 1.0)))


@triton.jit
def _powf(a, b):
    # a ** b for float a, b, including negative bases with integral exponents; x ** 0 == 1 ** y == 1.
    magnitude = tl.exp2(b * tl.log2(tl.abs(a)))
    integral = tl.floor(b) == b
    odd = tl.where(integral, tl.abs(b % 2.0) == 1.0, False)
    negative_base = tl.where(integral, tl.where(odd, -magnitude, magnitude), float("nan"))
    result = tl.where(a < 0, negative_base, magnitude)
    return tl.where(b == 0, 1.0, tl.where(a == 1, 1.0, result))


@triton.jit
def _div_magic(d):
    # For floor division by a value known outside the loop: shift = ceil(log2 |d|) and m = floor(2^32 (2^shift - |d|)
    # / |d|) + 1, so that n // |d| == (umulhi(n, m) + n) >> shift for every 0 <= n < 2^31 (Granlund and
    # Montgomery's round-up method); computed once per program. A zero divisor is taken as 1.
    d = tl.maximum(tl.abs(d), 1)
    x = d - 1
    big = x >= 65536
    shift = tl.where(big, 16, 0)
    x = tl.where(big, x >> 16, x)
    big = x >= 256
    shift = tl.where(big, shift + 8, shift)
    x = tl.where(big, x >> 8, x)
    big = x >= 16
    shift = tl.where(big, shift + 4, shift)
    x = tl.where(big, x >> 4, x)
    big = x >= 4
    shift = tl.where(big, shift + 2, shift)
    x = tl.where(big, x >> 2, x)
    big = x >= 2
    shift = tl.where(big, shift + 1, shift)
    x = tl.where(big, x >> 1, x)
    shift = shift + tl.where(x > 0, 1, 0)
    wide = tl.cast(d, tl.int64)
    m = ((tl.cast(1, tl.int64) << tl.cast(shift, tl.int64)) - wide) * 4294967296 // wide + 1
    return tl.cast(m, tl.uint32), tl.cast(shift, tl.uint32)


@triton.jit
def _floordiv_magic(a, d, m, shift):
    # Python's a // d through the magic of _div_magic(d): floor(a / d) == floor(-a / -d), and for a negative
    # numerator floor(a / d) == ~(~a // d). One multiply-high instead of a division sequence.
    a = tl.where(d < 0, -a, a)
    nonnegative = a >= 0
    u = tl.cast(tl.where(nonnegative, a, ~a), tl.uint32)
    q = tl.cast((tl.umulhi(u, m) + u) >> shift, tl.int32)
    return tl.where(nonnegative, q, ~q)


@triton.jit
def _floordiv_magic_nonneg(a, m, shift):
    # a // d for 0 <= a < 2^31 and d > 0: the magic's multiply-high, add and shift, without the sign fixes
    u = tl.cast(a, tl.uint32)
    return tl.cast((tl.umulhi(u, m) + u) >> shift, tl.int32)


@triton.jit
def _mod_magic(a, d, m, shift):
    # Python's a % d (the sign of d) from the floor quotient
    return a - _floordiv_magic(a, d, m, shift) * d


@triton.jit
def _atan(x):
    # |x| > 1 through atan(t) = pi/2 - atan(1/t); t > tan(pi/8) through atan(t) = pi/4 + atan((t - 1)/(t + 1));
    # then atan(u) = u + u^3 P(u^2) on |u| <= tan(pi/8), P a least-squares fit (relative error < 3e-9); float64
    # halves u once more and sums the Taylor series (_atan_series).
    t = tl.abs(x)
    outer = t > 1.0
    t = tl.where(outer, 1.0 / tl.where(outer, t, 1.0), t)
    middle = t > 0.41421356237309503
    u = tl.where(middle, (t - 1.0) / (t + 1.0), t)
    z = u * u
    if x.dtype == tl.float64:
        r = 2.0 * _atan_series(u / (1.0 + tl.sqrt(1.0 + z)))
    else:
        p = -0.06459380905500625
        p = p * z + 0.10746300220773844
        p = p * z - 0.14264232782943018
        p = p * z + 0.1999955008687265
        p = p * z - 0.3333333181356032
        r = u + u * z * p
    r = tl.where(middle, 0.7853981633974483 + r, r)
    r = tl.where(outer, 1.5707963267948966 - r, r)
    return tl.where(x < 0, -r, r)


@triton.jit
def _atan_series(v):
    # atan(v) = v - v^3/3 + v^5/5 - ... to v^23 for |v| <= tan(pi/16) < 0.2 (2 atan(v) = atan(u) with
    # v = u / (1 + sqrt(1 + u^2))): the first term left out is below 2^-60 of the sum, under float64's last bit.
    w = v * v
    s = -1.0 / 23.0
    s = s * w + 1.0 / 21.0
    s = s * w - 1.0 / 19.0
    s = s * w + 1.0 / 17.0
    s = s * w - 1.0 / 15.0
    s = s * w + 1.0 / 13.0
    s = s * w - 1.0 / 11.0
    s = s * w + 1.0 / 9.0
    s = s * w - 1.0 / 7.0
    s = s * w + 1.0 / 5.0
    s = s * w - 1.0 / 3.0
    return v + v * w * s


@triton.jit
def _rsqrt(x):
    # tl.rsqrt is an approximation on a GPU (rsqrt.approx.f64 for float64): float64 takes a correctly rounded
    # square root and a division instead
    if x.dtype == tl.float64:
        return 1.0 / tl.sqrt(x)
    else:
        return tl.rsqrt(x)


@triton.jit
def _expm1(x):
    # (u - 1) * x / log(u) with u = e^x cancels the rounding error of e^x near 0 (Kahan); away from 0, u - 1
    # loses nothing. The unselected branch takes the log of 2, never of 1 or of inf.
    u = tl.exp(x)
    near = (tl.abs(x) < 0.5) & (u != 1.0)
    corrected = (u - 1.0) * (x / tl.log(tl.where(near, u, 2.0)))
    return tl.where(u == 1.0, x, tl.where(near, corrected, u - 1.0))


@triton.jit
def _round_half_even(x):
    # torch.round: x - floor(x) is exact, so ties are seen as ties and go to the even neighbour. NaN and
    # infinities pass through (their fraction is NaN, which compares False).
    r = tl.floor(x)
    fraction = x - r
    half = r * 0.5
    odd = tl.floor(half) != half
    return tl.where((fraction > 0.5) | ((fraction == 0.5) & odd), r + 1.0, r)


@triton.jit
def _shl(a, s, BITS: tl.constexpr):
    # torch's a << s: 0 for a count outside [0, BITS) (a hardware shift would take it modulo BITS)
    inside = (s >= 0) & (s < BITS)
    return tl.where(inside, a << tl.where(inside, s, 0), 0)


@triton.jit
def _shr(a, s, BITS: tl.constexpr):
    # torch's a >> s (arithmetic): the sign fill for a count outside [0, BITS)
    inside = (s >= 0) & (s < BITS)
    return a >> tl.where(inside, s, BITS - 1)
