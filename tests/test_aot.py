"""Generated kernels compile for sm_90 ahead of time (no GPU): catches what the interpreter lets
through, and pins the default config's register budget."""

from __future__ import annotations

import pytest
import torch

import attnc
from attnc.runtime.config import KernelConfig
from attnc.runtime.launch_backward import BackwardConfigs
from tests.zoo import make_cases

CASES = {c.name: c for c in make_cases()}


# Each case compiles the default ladder's rungs until one is spill-free, then every kernel a call launches:
# a mask-only variant, a gathered bias (the most registers) and a softcap at D = 128; a captured-slope bias
# and document ids (attnc's own block map) at D = 64.
@pytest.mark.parametrize(("name", "head_dim"), [("causal", 128), ("relative_bias", 128), ("softcap", 128),
                                               ("alibi", 64), ("document", 64)])
def test_default_config_has_no_spills_on_sm90(name, head_dim):
    """The untuned configs a launch picks (`tuning.spill_free_default`) compile without spills, in every
    kernel of the forward and backward, specialised as a launch at the benchmark's shape."""
    case = CASES[name]
    attn = attnc.compile(case.mask_mod, case.score_mod)
    report = attn.resources(arch="sm_90", dtype=torch.bfloat16, head_dim=head_dim, backward=True)
    expected = {"forward", "forward_block_mask", "backward_dkdv", "backward_dq", "backward_dkdv_block_mask",
                "backward_dq_block_mask"}
    assert set(report) == expected | ({"block_map"} if attn.program.mask else set())
    for kernel, info in report.items():
        assert info["spills"] == 0, (kernel, info)
        assert 0 < info["registers"] <= 255 and info["shared_memory"] > 0


@pytest.mark.parametrize("name", ["t5_buckets", "neighborhood_2d", "dilated", "rotary_like", "nested_bias"])
def test_every_op_family_compiles_for_sm90(name):
    case = CASES[name]
    # fixed small tiles: this is about every op rendering to code ptxas accepts, not about the defaults
    small = KernelConfig(64, 32, 4, 2)
    report = attnc.compile(case.mask_mod, case.score_mod).resources(
        arch="sm_90", dtype=torch.float16, head_dim=80, backward=True, config=small,
        backward_configs=BackwardConfigs(KernelConfig(32, 32, 4, 1), KernelConfig(32, 32, 4, 1)))
    assert {"backward_dkdv", "backward_dq"} <= set(report)
    assert all(info["registers"] > 0 for info in report.values())


def test_block_map_builder_has_no_spills_on_sm90():
    """The builder for masks evaluated pair by pair: a dense mask tensor, relative tables, document ids."""
    from attnc.api import kernel_cache
    from attnc.runtime import aot
    from tests.test_block_map_kernel import _data_masks

    mods = [mask for mask, _, _ in _data_masks().values()] + [CASES["document"].mask_mod]
    jobs = []
    for mask_mod in mods:
        attn = attnc.compile(mask_mod)
        path = kernel_cache().ensure_file(attn.block_map_source.source)
        jobs.append(aot.block_map_job(path, attn.program, 90))
    for info in aot.compile_kernels(jobs):
        assert info["spills"] == 0 and 0 < info["registers"] <= 255, info


def test_bad_arch_is_a_clear_error():
    with pytest.raises(ValueError, match="sm_90"):
        attnc.compile(CASES["causal"].mask_mod).resources(arch="hopper")


@pytest.mark.parametrize(("name", "group", "query_rows", "page_size"),
                         [("causal", 8, 1, None), ("alibi", 4, 4, 64), ("document", 8, 1, 16)])
def test_decode_kernel_has_no_spills_on_sm90(name, group, query_rows, page_size):
    """The split-KV decode kernel at D = 128 in bfloat16, with its rows packing a GQA group's query heads, over
    contiguous and paged caches."""
    from attnc.api import kernel_cache
    from attnc.runtime import aot

    case = CASES[name]
    attn = attnc.compile(case.mask_mod, case.score_mod)
    path = kernel_cache().ensure_file(attn.decode_source.source)
    (info,) = aot.compile_kernels([aot.decode_job(path, attn.program, torch.bfloat16, 128, group, query_rows, 90,
                                                        page_size)])
    assert info["spills"] == 0 and 0 < info["registers"] <= 255, info


def test_decode_combine_compiles_on_sm90():
    from attnc.runtime import aot

    (info,) = aot.compile_kernels([aot.combine_job(torch.bfloat16, 128, 90)])
    assert info["spills"] == 0 and 0 < info["registers"] <= 255, info
