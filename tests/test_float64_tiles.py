"""Tile configs for float64 inputs: a float64 element takes four times a bfloat16's shared memory and, accumulated,
two registers, so the 2-byte ladders spill and, from D = 192, need more shared memory than an H200 block has.
float64 gets its own small-tile ladder and search space, and a default is only chosen where its kernels fit the
architecture's shared memory (by estimate before compiling, by the ahead-of-time compile's report after)."""

from __future__ import annotations

import pytest
import torch

import attnc
from attnc.runtime import autotune, tuning
from attnc.runtime.autotune import (
    KINDS,
    accumulator_registers,
    candidates,
    default_for,
    default_ladder,
    first_spill_free,
    shared_memory_estimate,
    shared_memory_limit,
    tile_candidates,
)
from attnc.runtime.config import KernelConfig

F64_BYTES = torch.float64.itemsize
H200_SHARED_MEMORY = 227 * 1024


def causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("head_dim", [64, 128, 192, 256])
def test_float64_ladders_fit_sm90_by_estimate(kind: str, head_dim: int) -> None:
    ladder = default_ladder(kind, "sm_90", head_dim, head_dim, F64_BYTES)
    for config in ladder:
        assert shared_memory_estimate(kind, config, head_dim, head_dim, F64_BYTES) <= H200_SHARED_MEMORY
        assert accumulator_registers(kind, config, head_dim, head_dim, F64_BYTES) <= autotune.ACCUMULATOR_REGISTER_LIMIT


@pytest.mark.parametrize("head_dim", [192, 256])
def test_the_two_byte_forward_default_would_not_fit_in_float64(head_dim: int) -> None:
    """Why float64 has its own ladder: at the widest heads every 2-byte forward rung needs more shared memory than
    an H200 block has (the backward's 2-byte rungs there are already the smallest tiles)."""
    for config in default_ladder("forward", "sm_90", head_dim, head_dim):
        assert shared_memory_estimate("forward", config, head_dim, head_dim, F64_BYTES) > H200_SHARED_MEMORY


def test_two_byte_ladders_are_unchanged_by_the_shared_memory_check() -> None:
    """Every rung of the bfloat16 tables fits its architecture by estimate, so none is dropped."""
    for arch, table in autotune.DEFAULTS_BY_ARCH.items():
        arch = "sm_120" if arch == "generic" else arch
        for kind, rows in table.items():
            for upto, ladder in rows:
                head_dim = 256 if upto == float("inf") else int(upto)
                assert default_ladder(kind, arch, head_dim, head_dim) == ladder


def test_rungs_over_the_shared_memory_limit_are_dropped() -> None:
    """float32 at D = 128: the first Hopper forward rung (128 x 128, two stages) needs 320 KiB by estimate."""
    two_byte = default_ladder("forward", "sm_90", 128, 128)
    four_byte = default_ladder("forward", "sm_90", 128, 128, 4)
    assert shared_memory_estimate("forward", two_byte[0], 128, 128, 4) > shared_memory_limit("sm_90")
    assert four_byte == two_byte[1:]
    # where no rung fits, the smallest remains (the ahead-of-time check then names the shortfall)
    assert default_ladder("backward_dkdv", "sm_89", 256, 256, F64_BYTES) == (KernelConfig(16, 16, 8, 1),)


@pytest.mark.parametrize("arch", ["sm_80", "sm_89", "sm_90"])
@pytest.mark.parametrize("kind", KINDS)
def test_float64_tuning_candidates_fit(arch: str, kind: str) -> None:
    for head_dim in (64, 128, 256):
        found = candidates(kind, head_dim, head_dim, F64_BYTES, arch)
        for config in found:
            assert shared_memory_estimate(kind, config, head_dim, head_dim, F64_BYTES) <= shared_memory_limit(arch)
            assert accumulator_registers(kind, config, head_dim, head_dim, F64_BYTES) <= 128
        if arch == "sm_90":
            assert found, (kind, head_dim)
            first = tile_candidates(kind, arch, head_dim, head_dim, F64_BYTES)[0]
            assert first == default_for(kind, arch, head_dim, head_dim, F64_BYTES)


LADDER = tuple(KernelConfig(m, n, 4, stages) for m, n, stages in ((64, 64, 2), (32, 32, 2), (16, 32, 1), (16, 16, 1)))


def test_first_spill_free_skips_rungs_that_do_not_fit() -> None:
    asked: list[KernelConfig] = []

    def spills(config: KernelConfig) -> int:
        asked.append(config)
        return 0

    too_big = {LADDER[0], LADDER[1]}
    assert first_spill_free(LADDER, spills, fits=lambda c: c not in too_big) == LADDER[2]
    assert asked == [LADDER[2]]  # nothing is compiled for rungs ruled out, nor after the one chosen


def test_first_spill_free_falls_back_to_the_smallest_that_fits() -> None:
    fits = {LADDER[0], LADDER[2]}.__contains__
    assert first_spill_free(LADDER, lambda c: 8, fits=fits) == LADDER[2]
    assert first_spill_free(LADDER, lambda c: 8, fits=lambda c: False) == LADDER[-1]
    assert first_spill_free(LADDER, lambda c: 0 if c == LADDER[1] else 8) == LADDER[1]
    assert first_spill_free(LADDER, lambda c: 8) == LADDER[-1]


# ---- ahead-of-time compiles for sm_90 (no GPU): the defaults a float64 launch on an H200 picks ----


@pytest.mark.slow
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_float64_defaults_compile_and_fit_sm90(head_dim: int) -> None:
    """Every kernel of a causal variant's forward and backward, with the untuned configs a float64 launch picks
    (`tuning.spill_free_default`), compiles for sm_90 within an H200's shared memory. None spills, but for the
    backward at D = 256, where even 16 x 16 tiles hold four [16, 256] float64 tiles per program."""
    attn = attnc.compile(causal)
    report = attn.resources(arch="sm_90", dtype=torch.float64, head_dim=head_dim, backward=True)
    assert {"forward", "forward_block_mask", "backward_dkdv", "backward_dq"} <= set(report)
    for kernel, info in report.items():
        if kernel == "block_map":
            continue
        kind = kernel.removesuffix("_block_mask")
        assert info["config"] in default_ladder(kind, "sm_90", head_dim, head_dim, F64_BYTES), (kernel, info)
        assert 0 < info["shared_memory"] <= H200_SHARED_MEMORY, (kernel, info)
        assert 0 < info["registers"] <= 255, (kernel, info)
        if head_dim <= 128 or kind == "forward":
            assert info["spills"] == 0, (kernel, info)


@pytest.mark.slow
def test_a_float64_backward_too_wide_for_the_architecture_is_a_clear_error() -> None:
    """At D = 256 the dK/dV kernel's smallest float64 tiles need 160 KiB of shared memory: an sm_89 block has
    99 KiB. The untuned default says so instead of leaving a launch to fail in Triton."""
    attn = attnc.compile(causal)
    with pytest.raises(ValueError, match=r"attnc: the backward_dkdv kernel for float64 inputs .* D=256.* sm_89 has"):
        tuning.spill_free_default(attn, "backward_dkdv", arch="sm_89", dtype=torch.float64, D=256, Dv=256)
