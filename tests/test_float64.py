"""float64 inputs, as torch's own FlexAttention tests use them for gradcheck, on both backends: the reference
computes in float64, and so do the generated kernels (one source for every dtype; a constexpr picks float64 for
float64 inputs): accumulators, the online softmax's statistics, the score and the mods' float arithmetic, the
scale and float parameters (sent as their 64 bits), the backward's delta and ds. Output and lse are float64.

The kernels run in the Triton interpreter here; an ahead-of-time compile for sm_90 shows they are no
interpreter-only feature (float64 tl.dot lowers to the f64 MMA)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

import attnc
from attnc import attention

F64 = torch.float64
G = torch.Generator().manual_seed(0)
BIAS = torch.randn(9, generator=G, dtype=F64)
SLOPES = torch.tensor([0.5, -0.25], dtype=torch.float32)  # float32 reads: the kernel widens them
HALF_BIAS = torch.randn(9, generator=G).to(torch.bfloat16)
TEMPERATURE = 0.1  # a Python float: a runtime parameter of the kernel


def causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


DOCUMENTS = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2])


def same_document(b, h, q_idx, kv_idx):
    # reads a tensor: the kernels walk a block map built for it (BlockMask lists)
    return DOCUMENTS[q_idx] == DOCUMENTS[kv_idx]


def late_rows(b, h, q_idx, kv_idx):
    # rows 0..2 have no key at all
    return (q_idx >= 3) & (kv_idx < q_idx)


def softcap_bias(score, b, h, q_idx, kv_idx):
    return 5 * torch.tanh(score / 5) + BIAS[kv_idx]


def alibi(score, b, h, q_idx, kv_idx):
    # affine in the positions: the kernels' affine-bias path (exp2 multiply-adds with log2(e))
    return score + SLOPES[h] * (kv_idx - q_idx)


def tempered(score, b, h, q_idx, kv_idx):
    return score * TEMPERATURE + torch.sin(kv_idx * 0.3)


def half_bias(score, b, h, q_idx, kv_idx):
    # bf16 arithmetic (and a bf16 constant): rounded to bf16 for other inputs; kept in float64 by the float64
    # reference and kernels, which compute every float in float64
    return score + HALF_BIAS[kv_idx] * 0.1


def half_bias_in_float64(score, b, h, q_idx, kv_idx):
    return score + HALF_BIAS.double()[kv_idx] * 0.1


def math_functions(score, b, h, q_idx, kv_idx):
    # the helpers' own formulations (atan's polynomial is float32-grade; float64 sums a series) and tl.math
    return (torch.atan(score * 3) + torch.rsqrt(2 + score * score) + torch.erf(score) + torch.log1p(score.abs())
            + torch.expm1(score * 0.5) + torch.sigmoid(score) + (1 + score * score) ** 1.5 + torch.tanh(score))


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, score_mod: Callable | None = None,
                    mask_mod: Callable | None = None, scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention written out in float64 torch, independent of attnc: the mods run on dense index grids."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    scores = (q @ k.transpose(-1, -2)) * (1 / math.sqrt(q.shape[-1]) if scale is None else scale)
    b, h, q_idx, kv_idx = torch.meshgrid(*(torch.arange(n) for n in scores.shape), indexing="ij")
    if score_mod is not None:
        default = torch.get_default_dtype()
        torch.set_default_dtype(F64)  # `kv_idx * 0.3` in float64, as the float64 reference computes it
        try:
            scores = score_mod(scores, b, h, q_idx, kv_idx).to(F64)
        finally:
            torch.set_default_dtype(default)
    if mask_mod is not None:
        scores = scores.masked_fill(~mask_mod(b, h, q_idx, kv_idx), float("-inf"))
    lse = torch.logsumexp(scores, -1)
    weights = torch.exp(scores - lse[..., None]).nan_to_num(0.0)  # a row without keys: lse -inf, weights 0
    return weights @ v, lse


def inputs(Hq: int = 2, Hkv: int = 2, L: int = 9, D: int = 4, grad: bool = False) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    shapes = [(1, Hq, L, D), (1, Hkv, L, D), (1, Hkv, L, D)]
    return [torch.randn(s, generator=g, dtype=F64).requires_grad_(grad) for s in shapes]


# name: (mask_mod, score_mod, scale, the score mod as the dense computation writes it)
CASES = {
    "noop": (None, None, None, None),
    "causal": (causal, None, None, None),
    "softcap_and_captured_bias": (causal, softcap_bias, None, softcap_bias),
    "affine_bias": (None, alibi, None, alibi),
    "float_parameter_and_scale": (causal, tempered, 0.3, tempered),
    "bf16_capture": (None, half_bias, None, half_bias_in_float64),
    "math_functions": (causal, math_functions, None, math_functions),
    "document_mask": (same_document, softcap_bias, None, softcap_bias),
}


@pytest.mark.parametrize("name", CASES)
def test_the_kernel_computes_in_float64(name):
    """Triton equals the float64 reference and a dense float64 computation to ~1e-10: a float32 anywhere (the
    scale, a parameter, log2(e), an accumulator, a bf16 rounding) would leave errors near 1e-8 or more."""
    mask_mod, score_mod, scale, dense_score_mod = CASES[name]
    q, k, v = inputs()
    out, lse = attnc.flex_attention(q, k, v, score_mod=score_mod, mask_mod=mask_mod, scale=scale,
                                    backend="triton", return_lse=True)
    assert out.dtype == F64 and lse.dtype == F64
    ref_out, ref_lse = attnc.flex_attention(q, k, v, score_mod=score_mod, mask_mod=mask_mod, scale=scale,
                                            backend="reference", return_lse=True)
    dense_out, dense_lse = dense_attention(q, k, v, dense_score_mod, mask_mod, scale)
    for expected_out, expected_lse in ((ref_out, ref_lse), (dense_out, dense_lse)):
        torch.testing.assert_close(out, expected_out, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(lse, expected_lse, rtol=1e-10, atol=1e-12)


def test_the_affine_bias_case_takes_the_affine_path():
    assert "AFFINE_BIAS = tl.constexpr(True)" in attnc.compile(score_mod=alibi).source.source


def test_emitted_mod_code_names_the_compute_dtype_not_float32():
    """The mods' float32 values are written in COMPUTE, which float64 inputs make float64."""
    attn = attnc.compile(late_rows, lambda score, b, h, q_idx, kv_idx: score * torch.exp((kv_idx - q_idx) * 0.5))
    generated = "\n".join(line for lines in attn.source.placement.values() for line in lines)
    assert "COMPUTE" in generated and "tl.float32" not in generated


def test_gradcheck_in_float64_on_the_reference_backend() -> None:
    q, k, v = inputs(grad=True)
    bias = BIAS.clone().requires_grad_()

    def score_mod(score, b, h, q_idx, kv_idx):
        return 5 * torch.tanh(score / 5) + bias[kv_idx]

    def run(q, k, v, bias_):
        return attnc.flex_attention(q, k, v, score_mod=score_mod, mask_mod=causal, backend="reference",
                                    return_lse=True)

    out, lse = run(q, k, v, bias)
    assert out.dtype == F64 and lse.dtype == F64
    assert torch.autograd.gradcheck(run, (q, k, v, bias), eps=1e-6, atol=1e-6)


def test_gradcheck_through_the_kernels_with_a_mask_and_a_learned_capture() -> None:
    """dQ, dK, dV, the captured tensor's gradient (float64 buffer, atomics) and the lse's gradient. fast_mode
    checks random directions of the Jacobian, each one a handful of kernel runs."""
    q, k, v = inputs(grad=True)
    bias = BIAS.clone().requires_grad_()

    def score_mod(score, b, h, q_idx, kv_idx):
        return 5 * torch.tanh(score / 5) + bias[kv_idx]

    def run(q, k, v, bias_):
        return attnc.flex_attention(q, k, v, score_mod=score_mod, mask_mod=causal, backend="triton",
                                    return_lse=True)

    assert torch.autograd.gradcheck(run, (q, k, v, bias), eps=1e-6, atol=1e-6, fast_mode=True)


@pytest.mark.parametrize("score_mod", [tempered, alibi], ids=["parameter", "affine_bias"])
def test_gradcheck_through_the_kernels_with_gqa(score_mod) -> None:
    q, k, v = inputs(Hq=2, Hkv=1, grad=True)

    def run(q, k, v):
        return attnc.flex_attention(q, k, v, score_mod=score_mod, mask_mod=causal, enable_gqa=True,
                                    backend="triton", scale=0.3, return_lse=True)

    assert torch.autograd.gradcheck(run, (q, k, v), eps=1e-6, atol=1e-6, fast_mode=True)


def test_rows_without_keys_give_zero_and_minus_infinity_never_nan() -> None:
    q, k, v = inputs(grad=True)

    def run(q, k, v):
        return attnc.flex_attention(q, k, v, mask_mod=late_rows, backend="triton", return_lse=True)

    out, lse = run(q, k, v)
    assert out.dtype == F64 and lse.dtype == F64
    assert torch.equal(out[:, :, :3], torch.zeros_like(out[:, :, :3]))
    assert torch.isneginf(lse[:, :, :3]).all() and torch.isfinite(lse[:, :, 3:]).all()
    dense_out, _ = dense_attention(q.detach(), k.detach(), v.detach(), mask_mod=late_rows)
    torch.testing.assert_close(out, dense_out, rtol=1e-10, atol=1e-12)
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
    assert torch.equal(q.grad[:, :, :3], torch.zeros_like(q.grad[:, :, :3]))
    assert torch.autograd.gradcheck(lambda q, k, v: run(q, k, v)[0], (q, k, v), eps=1e-6, atol=1e-6,
                                    fast_mode=True)


def test_packed_sequences_and_kv_caches_run_the_float64_kernels() -> None:
    g = torch.Generator().manual_seed(2)
    cu_seqlens = torch.tensor([0, 5, 12], dtype=torch.int32)
    q, k, v = (torch.randn(12, h, 4, generator=g, dtype=F64) for h in (2, 1, 1))
    results = [attnc.varlen_attention(q, k, v, cu_seqlens, cu_seqlens, mask_mod=causal, return_lse=True,
                                      backend=backend) for backend in ("triton", "reference")]
    k_cache, v_cache = (torch.randn(2, 16, 1, 4, generator=g, dtype=F64) for _ in range(2))
    q_new = torch.randn(2, 1, 2, 4, generator=g, dtype=F64)
    lengths = torch.tensor([7, 16], dtype=torch.int32)
    cached = [attnc.kvcache_attention(q_new, k_cache, v_cache, lengths, return_lse=True, backend=backend)
              for backend in ("triton", "reference")]
    for (out, lse), (ref_out, ref_lse) in (results, cached):
        assert out.dtype == F64 and lse.dtype == F64
        torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(lse, ref_lse, rtol=1e-10, atol=1e-12)


def test_auto_on_cpu_still_picks_the_reference_and_says_so() -> None:
    attention._WARNED.clear()  # the warning is given once per process: another test may have had it
    q, k, v = inputs()
    with pytest.warns(UserWarning, match="reference interpreter"):
        out = attnc.compile(causal)(q, k, v, backend="auto")
    assert out.dtype == F64


def _learned_softcap() -> attnc.Attention:
    """A masked, softcapped variant with a learned capture and a float parameter."""
    bias = BIAS.clone().requires_grad_()
    temperature = TEMPERATURE  # closed over: a runtime parameter

    def score_mod(score, b, h, q_idx, kv_idx):
        return 5 * torch.tanh(score * temperature) + bias[kv_idx]

    return attnc.compile(causal, score_mod)


def _signature_jobs(attn: attnc.Attention, dtype: torch.dtype, head_dim: int = 32) -> dict[str, dict]:
    """The forward and backward compile jobs `attnc.runtime.aot` builds from the kernels' signatures."""
    from attnc.api import kernel_cache
    from attnc.runtime import aot
    from attnc.runtime.config import KernelConfig
    from attnc.runtime.launch_backward import BackwardConfigs

    config = KernelConfig(32, 32, 4, 1)
    forward_path = kernel_cache().ensure_file(attn.source.source)
    backward_path = kernel_cache().ensure_file(attn.backward_source.source)
    backward = aot.backward_jobs(backward_path, attn.program, attn.backward_source.grad_slots, dtype, head_dim,
                                 head_dim, BackwardConfigs(config, config), 90)
    return {"forward": aot.forward_job(forward_path, attn.program, dtype, head_dim, head_dim, config, False, 90),
            "backward_dkdv": backward["backward_dkdv"], "backward_dq": backward["backward_dq"]}


def _launched_type(value: object) -> str:
    """The Triton type of a launch argument, as the JIT types it (unspecialised)."""
    if isinstance(value, torch.Tensor):
        return {F64: "*fp64", torch.float32: "*fp32", torch.bfloat16: "*bf16"}[value.dtype]
    if isinstance(value, float):
        return "fp32"
    assert isinstance(value, int)
    return "i32" if -(2**31) <= value < 2**31 else "i64"


@pytest.mark.parametrize("dtype", [F64, torch.float32, torch.bfloat16], ids=str)
def test_signature_jobs_type_what_a_launch_passes(dtype):
    """An ahead-of-time compile from the kernels' signatures gets the types a launch passes: for float64 inputs
    float64 row statistics, delta and captured-gradient buffers, and the scale and float parameters as their 64
    bits (launch.scalar_argument); float32 ones for the other dtypes. Compared with launches recorded as a call
    makes them (attnc.perf.launches)."""
    from attnc.perf.launches import Shape, attnc_launches
    from attnc.runtime.config import KernelConfig
    from attnc.runtime.launch_backward import BackwardConfigs

    attn = _learned_softcap()
    config = KernelConfig(32, 32, 4, 1)
    shape = Shape(batch=1, heads=1, seq_len=64, head_dim=32, dtype=dtype)
    launches = attnc_launches(attn, shape, backward=True, config=config,
                              backward_configs=BackwardConfigs(config, config))
    dkdv, dq = attn.backward_kernels()
    kernels = {"forward": attn.kernel(), "backward_dkdv": dkdv, "backward_dq": dq}
    compared = ("Q", "K", "V", "OUT", "DO", "DQ", "DK", "DV", "LSE", "DELTA", "sm_scale")
    for kind, job in _signature_jobs(attn, dtype).items():
        passed = dict(zip(kernels[kind].arg_names, launches[kind].args, strict=False))
        # the backward kernels share one table of types: each kernel's own arguments
        names = [name for name in job["types"]
                 if name in passed and (name in compared or name.startswith(("buf", "param", "gbuf")))]
        assert {"LSE", "sm_scale", "param0"} <= set(names)
        assert {name: job["types"][name] for name in names} == {name: _launched_type(passed[name]) for name in names}
    float64 = dtype == F64
    assert _signature_jobs(attn, dtype)["backward_dq"]["types"]["gbuf0"] == ("*fp64" if float64 else "*fp32")
    assert _signature_jobs(attn, dtype)["forward"]["types"]["sm_scale"] == ("i64" if float64 else "fp32")


def test_float64_kernels_compile_ahead_of_time_for_sm90():
    """Forward and both backward kernels of a masked, softcapped variant with a learned capture and a float
    parameter: float64 dot products, exp2 and the mods' arithmetic lower to PTX that ptxas accepts."""
    from attnc.runtime import aot

    for info in aot.compile_kernels(list(_signature_jobs(_learned_softcap(), F64).values())):
        assert 0 < info["registers"] <= 255, info


def test_deterministic_captured_gradients_are_float64_too() -> None:
    """deterministic=True sums the captured tensor's gradient without atomics, in the kernels' float64."""
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 2, 9, 4, generator=g, dtype=torch.float64) for _ in range(3))
    bias = torch.randn(9, generator=g, dtype=torch.float64, requires_grad=True)

    def score_mod(score, b, h, q_idx, kv_idx):
        return score + bias[kv_idx]

    attn = attnc.compile(score_mod=score_mod)
    (ordered,) = torch.autograd.grad(attn(q, k, v, backend="triton", deterministic=True).sum(), bias)
    (reference,) = torch.autograd.grad(attn(q, k, v, backend="reference").sum(), bias)
    assert ordered.dtype == torch.float64
    torch.testing.assert_close(ordered, reference, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("kind", ["forward", "backward_dkdv", "backward_dq"])
def test_float64_scales_share_one_kernel_specialization(kind):
    """A float64 scale arrives as its 64 bits in an int64, which Triton's JIT would specialise like an integer
    (0.125's bits are a multiple of 16, 0.3's are not: two kernels). The kernels mark it do-not-specialize, as
    they mark the mods' parameters, so every scale gets the same compile (worker: `_launch_specialization`, what
    the JIT does)."""
    from triton.runtime.jit import JITFunction

    from attnc.perf.launches import Shape, attnc_launches
    from attnc.runtime import aot_worker
    from attnc.runtime.config import KernelConfig
    from attnc.runtime.launch import scalar_argument
    from attnc.runtime.launch_backward import BackwardConfigs

    attn = _learned_softcap()
    source = attn.source if kind == "forward" else attn.backward_source
    assert source.do_not_specialize == ("sm_scale", "param0")
    assert f"DO_NOT_SPECIALIZE = {list(source.do_not_specialize)!r}" in source.source
    interpreted = attn.kernel() if kind == "forward" else dict(zip(("backward_dkdv", "backward_dq"),
                                                                   attn.backward_kernels(), strict=True))[kind]
    kernel = JITFunction(interpreted.fn, do_not_specialize=source.do_not_specialize)  # as compiled for a GPU
    config = KernelConfig(32, 32, 4, 1)
    launches = attnc_launches(attn, Shape(batch=1, heads=1, seq_len=64, head_dim=32, dtype=F64), backward=True,
                              config=config, backward_configs=BackwardConfigs(config, config))
    job = launches[kind].job(90, disassemble=False)
    at = kernel.arg_names.index("sm_scale")
    specializations = []
    for scale in (0.125, 0.3):
        bits = scalar_argument(scale, F64)
        job["launch_args"][at] = ["int", bits]
        specializations.append(aot_worker._launch_specialization(kernel, job))
    assert scalar_argument(0.125, F64) % 16 == 0 and scalar_argument(0.3, F64) % 16 != 0
    assert specializations[0] == specializations[1]
    assert specializations[0][0]["sm_scale"] == "i64" and (at,) not in specializations[0][2]
