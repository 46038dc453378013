"""A compiled variant's runtime objects each do their one job, and `Attention` delegates to them."""

from __future__ import annotations

import pytest
import torch

import attnc
from attnc.runtime.describe import VariantReport
from attnc.runtime.kernel_options import check_kernel_options
from attnc.runtime.launch import check_inputs
from attnc.runtime.launcher import Launcher
from attnc.runtime.reference_backend import ReferenceBackend
from attnc.runtime.sparsity import with_block_sparsity
from attnc.runtime.tuner import VariantTuner
from tests.zoo import DEVICE


def causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def _inputs(length: int = 96) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(1, 2, length, 16, generator=g).to(DEVICE) for _ in range(3))


def test_each_object_is_built_from_the_variants_programs_and_rebuilt_with_them() -> None:
    attn = attnc.compile(causal)
    assert isinstance(attn.launcher, Launcher) and isinstance(attn.reference, ReferenceBackend)
    assert isinstance(attn.tuner, VariantTuner) and isinstance(attn.report, VariantReport)
    assert attn.launcher.kernels is attn.kernels and attn.launcher.planner is attn.planner
    assert attn.launcher.program is attn.program and attn.reference.program is attn.traced.program
    assert attn.tuner.launcher is attn.launcher
    before = attn.launcher
    attn._retrace()
    assert attn.launcher is not before and attn.launcher.kernels is attn.kernels


def test_the_launchers_plan_is_the_call() -> None:
    attn = attnc.compile(causal)
    q, k, v = _inputs()
    shapes = check_inputs(q, k, v, enable_gqa=True)
    bindings = attn.bind_mods(attn.mask_mod, attn.score_mod)
    plan = attn.launcher.plan(q, k, v, None, bindings, None, shapes, check_kernel_options(None), False)
    out, lse = plan.forward(q, k, v, bindings.tensors)
    expected, expected_lse = attn(q, k, v, return_lse=True, backend="triton")
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
    torch.testing.assert_close(lse, expected_lse, atol=0, rtol=0)


def test_the_launcher_walks_the_callers_block_map_else_the_planners() -> None:
    docs = torch.repeat_interleave(torch.arange(2, dtype=torch.int32), torch.tensor([40, 56])).to(DEVICE)
    attn = attnc.compile(lambda b, h, q, kv: docs[q] == docs[kv])
    q, k, v = _inputs()
    shapes = check_inputs(q, k, v, enable_gqa=True)
    bindings = attn.bind_mods(attn.mask_mod, attn.score_mod)
    built = attn.launcher.prepare(q, bindings, shapes, None)
    assert built is not None and built is attn.planner._plan[1]  # a mask that reads data: the planner's map
    given = attn.block_mask(1, 1, 96, 96, device=DEVICE)
    assert attn.launcher.prepare(q, bindings, shapes, given) is given
    closed_form = attnc.compile(causal)
    assert closed_form.launcher.prepare(q, closed_form.bind_mods(causal, None), shapes, None) is None


def test_the_launcher_refuses_a_captured_tensor_on_another_device() -> None:
    attn = attnc.compile(causal)
    q = torch.randn(1, 1, 32, 16)
    bindings = attn.bind_mods(causal, None)
    bindings = type(bindings)((torch.zeros(3, device="meta"),), ())
    with pytest.raises(ValueError, match="captured tensor #0"):
        attn.launcher.runnable(q, bindings)


def test_the_reference_backend_is_the_reference_call() -> None:
    attn = attnc.compile(causal)
    q, k, v = _inputs()
    shapes = check_inputs(q, k, v, enable_gqa=True)
    out, lse = attn.reference.forward(q, k, v, None, attn.bind_mods(causal, None), None, shapes)
    expected, expected_lse = attn(q, k, v, return_lse=True, backend="reference")
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
    torch.testing.assert_close(lse, expected_lse, atol=0, rtol=0)


def test_block_sparsity_as_ir_keeps_only_the_listed_blocks() -> None:
    """A BlockMask that lists only the diagonal blocks of a full mask means a block-diagonal mask."""
    attn = attnc.compile()
    q, k, v = _inputs(64)
    diagonal = attnc.create_block_mask(lambda b, h, q, kv: q // 32 == kv // 32, 1, 1, 64, 64, device=DEVICE,
                                       BLOCK_SIZE=32)
    program, tensors = with_block_sparsity(attn.traced.program, [], diagonal)
    assert len(program.tensors) == len(tensors) == 1
    out = attn(q, k, v, block_mask=diagonal, backend="reference")
    halves = [attn(q[:, :, s], k[:, :, s], v[:, :, s], backend="reference")
              for s in (slice(0, 32), slice(32, 64))]
    torch.testing.assert_close(out, torch.cat(halves, dim=2), atol=1e-6, rtol=1e-6)


def test_the_report_counts_tiles_and_explains_the_pipeline() -> None:
    attn = attnc.compile(causal)
    stats = attn.report.tile_stats(attn.bind_mods(causal, None), 1, 1, 256, 256, BLOCK_M=64, BLOCK_N=64,
                                   device="cpu")
    assert stats == {"empty": 6, "partial": 4, "full": 6} == attn.tile_stats(1, 1, 256, 256, BLOCK_M=64, BLOCK_N=64)
    text = attn.report.explain()
    assert text == attn.explain() and "== traced ==" in text and "== triton source ==" in text
