"""The generated block-map builder (run by the Triton interpreter here) gives the same BlockMask as the
dense torch builder, for masks its structure leaves open and for every sparsity family."""

from __future__ import annotations

import pytest
import torch

import attnc
from attnc.ir.reference import reference_attention
from tests.test_sparsity import families
from tests.zoo import DEVICE

pytestmark = pytest.mark.skipif(DEVICE != "cpu", reason="runs the builder in the Triton interpreter")

Q, KV = 200, 300


def _data_masks() -> dict[str, tuple[object, int, int]]:
    """Masks that read tensors at positions moving with q and kv: (mask, B, H). The dense mask tensor
    is classified from per-tile tables by the structure builder, the others only pair by pair."""
    gen = torch.Generator().manual_seed(0)
    dense = torch.rand(2, 3, Q, KV, generator=gen) < 0.5
    dense[:, :, :64] = True  # whole full and empty blocks, so all three classes occur
    dense[:, :, 64:128] = False
    dense[1, 2] = False  # a (b, h) with no allowed pair at all
    relative = torch.randint(0, 2, (Q + KV,), dtype=torch.int32, generator=gen)
    bias = torch.randn(3, Q + KV, generator=gen)

    def dense_mask(b, h, q, kv):
        return dense[b, h, q, kv] & (kv <= q + 100)

    def relative_table(b, h, q, kv):
        return (relative[q - kv + KV] > 0) | (q < 10)

    def thresholded_bias(b, h, q, kv):
        return torch.sin(bias[h, q - kv + KV] * 3) > -0.9

    return {"dense_mask": (dense_mask, 2, 3), "relative_table": (relative_table, 1, 1),
            "thresholded_bias": (thresholded_bias, 1, 3)}


def _assert_same(built: attnc.BlockMask, expected: attnc.BlockMask) -> None:
    assert torch.equal(built.to_dense(), expected.to_dense())
    for field in built.TENSOR_FIELDS:
        assert torch.equal(getattr(built, field), getattr(expected, field)), field


@pytest.mark.parametrize("block", [64, (32, 128), 48], ids=["64", "32x128", "48"])
@pytest.mark.parametrize("name", sorted(_data_masks()))
def test_builder_kernel_equals_dense_build(name, block):
    mask_mod, B, H = _data_masks()[name]
    attn = attnc.compile(mask_mod)
    built = attn.block_mask(B, H, Q, KV, "cpu", block, builder="kernel")
    _assert_same(built, attn.block_mask(B, H, Q, KV, "cpu", block, builder="dense"))


def test_builder_kernel_finds_all_three_classes_and_empty_heads():
    mask_mod, B, H = _data_masks()["dense_mask"]
    built = attnc.compile(mask_mod).block_mask(B, H, Q, KV, "cpu", 64, builder="kernel")
    assert int(built.full_kv_num_blocks.sum()) > 0 and int(built.kv_num_blocks.sum()) > 0
    assert int(built.kv_num_blocks[1, 2].sum()) == 0 and int(built.full_kv_num_blocks[1, 2].sum()) == 0


@pytest.mark.parametrize("name", sorted(families()))
def test_builder_kernel_on_sparsity_families(name):
    """Masks whose structure decides blocks: the kernel's tile test and pair counts agree with torch."""
    mask_mod = families(Q, Q)[name]
    B, H = (2, 4) if name in ("per_head_window", "padding") else (1, 1)
    attn = attnc.compile(mask_mod)
    built = attn.block_mask(B, H, Q, Q, "cpu", (64, 32), builder="kernel")
    _assert_same(built, attn.block_mask(B, H, Q, Q, "cpu", (64, 32), builder="dense"))


def test_plan_for_a_dense_mask_tensor_is_built_and_used_by_the_forward():
    mask_mod, B, H = _data_masks()["dense_mask"]
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(B, H, n, 32, generator=gen) for n in (Q, KV, KV))
    attn = attnc.compile(mask_mod)
    out, lse = attn(q, k, v, return_lse=True, backend="triton")
    assert attn.planner._plan is not None  # a block map was built for the call, from per-tile tables
    ref_out, ref_lse = attn(q, k, v, return_lse=True, backend="reference")
    torch.testing.assert_close(out, ref_out, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(lse, ref_lse, atol=2e-5, rtol=1e-5)
    assert torch.all(out[1, 2] == 0) and torch.all(lse[1, 2] == float("-inf"))
    expected = reference_attention(attn.program, q.double(), k.double(), v.double(),
                                   tensors=list(attn._bind().tensors), params=[])[0]
    torch.testing.assert_close(out.double(), expected, atol=2e-5, rtol=1e-5)


def test_builder_names_the_problem_for_a_mask_its_structure_cannot_classify():
    mask_mod, B, H = _data_masks()["relative_table"]
    with pytest.raises(ValueError, match="argument that depends on both q and kv"):
        attnc.compile(mask_mod).block_mask(B, H, Q, KV, "cpu", 64, builder="structure")
    with pytest.raises(ValueError, match="builder must be one of"):
        attnc.compile(mask_mod).block_mask(B, H, Q, KV, "cpu", 64, builder="fast")


def test_builder_source_decides_blocks_from_the_structure_before_pairs():
    mask_mod, _, _ = _data_masks()["relative_table"]
    source = attnc.compile(mask_mod).block_map_source
    # `q < 10` makes the first rows full whatever the table says: the tile test knows it
    assert "(q_hi > 9)" in source.source
    assert source.placement["once per query rows (q)"]  # q-only terms are hoisted out of the pair loop
