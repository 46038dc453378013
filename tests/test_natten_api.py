"""attnc.natten (NATTEN's na1d / na2d / na3d) against a dense implementation of NATTEN's definition written
here, from NATTEN's reference kernel: per dim, the window of a query is [start, end) in its dilation group,
computed from the query's stride-group leader; the pair is allowed when it is inside on every dim."""

from __future__ import annotations

import itertools
import math
import re
import warnings
from pathlib import Path

import pytest
import torch

import attnc.natten

ROOT = Path(__file__).resolve().parents[1]
OPS = {1: attnc.natten.na1d, 2: attnc.natten.na2d, 3: attnc.natten.na3d}


# -- the dense definition -------------------------------------------------------------------------------------


def window_1d(size: int, kernel: int, stride: int, dilation: int, causal: bool) -> torch.Tensor:
    """[size, size] bool: which key coordinates each query coordinate sees along one dim."""
    allowed = torch.zeros(size, size, dtype=torch.bool)
    for q in range(size):
        group, i = q % dilation, q // dilation
        n = len(range(group, size, dilation))  # the dilation group's length
        if causal:
            leader = min((i // stride) * stride + stride - 1, n - 1)
            start, end = max(leader - kernel + 1, 0), min(i + 1, n)
        else:
            left, right = kernel // 2, kernel // 2 + kernel % 2 - 1
            leader = min((i // stride) * stride + stride // 2, n - 1)
            start = max(leader - left, 0)
            if leader + right >= n:  # past the far border: the window shifts back inside
                start += n - right - leader - 1
            end = start + kernel
        for j in range(start, end):
            allowed[q, j * dilation + group] = True
    return allowed


def neighborhood(canvas, kernel, stride, dilation, causal) -> torch.Tensor:
    """[L, L] bool over the row-major flattened canvas."""
    axes = [window_1d(*settings) for settings in zip(canvas, kernel, stride, dilation, causal, strict=True)]
    coords = list(itertools.product(*(range(s) for s in canvas)))
    allowed = torch.ones(len(coords), len(coords), dtype=torch.bool)
    for axis, window in enumerate(axes):
        c = torch.tensor([p[axis] for p in coords])
        allowed &= window[c[:, None], c[None, :]]
    return allowed


def dense_natten(q, k, v, canvas, kernel, stride, dilation, causal, scale=None, extra_k=None, extra_v=None):
    """NATTEN's result in float64 from heads-last inputs: (out [B, *canvas, H, Dv], lse [B, *canvas, H])."""
    H, D = q.shape[-2], q.shape[-1]
    q, k, v = (t.double().flatten(1, -3) for t in (q, k, v))  # [B, L, H, D]
    allowed = neighborhood(canvas, kernel, stride, dilation, causal)
    if extra_k is not None:  # the additional context: every query sees all of it
        k, v = torch.cat([k, extra_k.double()], 1), torch.cat([v, extra_v.double()], 1)
        allowed = torch.cat([allowed, torch.ones(allowed.shape[0], extra_k.shape[1], dtype=torch.bool)], 1)
    group = H // k.shape[2]
    k, v = k.repeat_interleave(group, 2), v.repeat_interleave(group, 2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * (D**-0.5 if scale is None else scale)
    scores = scores.masked_fill(~allowed, -math.inf)
    out = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v)
    lse = scores.logsumexp(-1).transpose(1, 2)
    return out.unflatten(1, canvas), lse.unflatten(1, canvas)


def as_tuple(value, dims):
    return tuple(value) if isinstance(value, tuple | list) else (value,) * dims


def inputs(canvas, heads=2, kv_heads=None, D=8, Dv=None, B=2, seed=0, extra=0):
    g = torch.Generator().manual_seed(seed)
    kv_heads = kv_heads or heads
    shapes = [(B, *canvas, heads, D), (B, *canvas, kv_heads, D), (B, *canvas, kv_heads, Dv or D)]
    if extra:
        shapes += [(B, extra, kv_heads, D), (B, extra, kv_heads, Dv or D)]
    return [torch.randn(s, generator=g).requires_grad_(True) for s in shapes]


def check(canvas, kernel, stride=1, dilation=1, causal=False, *, backend="reference", heads=2, kv_heads=None, Dv=None,
          scale=None, extra=0, atol=2e-5):
    """Forward (output and lse) and backward against the dense definition."""
    dims = len(canvas)
    tensors = inputs(canvas, heads, kv_heads, Dv=Dv, extra=extra)
    q, k, v = tensors[:3]
    extras = {"additional_keys": tensors[3], "additional_values": tensors[4]} if extra else {}
    out, lse = OPS[dims](q, k, v, kernel, stride, dilation, causal, scale, **extras, return_lse=True, backend=backend)
    want_out, want_lse = dense_natten(q, k, v, canvas, *(as_tuple(a, dims) for a in (kernel, stride, dilation, causal)),
                                      scale, *tensors[3:])
    assert out.shape == want_out.shape and out.is_contiguous() and lse.shape == want_lse.shape
    torch.testing.assert_close(out.double(), want_out, atol=atol, rtol=atol)
    torch.testing.assert_close(lse.double(), want_lse, atol=atol, rtol=atol)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    got = torch.autograd.grad(out, tensors, dout)
    want = torch.autograd.grad(want_out, tensors, dout.double())
    for name, a, b in zip(["q", "k", "v", "extra k", "extra v"], got, want, strict=False):
        torch.testing.assert_close(a, b, atol=10 * atol, rtol=10 * atol, msg=lambda m, n=name: f"d{n}: {m}")


def test_the_definition_sees_exactly_the_kernel_size_when_not_causal():
    # NATTEN's windows are clamped, not cut, at the borders: every query sees prod(kernel_size) keys
    allowed = neighborhood((7, 9), (3, 4), (2, 3), (2, 2), (False, False))
    assert allowed.sum(1).eq(12).all()
    causal = window_1d(10, 4, 1, 1, True)
    assert causal.sum(1).tolist() == [1, 2, 3, 4, 4, 4, 4, 4, 4, 4] and not causal.triu(1).any()


# -- forward and backward against the definition ---------------------------------------------------------------

CASES = {
    "1d": ((13,), 5, 1, 1, False),
    "1d_even_kernel": ((12,), 4, 1, 1, False),
    "1d_dilated": ((13,), 3, 1, 3, False),
    "1d_strided": ((17,), 6, 4, 1, False),
    "1d_causal": ((13,), 5, 1, 1, True),
    "1d_causal_strided_dilated": ((19,), 4, 3, 2, True),
    "1d_full_window": ((9,), 9, 1, 1, False),
    "2d_square": ((6, 6), 3, 1, 1, False),
    "2d_rectangular": ((5, 7), (3, 4), (1, 2), (1, 1), False),
    "2d_dilated": ((7, 6), (3, 2), 1, (2, 3), False),
    "2d_strided_dilated": ((9, 7), (4, 3), (3, 2), (2, 1), False),
    "2d_causal_rows": ((5, 6), (3, 3), 1, 1, (True, False)),
    "2d_causal_both_strided": ((6, 5), (4, 3), (3, 2), 1, True),
    "3d": ((3, 4, 5), (2, 3, 3), 1, 1, False),
    "3d_mixed": ((4, 3, 6), (3, 2, 3), (2, 1, 3), (1, 1, 2), (False, True, False)),
}


@pytest.mark.parametrize("name", CASES)
def test_matches_the_definition(name):
    check(*CASES[name])


def test_lists_are_taken_as_per_dim_values():
    check((5, 6), [3, 4], [1, 2], [1, 1], [False, True])


def test_gqa_and_a_value_head_dim_of_its_own():
    check((5, 6), (3, 3), 2, 1, (False, True), heads=4, kv_heads=2, Dv=6)
    check((11,), 3, 1, 2, False, heads=2, kv_heads=1)


def test_scale():
    check((4, 5), 3, scale=0.3)


def test_additional_keys_are_seen_by_every_query():
    check((10,), 3, 2, 1, True, extra=4)
    check((4, 5), (3, 2), 1, (1, 2), False, heads=2, kv_heads=1, Dv=4, extra=3)


def test_an_empty_additional_context_changes_nothing():
    q, k, v, extra_k, extra_v = inputs((9,), extra=1)
    alone = attnc.natten.na1d(q, k, v, 3, backend="reference")
    merged = attnc.natten.na1d(q, k, v, 3, additional_keys=extra_k[:, :0], additional_values=extra_v[:, :0],
                               backend="reference")
    torch.testing.assert_close(merged, alone)


def test_views_of_a_packed_qkv_projection_are_taken_as_they_are():
    # NATTEN's modules split one [B, X, Y, 3, H, D] projection: q, k and v are strided views of it
    qkv = torch.randn(2, 4, 5, 3, 2, 8, generator=torch.Generator().manual_seed(3), requires_grad=True)
    q, k, v = qkv.unbind(3)
    out = attnc.natten.na2d(q, k, v, (3, 2), (2, 1), backend="reference")
    want, _ = dense_natten(q, k, v, (4, 5), (3, 2), (2, 1), (1, 1), (False, False))
    torch.testing.assert_close(out.double(), want, atol=2e-5, rtol=2e-5)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(4))
    got, = torch.autograd.grad(out, qkv, dout)
    torch.testing.assert_close(got, torch.autograd.grad(want, qkv, dout.double())[0], atol=2e-4, rtol=2e-4)


def test_without_return_lse_only_the_output():
    q, k, v = inputs((4, 5))
    out = attnc.natten.na2d(q, k, v, 3, backend="reference")
    assert isinstance(out, torch.Tensor) and out.shape == (2, 4, 5, 2, 8)


@pytest.mark.parametrize("case", [
    dict(canvas=(9,), kernel=4, stride=2, dilation=2, causal=False, extra=3),
    dict(canvas=(4, 5), kernel=(3, 2), stride=(1, 2), dilation=1, causal=(True, False), heads=2, kv_heads=1),
    dict(canvas=(2, 3, 4), kernel=2, stride=1, dilation=(1, 1, 2), causal=(False, False, True)),
])
def test_generated_kernel_matches_the_definition(case):
    neighborhood_args = [case.pop(n) for n in ("canvas", "kernel", "stride", "dilation", "causal")]
    check(*neighborhood_args, backend="triton", atol=1e-4, **case)


# -- one compiled attention per neighborhood, no mask tensor ----------------------------------------------------


def test_repeated_calls_reuse_one_compiled_attention():
    q, k, v = inputs((5, 6))
    attnc.natten.na2d(q, k, v, (3, 5), 2, backend="reference")
    hood = attnc.natten.Neighborhood((5, 6), (3, 5), (2, 2), (1, 1), (False, False))
    attn = attnc.natten.compiled_neighborhood(hood)
    traced, hits = attn.traced, attnc.natten.compiled_neighborhood.cache_info().hits
    attnc.natten.na2d(q, k, v, [3, 5], (2, 2), 1, False, backend="reference")
    assert attnc.natten.compiled_neighborhood.cache_info().hits == hits + 1
    assert attnc.natten.compiled_neighborhood(hood) is attn and attn.traced is traced


def test_the_kernel_visits_only_the_tiles_a_window_touches():
    hood = attnc.natten.Neighborhood((32, 32), (5, 5), (1, 1), (1, 1), (False, False))
    attn = attnc.natten.compiled_neighborhood(hood)
    assert attn.program.tensors == ()  # the window is computed from positions: no mask tensor is captured
    stats = attn.tile_stats(1, 1, 1024, 1024, BLOCK_M=64, BLOCK_N=64)
    assert stats["empty"] > stats["partial"] + stats["full"]


# -- argument errors ----------------------------------------------------------------------------------------------

ERRORS = [
    (dict(kernel_size=6), r"attnc: na2d: kernel_size \(6, 6\) is larger than the token layout \(4, 5\)"),
    (dict(kernel_size=(3, 2), dilation=(2, 1)), r"kernel_size \* dilation must not exceed the token layout"),
    (dict(kernel_size=3, stride=4), r"stride must not exceed kernel_size"),
    (dict(kernel_size=0), r"kernel_size must be a positive int or a tuple of 2 positive ints, got 0"),
    (dict(kernel_size=(3, 3, 3)), r"kernel_size must be .* a tuple of 2 positive ints, got \(3, 3, 3\)"),
    (dict(kernel_size=True), r"kernel_size must be a positive int"),
    (dict(kernel_size=3.0), r"kernel_size must be a positive int"),
    (dict(kernel_size=3, stride=(1, 0)), r"stride must be a positive int"),
    (dict(kernel_size=3, dilation=-1), r"dilation must be a positive int"),
    (dict(kernel_size=3, is_causal=1), r"is_causal must be a bool or a tuple of 2 bools, got 1"),
    (dict(kernel_size=3, is_causal=(True,)), r"is_causal must be a bool or a tuple of 2 bools"),
    (dict(kernel_size=3, backend="cutlass-fna"), r"backend='cutlass-fna' names one of NATTEN's kernels"),
    (dict(kernel_size=3, backend="cuda"), r"attnc: na2d: backend must be one of"),
    (dict(kernel_size=3, q_tile_shape=(8, 8)), r"q_tile_shape=\(8, 8\) tunes NATTEN's own kernels"),
    (dict(kernel_size=3, torch_compile=True), r"torch_compile=True tunes NATTEN's own kernels"),
    (dict(kernel_size=3, attention_kwargs={"backend": "flex-fmha"}), r"attention_kwargs=.* is not supported"),
]


@pytest.mark.parametrize(("arguments", "message"), ERRORS, ids=[str(i) for i in range(len(ERRORS))])
def test_bad_arguments_are_named(arguments, message):
    q, k, v = inputs((4, 5))
    with pytest.raises(ValueError, match=message):
        attnc.natten.na2d(q, k, v, **arguments)


def test_natten_defaults_of_tuning_options_are_accepted_and_unknown_keywords_refused():
    q, k, v = inputs((4, 5))
    out = attnc.natten.na2d(q, k, v, 3, q_tile_shape=None, torch_compile=False, run_persistent_kernel=True,
                            attention_kwargs={}, backend="reference")
    assert out.shape == (2, 4, 5, 2, 8)
    with pytest.raises(TypeError, match=r"attnc: na2d\(\) got an unexpected keyword argument 'rpb'"):
        attnc.natten.na2d(q, k, v, 3, rpb=None)


def test_backend_none_is_natten_default_auto():
    q, k, v = inputs((4, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # auto on a CPU says once that it runs the reference
        out = attnc.natten.na2d(q, k, v, 3, backend=None)
    torch.testing.assert_close(out, attnc.natten.na2d(q, k, v, 3, backend="reference"))


def bad_tensor(change):
    q, k, v, ek, ev = inputs((4, 5), heads=4, kv_heads=2, extra=3)
    tensors = {"query": q, "key": k, "value": v, "additional_keys": ek, "additional_values": ev}
    tensors.update(change(tensors))
    return tensors


TENSOR_ERRORS = [
    (lambda t: {"query": t["query"][:, 0]},
     r"query must be 5-D \[B, X, Y, H, D\] .* got shape \(2, 5, 4, 8\) \(use na1d\)"),
    (lambda t: {"key": t["key"][:, :3]}, r"key's token layout \(3, 5\) differs from query's \(4, 5\)"),
    (lambda t: {"value": t["value"][:1]}, r"value has batch 1, query has 2"),
    (lambda t: {"key": t["key"][..., :4]}, r"key head dim 4 != query head dim 8"),
    (lambda t: {"value": t["value"][..., :1, :]}, r"value has 1 heads, key has 2; they must match"),
    (lambda t: {"key": t["key"][..., :1, :].expand(-1, -1, -1, 3, -1),
                "value": t["value"][..., :1, :].expand(-1, -1, -1, 3, -1)},
     r"query heads \(4\) must be a multiple of key heads \(3\)"),
    (lambda t: {"additional_values": None}, r"give additional_keys and additional_values together"),
    (lambda t: {"additional_keys": t["additional_keys"][:, :, None]}, r"additional_keys must be a 4-D tensor"),
    (lambda t: {"additional_keys": t["additional_keys"][:, :2]},
     r"additional_keys has 2 tokens, additional_values has 3"),
    (lambda t: {"additional_values": t["additional_values"][..., :4]},
     r"additional_values has head dim 4, value has 8"),
    (lambda t: {"additional_keys": t["additional_keys"][:, :, :1],
                "additional_values": t["additional_values"][:, :, :1]},
     r"additional_keys has 1 heads, key has 2"),
]


@pytest.mark.parametrize(("change", "message"), TENSOR_ERRORS, ids=[str(i) for i in range(len(TENSOR_ERRORS))])
def test_bad_tensors_are_named(change, message):
    t = bad_tensor(change)
    with pytest.raises(ValueError, match=message):
        attnc.natten.na2d(t["query"], t["key"], t["value"], 3, additional_keys=t["additional_keys"],
                          additional_values=t["additional_values"], backend="reference")


def test_a_non_tensor_is_named():
    q, _, v = inputs((9,))
    with pytest.raises(TypeError, match=r"attnc: na1d: key must be a tensor \[B, L, H, D\], got list"):
        attnc.natten.na1d(q, [1, 2], v, 3)


# -- the docs ------------------------------------------------------------------------------------------------------


def test_the_porting_note_runs():
    text = (ROOT / "docs" / "natten.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "docs/natten.md has no python block"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # backend="auto" on a CPU says that it runs the reference
        for code in blocks:
            exec(compile(code, "docs/natten.md", "exec"), {"__name__": "natten_docs"})
