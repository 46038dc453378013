"""Generated forward kernels (Triton interpreter on CPU) vs the reference interpreter vs dense torch."""

from __future__ import annotations

import pytest
import torch

import attnc
from tests.zoo import DEVICE, Case, dense_attention, make_cases

CASES = {c.name: c for c in make_cases()}
TOL = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.float16: dict(atol=2e-3, rtol=2e-3),
       torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2)}


def make_inputs(case: Case, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    Dv = case.Dv or case.D
    q = torch.randn(case.B, case.Hq, case.Q_LEN, case.D, generator=g).to(DEVICE, dtype)
    k = torch.randn(case.B, case.Hkv, case.KV_LEN, case.D, generator=g).to(DEVICE, dtype)
    v = torch.randn(case.B, case.Hkv, case.KV_LEN, Dv, generator=g).to(DEVICE, dtype)
    return q, k, v


def assert_matches(out, lse, ref_out, ref_lse, dtype):
    assert not out.isnan().any() and not lse.isnan().any()
    torch.testing.assert_close(out.double(), ref_out.double(), **TOL[dtype])
    masked = ref_lse.isinf()
    assert torch.equal(lse.isinf(), masked)
    torch.testing.assert_close(lse[~masked].double(), ref_lse[~masked].double(), **TOL[dtype])


DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])


@pytest.mark.parametrize("dtype", DTYPES, ids=[str(d).removeprefix("torch.") for d in DTYPES])
@pytest.mark.parametrize("name", sorted(CASES))
def test_kernel_matches_reference_and_dense(name, dtype):
    case = CASES[name]
    q, k, v = make_inputs(case, dtype)
    attn = attnc.compile(case.mask_mod, case.score_mod)
    out, lse = attn(q, k, v, return_lse=True, backend="triton")
    ref_out, ref_lse = attn(q, k, v, return_lse=True, backend="reference")
    dense_out, dense_lse = dense_attention(case, q, k, v)
    assert out.dtype == dtype and lse.dtype == torch.float32
    assert_matches(out, lse, ref_out, ref_lse, dtype)
    assert_matches(out, lse, dense_out, dense_lse, dtype)


def test_fully_masked_rows_are_zero_with_lse_minus_inf():
    case = CASES["fully_masked_rows"]
    q, k, v = make_inputs(case, torch.float32)
    out, lse = attnc.compile(case.mask_mod)(q, k, v, return_lse=True, backend="triton")
    assert torch.equal(out[:, :, :11], torch.zeros_like(out[:, :, :11]))
    assert torch.isneginf(lse[:, :, :11]).all() and torch.isfinite(lse[:, :, 11:]).all()


def test_bfloat16_and_non_power_of_two_head_dims():
    case = Case("alibi80", CASES["alibi"].mask_mod, CASES["alibi"].score_mod, Hq=4, Hkv=4, D=80, Dv=48)
    q, k, v = make_inputs(case, torch.bfloat16)
    attn = attnc.compile(case.mask_mod, case.score_mod)
    out, lse = attn(q, k, v, return_lse=True, backend="triton")
    ref_out, ref_lse = dense_attention(case, q, k, v)
    assert_matches(out, lse, ref_out, ref_lse, torch.bfloat16)


@pytest.mark.parametrize("D", [16, 192, 256])
def test_head_dim_extremes(D):
    case = Case("causal", CASES["causal"].mask_mod, Q_LEN=70, KV_LEN=70, D=D)
    q, k, v = make_inputs(case, torch.float32)
    out, lse = attnc.compile(causal_mask)(q, k, v, return_lse=True, backend="triton")
    assert_matches(out, lse, *dense_attention(case, q, k, v), torch.float32)


def causal_mask(b, h, q, kv):
    return q >= kv


def test_strided_inputs_and_explicit_scale():
    case = Case("causal", causal_mask, Hq=4, Hkv=2, Q_LEN=65, KV_LEN=90, D=32)
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 65, 4, 32, generator=g).to(DEVICE).transpose(1, 2)  # [B, H, L, D] view of [B, L, H, D]
    k = torch.randn(1, 2, 32, 90, generator=g).to(DEVICE).transpose(2, 3)
    v = torch.randn(1, 90, 2, 64, generator=g).to(DEVICE).permute(0, 2, 1, 3)[..., ::2]
    assert not q.is_contiguous() and not k.is_contiguous() and not v.is_contiguous()
    out, lse = attnc.compile(causal_mask)(q, k, v, scale=0.3, return_lse=True, backend="triton")
    assert_matches(out, lse, *dense_attention(case, q, k, v, scale=0.3), torch.float32)


def test_small_tiles_cover_many_kv_iterations():
    case = CASES["sliding_window"]
    q, k, v = make_inputs(case, torch.float32)
    attn = attnc.compile(case.mask_mod)
    out, lse = attn(q, k, v, return_lse=True, backend="triton", kernel_options={"BLOCK_M": 16, "BLOCK_N": 16})
    assert_matches(out, lse, *dense_attention(case, q, k, v), torch.float32)


@pytest.mark.parametrize("name", ["causal", "document", "relative_bias", "neighborhood_2d", "fully_masked_rows",
                                  "gqa_causal"])
def test_flex_attention_with_block_mask(name):
    case = CASES[name]
    q, k, v = make_inputs(case, torch.float32)
    bm = attnc.create_block_mask(case.mask_mod, None, None, case.Q_LEN, case.KV_LEN, device=DEVICE, BLOCK_SIZE=32)
    out, lse = attnc.flex_attention(q, k, v, case.score_mod, block_mask=bm, enable_gqa=True, return_lse=True,
                                    backend="triton")
    ref = attnc.flex_attention(q, k, v, case.score_mod, block_mask=bm, enable_gqa=True, return_lse=True,
                               backend="reference")
    assert_matches(out, lse, *ref, torch.float32)
    assert_matches(out, lse, *dense_attention(case, q, k, v), torch.float32)


def test_block_mask_skips_unlisted_blocks():
    """A BlockMask listing fewer blocks than the mask allows: both backends attend only to listed blocks."""
    Q = KV = 96
    bm = attnc.create_block_mask(causal_mask, 1, 1, Q, KV, device=DEVICE, BLOCK_SIZE=32)
    bm.kv_num_blocks[..., 2] = 0  # the last query block sees nothing
    if bm.full_kv_num_blocks is not None:
        bm.full_kv_num_blocks[..., 2] = 0
    q, k, v = make_inputs(Case("x", Q_LEN=Q, KV_LEN=KV), torch.float32)
    out, lse = attnc.flex_attention(q, k, v, block_mask=bm, return_lse=True, backend="triton")
    ref = attnc.flex_attention(q, k, v, block_mask=bm, return_lse=True, backend="reference")
    assert_matches(out, lse, *ref, torch.float32)
    assert torch.isneginf(lse[..., 64:]).all()


def test_same_variant_generates_identical_source():
    a = attnc.compile(CASES["alibi"].mask_mod, CASES["alibi"].score_mod)
    b = attnc.compile(CASES["alibi"].mask_mod, CASES["alibi"].score_mod)
    assert a.source.source == b.source.source


def test_full_tiles_never_evaluate_the_mask():
    source = attnc.compile(CASES["document"].mask_mod).source.source
    tile_fn = source[source.index("def _attend_tile"):source.index("def attnc_forward")]
    mask_section = tile_fn[tile_fn.index("if apply_mask:"):tile_fn.index("if CHECK_KV:")]
    assert "tl.load(buf" in mask_section  # the document ids are read only under apply_mask
    assert "tl.load(buf" not in tile_fn[:tile_fn.index("if apply_mask:")]
    full_loop = source[source.index("if HAS_FULL_BLOCKS:"):source.index("n_partial = tl.load")]
    assert "HAS_MASK" not in full_loop and "False, True, not KV_EVEN" in full_loop
    visit = source[source.index("def _visit_tile"):source.index("def attnc_forward")]
    assert "may_false, may_true, not KV_EVEN" in visit  # a tile the tile test calls full is attended unmasked


def test_block_tiles_past_the_sequence_are_never_read():
    """A BlockMask block larger than the sequence holds kernel tiles that start past KV_LEN (and Q_LEN): the
    kernels must mask them even when the lengths are multiples of the tile. Memory past the end is NaN here,
    so a read of it would show in the outputs and gradients."""
    g = torch.Generator().manual_seed(5)
    B, H, L, D = 1, 2, 64, 16

    def poisoned():
        full = torch.randn(B, H, 2 * L, D, generator=g).to(DEVICE)
        full[:, :, L:] = float("nan")
        return full[:, :, :L].requires_grad_(True)

    q, k, v = poisoned(), poisoned(), poisoned()
    bm = attnc.create_block_mask(causal_mask, None, None, L, L, device=DEVICE, BLOCK_SIZE=128)
    out, lse = attnc.flex_attention(q, k, v, block_mask=bm, return_lse=True, backend="triton")
    ref_out, ref_lse = attnc.flex_attention(q, k, v, block_mask=bm, return_lse=True, backend="reference")
    assert_matches(out, lse, ref_out, ref_lse, torch.float32)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    ref_grads = torch.autograd.grad(ref_out.sum(), (q, k, v))
    for got, expected in zip(grads, ref_grads, strict=True):
        assert not got.isnan().any()
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
