"""Hopper options (tensor descriptors, warp specialization) and the on-band/off-band loop split: the same
results as the reference in the Triton interpreter, forward and backward; an sm_90 compile without spills."""

from __future__ import annotations

import pytest
import torch

import attnc
from attnc.runtime.config import KernelConfig
from attnc.runtime.launch import tma_ready, with_tma_if_ready
from attnc.runtime.launch_backward import BackwardConfigs
from tests.test_sparsity import families, lengths

OPTIONS = {"tma": {"USE_TMA": True}, "tma+ws": {"USE_TMA": True, "WARP_SPECIALIZE": True},
           "ws": {"WARP_SPECIALIZE": True}}
TILES = {"BLOCK_M": 32, "BLOCK_N": 32}


def _check(attn, q, k, v, options, **values) -> None:
    out, lse = attn(q, k, v, return_lse=True, backend="triton", kernel_options={**TILES, **options}, **values)
    ref_out, ref_lse = attn(q, k, v, return_lse=True, backend="reference", **values)
    torch.testing.assert_close(out, ref_out, atol=2e-5, rtol=2e-5)
    assert torch.equal(lse.isinf(), ref_lse.isinf())
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(ref_out, (q, k, v), grad)
    for name, a, b in zip("qkv", got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=f"d{name}")


def _inputs(B: int, q_len: int, kv_len: int, D: int = 16, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, 4, q_len, D, generator=g, dtype=dtype).requires_grad_()
    k, v = (torch.randn(B, 2, kv_len, D, generator=g, dtype=dtype).requires_grad_() for _ in range(2))
    return q, k, v


@pytest.mark.parametrize("option", sorted(OPTIONS))
@pytest.mark.parametrize("name", ["causal", "sliding_window", "prefix_lm", "padding", "natten_2d", "document"])
def test_options_match_the_reference_forward_and_backward(name: str, option: str) -> None:
    q_len, kv_len = lengths(name)
    attn = attnc.compile(families(q_len, kv_len)[name])
    _check(attn, *_inputs(2 if name == "padding" else 1, q_len, kv_len), OPTIONS[option])


@pytest.mark.parametrize("option", ["tma", "tma+ws"])
def test_score_mod_with_rows_that_have_no_keys(option: str) -> None:
    attn = attnc.compile(lambda b, h, q, kv: (kv <= q) & (q >= 40),
                         lambda s, b, h, q, kv: 20.0 * torch.tanh(s / 20.0) - 0.1 * (q - kv))
    q, k, v = _inputs(1, 150, 150)
    _check(attn, q, k, v, OPTIONS[option])
    out, lse = attn(q, k, v, return_lse=True, backend="triton", kernel_options={**TILES, **OPTIONS[option]})
    assert torch.equal(out[:, :, :40], torch.zeros_like(out[:, :, :40]))
    assert bool((lse[:, :, :40] == float("-inf")).all()) and not bool(out.isnan().any())


def test_tma_needs_aligned_rows_and_falls_back_without_them() -> None:
    aligned = torch.zeros(1, 2, 64, 32, dtype=torch.float16)
    narrow = torch.zeros(1, 2, 64, 20, dtype=torch.float16)  # 40-byte rows
    assert tma_ready(aligned)
    assert not tma_ready(narrow)
    assert not tma_ready(aligned.transpose(-1, -2))  # last stride not 1
    config = KernelConfig(64, 64, 4, 1, tma=True)
    assert with_tma_if_ready(config, narrow) == KernelConfig(64, 64, 4, 1)
    attn = attnc.compile(lambda b, h, q, kv: q >= kv)
    q, k, v = _inputs(1, 100, 100, D=20, dtype=torch.float16)
    out = attn(q, k, v, backend="triton", kernel_options={"USE_TMA": True})
    ref = attn(q.float(), k.float(), v.float(), backend="reference")
    torch.testing.assert_close(out.float(), ref, atol=2e-3, rtol=2e-3)


def test_banded_masks_get_an_off_band_loop_and_data_masks_do_not() -> None:
    causal = attnc.compile(lambda b, h, q, kv: q >= kv)
    for source in (causal.source.source, causal.backward_source.source):
        assert "band_lo" in source and "warp_specialize=WARP_SPECIALIZE" in source
    assert causal.source.source.count("band_lo = ") == 2  # computed, then emptied where there are no full tiles
    docs = torch.zeros(64, dtype=torch.int32)
    document = attnc.compile(lambda b, h, q, kv: docs[q] == docs[kv])
    assert "band_lo" not in document.source.source


@pytest.mark.parametrize("options", [{}, OPTIONS["tma+ws"]], ids=["plain", "tma+ws"])
def test_window_with_on_band_tiles_on_both_sides_of_the_off_band_ones(options) -> None:
    """A window of 100 keys over tiles of 32: each query tile has masked tiles before and after its full
    ones, so all three loops of the split run (and the last key tile is cut by KV_LEN = 230)."""
    attn = attnc.compile(lambda b, h, q, kv: (q - kv >= 0) & (q - kv < 100))
    _check(attn, *_inputs(1, 230, 230), options)


@pytest.mark.parametrize("option", ["tma", "tma+ws"])
def test_sm90_compile_with_the_options_does_not_spill(option: str) -> None:
    attn = attnc.compile(lambda b, h, q, kv: (q >= kv) & (q - kv < 1024))
    tma, ws = True, option == "tma+ws"
    config = KernelConfig(128, 32, 8, 3, tma=tma, warp_specialize=ws)
    backward = BackwardConfigs(KernelConfig(32, 32, 8, 2, tma=tma, warp_specialize=ws),
                               KernelConfig(64, 32, 8, 2, tma=tma))
    report = attn.resources("sm_90", torch.bfloat16, 128, backward=True, config=config, backward_configs=backward)
    for name, result in report.items():
        if name == "block_map":
            continue
        assert result["spills"] == 0, (name, result)
        assert result["tma"], name  # the descriptors became TMA copies
