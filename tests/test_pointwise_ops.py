"""Pointwise functions in mods (activations, rounding, remainders, shifts, predicates), forward and backward.

Each function runs in a score mod (predicates and integer operations also in a mask) through the generated
kernel (Triton interpreter on CPU) and the reference interpreter, and is compared, as FlexAttention's own
suite compares, with torch applied densely: a float64 golden, a float32 eager computation, and
`error(attnc) <= K * error(eager)` against the golden, for the output and every gradient. The new kernel
helpers are also checked value by value against torch, special values included.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_block_mask as torch_create_block_mask

import attnc
from attnc.api import kernel_cache
from attnc.codegen.emit import RENDER
from attnc.codegen.skeleton import helper_lines
from attnc.ir.dtypes import DType
from attnc.ir.interpret import index_grids
from attnc.ir.node import load, node, var
from attnc.ir.ops import Op
from attnc.runtime.config import KernelConfig
from attnc.runtime.launch_backward import BackwardConfigs

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

B, H, Q_LEN, KV_LEN, D = 1, 2, 37, 45, 16  # lengths that are not tile multiples, Q != KV
K_FORWARD, K_BACKWARD = 2.0, 3.0
# relative to the golden's magnitude, an error this small is float32 rounding of the inputs themselves
FLOOR = 1e-7


def inputs(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = ((B, H, Q_LEN, D), (B, H, KV_LEN, D), (B, H, KV_LEN, D))
    return [torch.randn(s, generator=g).requires_grad_(True) for s in shapes]


def dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, score_mod: Callable | None,
          mask_mod: Callable | None, dtype: torch.dtype) -> torch.Tensor:
    """Softmax attention in `dtype` with the mods applied by torch itself to the whole score matrix."""
    q, k, v = (x.to(dtype) for x in (q, k, v))
    s = q @ k.transpose(-1, -2) * (1.0 / math.sqrt(q.shape[-1]))
    b, h, qi, ki = index_grids(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    if score_mod is not None:
        s = score_mod(s, b, h, qi, ki).to(dtype).expand_as(s)
    if mask_mod is not None:
        s = s.masked_fill(~mask_mod(b, h, qi, ki).expand_as(s), -math.inf)
    top = s.amax(-1, keepdim=True)
    p = torch.exp(s - torch.where(top.isinf(), 0.0, top))
    total = p.sum(-1, keepdim=True)
    return (p / torch.where(total == 0, 1.0, total)) @ v


def _weights(shape: torch.Size) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)


def _run(fn: Callable[..., torch.Tensor], leaves: list[torch.Tensor]) -> list[torch.Tensor]:
    """The output and the gradients of a weighted sum of it for every leaf, in float64."""
    for t in leaves:
        t.grad = None
    out = fn()
    (out.double() * _weights(out.shape)).sum().backward()
    return [out.detach().double()] + [torch.zeros_like(t).double() if t.grad is None else t.grad.double()
                                      for t in leaves]


def mean_error(x: torch.Tensor, golden: torch.Tensor) -> float:
    return float((x - golden).abs().mean())


def assert_like_torch(score_mod: Callable | None = None, mask_mod: Callable | None = None,
                      captured: tuple[torch.Tensor, ...] = ()) -> None:
    """attnc (kernel and reference) against dense torch: error to the float64 golden at most K times the
    float32 eager computation's, for the output and the gradients of q, k, v and `captured`."""
    q, k, v = inputs()
    leaves = [q, k, v, *captured]
    golden = _run(lambda: dense(q, k, v, score_mod, mask_mod, torch.float64), leaves)
    eager = _run(lambda: dense(q, k, v, score_mod, mask_mod, torch.float32), leaves)
    names = ["out", "dq", "dk", "dv", *(f"captured{i}" for i in range(len(captured)))]
    for backend in ("triton", "reference"):
        got = _run(lambda backend=backend: attnc.flex_attention(q, k, v, score_mod, mask_mod=mask_mod,
                                                                backend=backend), leaves)
        for i, name in enumerate(names):
            assert not got[i].isnan().any(), (backend, name)
            error, reference = mean_error(got[i], golden[i]), mean_error(eager[i], golden[i])
            bound = (K_FORWARD if i == 0 else K_BACKWARD) * max(reference, FLOOR * float(golden[i].abs().mean()))
            assert error <= bound, f"{backend} {name}: error {error:.3g} > {bound:.3g} (eager: {reference:.3g})"


# -- score mods: one function each, in its torch, Tensor method or torch.nn.functional form ---------------

SCORE_MODS: dict[str, Callable] = {
    "relu": lambda s, b, h, q, kv: F.relu(s * 4),
    "relu_method": lambda s, b, h, q, kv: (s * 4).relu() - 1,
    "gelu": lambda s, b, h, q, kv: F.gelu(s * 3),
    "gelu_tanh": lambda s, b, h, q, kv: F.gelu(s * 3, approximate="tanh"),
    "silu": lambda s, b, h, q, kv: F.silu(s * 3),
    "softplus": lambda s, b, h, q, kv: F.softplus(s * 3),
    "softplus_beta_threshold": lambda s, b, h, q, kv: F.softplus(s * 3, beta=2.0, threshold=3.0),
    "logsigmoid": lambda s, b, h, q, kv: F.logsigmoid(s * 3),
    "sigmoid": lambda s, b, h, q, kv: F.sigmoid(s * 3) * 4,
    "tanh": lambda s, b, h, q, kv: F.tanh(s) * 4,
    "tan": lambda s, b, h, q, kv: torch.tan(s * 0.3) * 3,
    "atan": lambda s, b, h, q, kv: torch.atan(s * 3) * 2,
    "erf": lambda s, b, h, q, kv: s.erf() * 3,
    "exp": lambda s, b, h, q, kv: torch.exp(s * 0.5),
    "expm1": lambda s, b, h, q, kv: torch.expm1(s * 0.01) * 100,
    "log": lambda s, b, h, q, kv: torch.log(s * s + 0.5),
    "log1p": lambda s, b, h, q, kv: torch.log1p(s * s * 0.01) * 100,
    "pow": lambda s, b, h, q, kv: torch.pow(s.abs() + 0.1, 1.5),
    "sqrt": lambda s, b, h, q, kv: (s * s + 0.1).sqrt(),
    "rsqrt": lambda s, b, h, q, kv: torch.rsqrt(s * s + 0.5),
    "abs": lambda s, b, h, q, kv: torch.abs(s) * 2,
    "sign": lambda s, b, h, q, kv: s + torch.sign(s),
    "floor": lambda s, b, h, q, kv: s + torch.floor(s * 2),
    "ceil": lambda s, b, h, q, kv: s + (s * 2).ceil(),
    "round": lambda s, b, h, q, kv: s + torch.round((q - kv) * 0.5),  # ties: half to even
    "round_decimals": lambda s, b, h, q, kv: torch.round(s, decimals=1),
    "trunc": lambda s, b, h, q, kv: s + torch.trunc((q - kv) * 0.3),
    "remainder": lambda s, b, h, q, kv: torch.remainder(s * 5, 1.3),
    "fmod": lambda s, b, h, q, kv: torch.fmod(s * 5, 1.3),
    "fmod_int": lambda s, b, h, q, kv: s + (torch.fmod(q - kv, 7) + torch.fmod(q - kv, (kv % 3) * 2 - 3)) * 0.1,
    "clamp": lambda s, b, h, q, kv: torch.clamp(s * 3, min=-1.0, max=2.0),
    "minimum_maximum": lambda s, b, h, q, kv: torch.maximum(torch.minimum(s, s * 0.5 + 0.2), s - 1),
    "where": lambda s, b, h, q, kv: torch.where(q >= kv, s * 2, s - 1),
    # counts out of range (negative ones included) and constant counts, which trace as * and //
    "shifts": lambda s, b, h, q, kv: s + ((q << (kv % 5)) >> (kv % 7) - 1) * 0.01 + ((q >> 2) - (kv << 1)) * 0.05,
    "bitwise": lambda s, b, h, q, kv: s + ((q ^ kv) & 3 | (~kv & 4)).float() * 0.1,
    "hardtanh": lambda s, b, h, q, kv: F.hardtanh(s * 3, min_val=-0.5, max_val=1.5),
    "leaky_relu": lambda s, b, h, q, kv: F.leaky_relu(s * 3, 0.2),
    "elu": lambda s, b, h, q, kv: F.elu(s * 3, alpha=0.5),
    "mish": lambda s, b, h, q, kv: F.mish(s * 3),
    "hardswish": lambda s, b, h, q, kv: F.hardswish(s * 4),
    "hardsigmoid": lambda s, b, h, q, kv: F.hardsigmoid(s * 4) * 3,
    "relu6": lambda s, b, h, q, kv: F.relu6(s * 8 + 2),
    "celu_selu": lambda s, b, h, q, kv: F.celu(s * 3, alpha=2.0) + F.selu(s * 2),
    "softsign_tanhshrink": lambda s, b, h, q, kv: F.softsign(s * 3) * 2 + F.tanhshrink(s * 2),
    "frac_square_reciprocal": lambda s, b, h, q, kv: torch.frac(s * 3) + s.square() + torch.reciprocal(s * s + 1),
    "logaddexp": lambda s, b, h, q, kv: torch.logaddexp(s * 2, (kv - q) * 0.1),
    "lerp": lambda s, b, h, q, kv: torch.lerp(s, s * s, 0.3) + s.lerp(-s, torch.sigmoid(s * 3)),
    "logit": lambda s, b, h, q, kv: torch.logit(torch.sigmoid(s * 2)) + torch.special.logit(torch.sigmoid(s), eps=0.2),
    "deg2rad_rad2deg": lambda s, b, h, q, kv: torch.deg2rad(s * 30) + torch.rad2deg(s * 0.02),
}


@pytest.mark.parametrize("name", sorted(SCORE_MODS))
def test_score_mod_matches_torch_forward_and_backward(name):
    assert_like_torch(score_mod=SCORE_MODS[name])


HALF_BIAS = torch.linspace(-2.5, 2.5, KV_LEN).to(torch.float16)


@pytest.mark.parametrize("fn", [F.gelu, F.silu, F.softplus, F.logsigmoid, torch.atan, torch.expm1, F.mish],
                         ids=lambda fn: fn.__name__)
def test_functions_of_half_tensors_round_once_as_torch(fn):
    """torch computes these in float32 for a float16 tensor and rounds once; so does attnc."""
    assert_like_torch(score_mod=lambda s, b, h, q, kv: s + fn(HALF_BIAS[kv]))


# -- masks: predicates on captured data, integer operations on indices --------------------------------------


def _data() -> torch.Tensor:
    values = torch.linspace(-3.0, 3.0, KV_LEN)
    values[[3, 17, 30]] = math.nan
    values[[5, 40]] = math.inf
    values[[8, 41]] = -math.inf
    return values


DATA = _data()

MASK_MODS: dict[str, Callable] = {
    "isnan": lambda b, h, q, kv: ~torch.isnan(DATA[kv]) & (q + 8 >= kv),
    "isinf": lambda b, h, q, kv: ~DATA[kv].isinf(),
    "isfinite": lambda b, h, q, kv: torch.isfinite(DATA[kv]) | (q == kv),
    "isposinf_isneginf": lambda b, h, q, kv: ~torch.isposinf(DATA[kv]) & ~DATA[kv].isneginf(),
    "nan_to_num": lambda b, h, q, kv: torch.nan_to_num(DATA[kv], nan=-5.0) > q * 0.1 - 3,
    "shifts": lambda b, h, q, kv: ((q >> 3) == (kv >> 3)) | (kv < (1 << 2)),
    "bitwise": lambda b, h, q, kv: ((q ^ kv) & 3 == 0) | ((q | kv) == q),
    "bitwise_not": lambda b, h, q, kv: (~q & 7) >= (kv & 7),
    "fmod": lambda b, h, q, kv: torch.fmod(q - kv, 5) >= 0,
    "remainder": lambda b, h, q, kv: torch.remainder(q - kv, 5) < 3,
    "round": lambda b, h, q, kv: torch.round(q * 0.5) >= kv * 0.5,
    "trunc": lambda b, h, q, kv: torch.trunc((q - kv) / 3.0) == 0,
}


@pytest.mark.parametrize("name", sorted(MASK_MODS))
def test_mask_mod_matches_torch_forward_and_backward(name):
    assert_like_torch(mask_mod=MASK_MODS[name], score_mod=lambda s, b, h, q, kv: s * 2)


@pytest.mark.parametrize("name", sorted(MASK_MODS))
def test_block_map_equals_torch_s(name):
    assert_block_map_like_torch(MASK_MODS[name], 2, Q_LEN, KV_LEN, 16)


def assert_block_map_like_torch(mask_mod: Callable, H: int | None, Q: int, KV: int, block: int) -> None:
    ours = attnc.create_block_mask(mask_mod, None, H, Q, KV, device="cpu", BLOCK_SIZE=block)
    theirs = torch_create_block_mask(mask_mod, None, H, Q, KV, device="cpu", BLOCK_SIZE=block)
    assert torch.equal(ours.to_dense(), theirs.to_dense())
    for name in ("kv_num_blocks", "full_kv_num_blocks"):
        assert torch.equal(getattr(ours, name), getattr(theirs, name)), name
    for counts, indices in (("kv_num_blocks", "kv_indices"), ("full_kv_num_blocks", "full_kv_indices")):
        assert _listed(getattr(ours, counts), getattr(ours, indices)) == \
            _listed(getattr(theirs, counts), getattr(theirs, indices)), indices


def _listed(counts: torch.Tensor, indices: torch.Tensor) -> list[list[int]]:
    """The block indices each row lists, as sets (the order within a row is free)."""
    flat_counts, flat_indices = counts.flatten().tolist(), indices.flatten(0, -2).tolist()
    return [sorted(row[:n]) for n, row in zip(flat_counts, flat_indices, strict=True)]


# -- the same function through torch, Tensor methods and torch.nn.functional --------------------------------

def _method(name: str, **kwargs: object) -> Callable:
    return lambda x: getattr(x, name)(**kwargs)


FORMS: dict[str, tuple[Callable, ...]] = {
    "relu": (torch.relu, _method("relu"), F.relu),
    "sigmoid": (torch.sigmoid, _method("sigmoid"), F.sigmoid, torch.special.expit),
    "tanh": (torch.tanh, _method("tanh"), F.tanh),
    "erf": (torch.erf, _method("erf"), torch.special.erf),
    "expm1": (torch.expm1, _method("expm1"), torch.special.expm1),
    "atan": (torch.atan, _method("atan"), torch.arctan, _method("arctan")),
    "round": (torch.round, _method("round"), torch.special.round, _method("round", decimals=0)),
    "trunc": (torch.trunc, _method("trunc"), torch.fix, _method("fix")),
    "log1p": (torch.log1p, _method("log1p"), torch.special.log1p),
    "gelu": (F.gelu, lambda x: F.gelu(x, approximate="none")),
    "isnan": (torch.isnan, _method("isnan")),
    "isinf": (torch.isinf, _method("isinf")),
    "isfinite": (torch.isfinite, _method("isfinite")),
}


def _score_ir(fn: Callable) -> object:
    def score_mod(score, b, h, q, kv):
        out = fn(score * 3)
        return torch.where(out, score, 0.0) if out.dtype == torch.bool else out

    return attnc.compile(score_mod=score_mod).program.score


@pytest.mark.parametrize("name", sorted(FORMS))
def test_torch_functions_tensor_methods_and_functional_forms_trace_alike(name):
    first, *others = (_score_ir(fn) for fn in FORMS[name])
    assert all(other is first for other in others)


def test_shift_operators_and_functions_trace_alike():
    forms = [lambda q, kv: (q << kv) + (q >> 2),
             lambda q, kv: torch.bitwise_left_shift(q, kv) + q.bitwise_right_shift(2),
             lambda q, kv: q.__lshift__(kv) + q.__rshift__(2)]
    roots = [attnc.compile(lambda b, h, q, kv, f=f: f(q, kv) > 3).program.mask for f in forms]
    assert all(r is roots[0] for r in roots)
    assert attnc.compile(lambda b, h, q, kv: (1 << kv) > q).program.mask is not None


# -- errors ---------------------------------------------------------------------------------------------

ERRORS: dict[str, tuple[Callable, str]] = {
    "gelu_approximate": (lambda s, b, h, q, kv: F.gelu(s, approximate="fast"),
                         "gelu: approximate='fast' is not one of 'none', 'tanh'"),
    "inplace": (lambda s, b, h, q, kv: F.relu(s, inplace=True),
                "relu(..., inplace=True) changes a value in place, which mods cannot do"),
    "float_shift": (lambda s, b, h, q, kv: s + (s << 1), "`<<` needs integer operands, not float32"),
    "bool_relu": (lambda s, b, h, q, kv: torch.where(F.relu(q > kv), s, 0.0),
                  "relu of a bool value is not supported"),
    "round_decimals": (lambda s, b, h, q, kv: torch.round(s, decimals=q),
                       "torch.round: decimals must be a Python int"),
}


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_unsupported_uses_fail_at_trace_time_with_the_user_line(name):
    score_mod, message = ERRORS[name]
    with pytest.raises(attnc.TraceError, match=re.escape(message)) as caught:
        attnc.compile(score_mod=score_mod)
    assert "test_pointwise_ops.py" in str(caught.value)


# -- the kernels' renderings of the new ops, value by value (Triton interpreter) --------------------------------


def _elementwise(op: Op, dtype: DType, arity: int) -> Callable[..., torch.Tensor]:
    """A kernel applying `op` as the code generator renders it, to 1-d tensors of `dtype`."""
    operands = [load(i, dtype, var("kv")) for i in range(arity)]
    expr = RENDER[op](node(op, dtype, *operands), ["x", "y"][:arity])
    body = ["offs = tl.arange(0, N)", "x = tl.load(X + offs)", "y = tl.load(Y + offs)", f"tl.store(OUT + offs, {expr})"]
    source = "\n".join(["import triton", "import triton.language as tl", *helper_lines(), "", "@triton.jit",
                        "def apply(X, Y, OUT, N: tl.constexpr):", *(f"    {line}" for line in body), ""])
    kernel = kernel_cache().module(source).apply

    def run(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        n = 1 << (x.numel() - 1).bit_length()
        pad = [torch.cat([t, t.new_ones(n - t.numel())]) for t in (x, x if y is None else y)]
        out = torch.empty_like(pad[0])
        kernel[(1,)](pad[0], pad[1], out, N=n)
        return out[: x.numel()]

    return run


def _special_floats() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    edges = [0.0, -0.0, 1e-30, -1e-30, 1e-8, -1e-8, 0.49999997, 0.5, -0.5, 1.5, 2.5, -2.5, 3.5, 1.0, -1.0,
             0.41421357, 2.414, 2.0**23 + 1, 2.0**23 + 0.5, -(2.0**23) - 1, 2.0**24, 88.0, 89.0, -100.0, 1e30,
             math.inf, -math.inf, math.nan]
    spread = torch.randn(900, generator=g) * torch.logspace(-6, 6, 900)
    return torch.cat([torch.tensor(edges), spread, torch.linspace(-4, 4, 161)])


def _ulps(got: torch.Tensor, want: torch.Tensor) -> float:
    """The largest error in units of float32's last place at the exact value (NaN must match NaN)."""
    assert torch.equal(got.isnan(), want.isnan())
    ok = ~want.isnan() & ~want.isinf()
    assert torch.equal(got[~ok & ~want.isnan()], want[~ok & ~want.isnan()])
    exact = want[ok].double()
    unit = torch.finfo(torch.float32).eps * exact.abs().clamp(min=torch.finfo(torch.float32).tiny)
    return float(((got[ok].double() - exact).abs() / unit).max())


@pytest.mark.parametrize(("op", "fn", "ulps"), [(Op.ATAN, torch.atan, 2), (Op.ERF, torch.erf, 2),
                                                (Op.EXPM1, torch.expm1, 3), (Op.ROUND, torch.round, 0)])
def test_float_functions_in_kernels_match_torch_at_special_values(op, fn, ulps):
    x = _special_floats()
    got = _elementwise(op, DType.float32, 1)(x)
    assert _ulps(got, fn(x.double()).float()) <= ulps


def test_fmod_in_kernels_matches_torch_for_every_sign():
    a = torch.tensor([7.5, -7.5, 7.5, -7.5, 0.0, -0.0, 1e-30, 5.0, math.inf, 3.0, math.nan, 1e10])
    b = torch.tensor([2.0, 2.0, -2.0, -2.0, 3.0, 3.0, 1.0, math.inf, 2.0, 0.0, 1.0, 3.0])
    got = _elementwise(Op.FMOD, DType.float32, 2)(a, b)
    assert torch.equal(got.isnan(), torch.fmod(a, b).isnan()) and _ulps(got, torch.fmod(a, b)) == 0
    ints = torch.arange(-20, 21, dtype=torch.int32)
    for divisor in (7, -7, 1, 3):
        d = torch.full_like(ints, divisor)
        assert torch.equal(_elementwise(Op.FMOD, DType.int32, 2)(ints, d), torch.fmod(ints, d))


@pytest.mark.parametrize("dtype", [DType.int32, DType.int64])
def test_shifts_in_kernels_match_torch_for_every_count(dtype):
    bits = 64 if dtype is DType.int64 else 32
    values = torch.tensor([5, -5, 1, -1, 7, -8, 2**30, -(2**30)], dtype=dtype.torch)
    counts = torch.arange(-3, bits + 5)
    a = values.repeat_interleave(counts.numel())
    s = counts.repeat(values.numel()).to(dtype.torch)
    assert torch.equal(_elementwise(Op.SHL, dtype, 2)(a, s), torch.bitwise_left_shift(a, s))
    assert torch.equal(_elementwise(Op.SHR, dtype, 2)(a, s), torch.bitwise_right_shift(a, s))


def test_every_new_operation_compiles_for_sm90():
    """What the interpreter lets through, ptxas may not: each new kernel helper and rendering, forward and
    backward, compiled ahead of time (no GPU needed)."""
    bias = torch.randn(KV_LEN, requires_grad=True)

    def score_mod(s, b, h, q, kv):
        x = s + bias[kv]
        y = F.gelu(x) + torch.atan(x) + torch.expm1(x * 0.1) + torch.round(x) + torch.fmod(x, 1.5)
        return y + ((q << (kv % 5)) >> (kv % 7)) * 0.01 + torch.fmod(q, kv % 3 + 1)

    config = KernelConfig(32, 32, 4, 1)
    report = attnc.compile(lambda b, h, q, kv: ~torch.isnan(bias[kv]), score_mod).resources(
        arch="sm_90", dtype=torch.float16, head_dim=32, backward=True, config=config,
        backward_configs=BackwardConfigs(config, config))
    assert {"forward", "backward_dkdv", "backward_dq"} <= set(report)
    assert all(info["registers"] > 0 for info in report.values())
