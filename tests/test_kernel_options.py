"""`kernel_options` takes every key torch 2.13's FlexAttention documents: tile and launch options set the kernel
they name (forward, dK/dV, dQ; `fwd_` / `bwd_` prefixes as in torch), options about torch's own
implementations are accepted, and anything else is an error listing the known keys."""

from __future__ import annotations

import typing

import pytest
import torch
from torch.nn.attention import flex_attention as tfa

import attnc
from attnc.runtime.config import KernelConfig
from attnc.runtime.kernel_options import ACCEPTED, check_kernel_options, known_options

TYPICAL = {int: 64, bool: True}
BASE = KernelConfig(block_m=128, block_n=64, num_warps=4, num_stages=2)


def test_every_key_torch_documents_is_known() -> None:
    documented = typing.get_type_hints(tfa.FlexKernelOptions)
    assert set(documented) <= set(known_options())
    values = {name: TYPICAL.get(hint, "AUTO") for name, hint in documented.items()
              if name != "FORCE_USE_FLEX_ATTENTION"}  # torch refuses it next to BACKEND
    values["num_warps"], values["num_stages"] = 4, 2
    options = check_kernel_options(values)
    assert options.forward_config(BASE).block_m == 64


def test_backward_tiles_set_their_own_kernels() -> None:
    options = check_kernel_options({"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_M1": 32, "BLOCK_N1": 128,
                                    "BLOCK_M2": 128, "num_warps": 8})
    assert (options.forward_config(BASE).block_m, options.forward_config(BASE).block_n) == (64, 32)
    dkdv = options.backward_config("dkdv", BASE)
    assert (dkdv.block_m, dkdv.block_n, dkdv.num_warps) == (32, 128, 8)
    dq = options.backward_config("dq", BASE)
    # BLOCK_M2 given; BLOCK_N2 not: the forward's BLOCK_N bounds it
    assert (dq.block_m, dq.block_n, dq.num_warps) == (128, 32, 8)


def test_prefixes_limit_an_option_to_one_direction() -> None:
    options = check_kernel_options({"num_warps": 4, "fwd_num_warps": 8, "bwd_num_stages": 1, "fwd_BLOCK_M": 32})
    forward = options.forward_config(BASE)
    assert (forward.num_warps, forward.num_stages, forward.block_m) == (8, 2, 32)
    backward = options.backward_config("dq", BASE)
    assert (backward.num_warps, backward.num_stages, backward.block_m) == (4, 1, 128)


@pytest.mark.parametrize(("options", "message"), [
    ({"BLOCK_K": 64}, r"unknown kernel_options \['BLOCK_K'\]; known: \['BACKEND'"),
    ({"OUTPUT_LOGSUMEXP": True}, r"\['OUTPUT_LOGSUMEXP'\] are set by the call itself"),
    ({"BACKEND": "CUDNN"}, r"kernel_options\['BACKEND'\]='CUDNN' is invalid: one of"),
    ({"BACKEND": "TRITON", "FORCE_USE_FLEX_ATTENTION": True}, "cannot be combined"),
    ({"PRESCALE_QK": 1}, r"PRESCALE_QK must be True or False"),
    ({"waves_per_eu": 1.5}, r"waves_per_eu must be an integer"),
    ({"bwd_BLOCK_M1": 24}, r"kernel_options\['bwd_BLOCK_M1'\]=24 is invalid: BLOCK_M1 must be a power of two"),
    ({"fwd_num_warps": 3}, r"fwd_num_warps'\]=3 is invalid: num_warps must be one of"),
])
def test_bad_options_are_named(options, message) -> None:
    with pytest.raises(ValueError, match=message):
        check_kernel_options(options)


def test_accepted_options_say_why_they_do_nothing() -> None:
    assert all(reason for reason in ACCEPTED.values())


def test_torch_style_options_run_forward_and_backward() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 70, 16, generator=g, requires_grad=True) for _ in range(3))

    def causal(b, h, q_idx, kv_idx):
        return q_idx >= kv_idx

    options = {"BLOCK_M": 32, "BLOCK_N": 16, "BLOCK_M1": 16, "BLOCK_N1": 32, "BLOCK_M2": 32, "BLOCK_N2": 16,
               "num_warps": 4, "num_stages": 1, "PRESCALE_QK": False, "ROWS_GUARANTEED_SAFE": False,
               "BLOCKS_ARE_CONTIGUOUS": False, "WRITE_DQ": True, "BACKEND": "TRITON", "USE_TMA": False}
    out = attnc.flex_attention(q, k, v, mask_mod=causal, backend="triton", kernel_options=options)
    expected = attnc.flex_attention(q, k, v, mask_mod=causal, backend="reference")
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=2e-5)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    expected_grads = torch.autograd.grad(expected.sum(), (q, k, v))
    for a, b in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
