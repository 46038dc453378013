"""The public API: backend choice, input validation, explain, and FlexAttention interoperability."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch

import attnc
from attnc import api
from tests.zoo import DEVICE


def causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def qkv(B=1, Hq=2, Hkv=2, Q=40, KV=40, D=16, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    shapes = ((B, Hq, Q, D), (B, Hkv, KV, D), (B, Hkv, KV, D))
    return tuple(torch.randn(shape, generator=g, dtype=dtype).to(DEVICE) for shape in shapes)


def test_public_names():
    for name in ("flex_attention", "create_block_mask", "and_masks", "or_masks", "noop_mask", "compile",
                 "BlockMask", "TraceError"):
        assert hasattr(attnc, name)


def test_auto_backend_on_cpu_warns_once_and_uses_the_reference():
    api._WARNED.clear()
    q, k, v = qkv()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = attnc.flex_attention(q, k, v, mask_mod=causal)
        attnc.flex_attention(q, k, v, mask_mod=causal)
    assert len([w for w in caught if "reference interpreter" in str(w.message)]) == 1
    torch.testing.assert_close(out, attnc.flex_attention(q, k, v, mask_mod=causal, backend="reference"))


@pytest.mark.parametrize(
    ("inputs", "kwargs", "error", "match"),
    [
        (qkv(Hq=4, Hkv=2), {}, ValueError, "enable_gqa=True"),
        (qkv(Hq=3, Hkv=2), {"enable_gqa": True}, ValueError, "multiple of key/value heads"),
        ((torch.randn(1, 2, 8, 16), torch.randn(1, 2, 8, 32), torch.randn(1, 2, 8, 16)), {}, ValueError,
         "head dim"),
        ((torch.randn(2, 8, 16), torch.randn(2, 8, 16), torch.randn(2, 8, 16)), {}, ValueError, "4-D"),
        ((torch.randn(1, 2, 8, 16), torch.randn(1, 2, 8, 16).half(), torch.randn(1, 2, 8, 16)), {}, TypeError,
         "share a dtype"),
        (tuple(t.to(torch.int32) for t in qkv()), {}, TypeError, "int32"),
        ((torch.randn(1, 2, 8, 16), torch.randn(1, 2, 9, 16), torch.randn(1, 2, 8, 16)), {}, ValueError,
         "must match key"),
        (qkv(D=300), {}, ValueError, "up to 256"),
        (qkv(), {"backend": "cuda"}, ValueError, "backend must be one of"),
        (qkv(), {"kernel_options": {"BLOCK_K": 4}}, ValueError, "unknown kernel_options"),
    ],
)
def test_bad_input_gets_a_clear_error(inputs, kwargs, error, match):
    with pytest.raises(error, match=match):
        attnc.flex_attention(*inputs, mask_mod=causal, **{"backend": "triton", **kwargs})


def test_block_mask_for_other_lengths_is_rejected():
    bm = attnc.create_block_mask(causal, 1, 1, 64, 64, device=DEVICE, BLOCK_SIZE=32)
    with pytest.raises(ValueError, match="built for"):
        attnc.flex_attention(*qkv(Q=40, KV=40), block_mask=bm, backend="triton")


def test_tiny_block_size_is_rejected_by_the_kernel():
    bm = attnc.create_block_mask(causal, 1, 1, 40, 40, device=DEVICE, BLOCK_SIZE=8)
    with pytest.raises(ValueError, match="multiple of 16"):
        attnc.flex_attention(*qkv(), block_mask=bm, backend="triton")


def test_both_backends_differentiate_and_agree():
    q, k, v = (t.requires_grad_() for t in qkv())
    grads = {}
    for backend in ("triton", "reference"):
        q.grad = k.grad = v.grad = None
        attnc.flex_attention(q, k, v, mask_mod=causal, backend=backend).square().sum().backward()
        grads[backend] = [t.grad.clone() for t in (q, k, v)]
    for got, expected in zip(grads["triton"], grads["reference"], strict=True):
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    with torch.no_grad():  # no graph: the plain forward
        assert attnc.flex_attention(q, k, v, mask_mod=causal, backend="triton").grad_fn is None


def test_captured_meta_tensor_is_rejected_by_name():
    bias = torch.zeros(4, device="meta")

    def score(s, b, h, q, kv):
        return s + bias[h]

    with pytest.raises(ValueError, match=r"captured tensor score_mod\.bias is a meta tensor"):
        attnc.compile(score_mod=score)(*qkv(), backend="triton")


def test_zero_length_query():
    q, k, v = qkv(Q=0)
    out, lse = attnc.compile(causal)(q, k, v, return_lse=True, backend="triton")
    assert out.shape == (1, 2, 0, 16) and lse.shape == (1, 2, 0)


def test_explain_shows_every_stage():
    slopes = torch.ones(2, device=DEVICE)

    def alibi(score, b, h, q, kv):
        return score + slopes[h] * (kv - q)

    text = attnc.compile(causal, alibi).explain()
    for section in ("== traced ==", "== fold ==", "== simplify ==", "== index_algebra ==", "== placement ==",
                    "== triton source =="):
        assert section in text
    assert "def attnc_forward" in text and "attnc_backward" not in text
    with_backward = attnc.compile(causal, alibi).explain(backward=True)
    assert "== backward triton source ==" in with_backward and "def attnc_backward_dkdv" in with_backward


def test_hoisting_moves_query_only_terms_out_of_the_key_loop():
    doc = torch.zeros(64, dtype=torch.int32)

    def document(b, h, q, kv):
        return doc[q] == doc[kv]

    source = attnc.compile(document).source.source
    main = source[source.index("def attnc_forward"):]
    hoisted = main[main.index("q_idx = offs_m[:, None]"):main.index("m_i = tl.full")]
    assert "tl.load(buf0" in hoisted  # doc[q] once per program
    tile = source[source.index("def _attend_tile"):source.index("def attnc_forward")]
    assert tile.count("tl.load(buf0") == 1  # doc[kv] per tile


def test_generated_source_is_identical_across_processes():
    code = ("import attnc, torch\n"
            "t = torch.zeros(4)\n"
            "def s(score, b, h, q, kv):\n    return score + t[h] * (q - kv) // 3\n"
            "print(attnc.compile(lambda b, h, q, kv: q >= kv, s).source.source)\n")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            for _ in range(2)]
    assert runs[0] == runs[1] and "def attnc_forward" in runs[0]


def test_accepts_torch_flex_attention_block_masks():
    flex = pytest.importorskip("torch.nn.attention.flex_attention")
    bm = flex.create_block_mask(causal, 1, 1, 128, 128, device=DEVICE, BLOCK_SIZE=64)
    q, k, v = qkv(Q=128, KV=128)
    out = attnc.flex_attention(q, k, v, block_mask=bm, backend="triton")
    torch.testing.assert_close(out, attnc.flex_attention(q, k, v, mask_mod=causal, backend="reference"),
                               atol=2e-5, rtol=2e-5)


def test_zero_length_keys_give_empty_rows():
    q, k, v = qkv(KV=0)
    out, lse = attnc.compile(causal)(q, k, v, return_lse=True, backend="triton")
    assert torch.equal(out, torch.zeros_like(out)) and torch.isneginf(lse).all()
