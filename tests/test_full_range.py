"""Full ranges (the off-band keys of a query tile, the off-band queries of a key tile): sound for every
family (every pair inside is allowed), and non-trivial where a mask has a diagonal band."""

from __future__ import annotations

import pytest
import torch

import attnc
from attnc.api import evaluate_mask
from attnc.ir.interpret import index_grids
from attnc.ir.tiles import kv_full_range
from attnc.ir.transpose import q_full_range
from tests.test_sparsity import families
from tests.test_transpose import SQUARE, _scalar_env, _value

Q, KV, BLOCK = 200, 230, 32
# masks whose every query tile past the first few has keys that need no mask at all
BANDED = {"causal", "bottom_right_causal", "sliding_window", "prefix_lm", "bidirectional_window", "padding",
          "per_head_window", "chunked_causal", "block_causal_frames", "sinks_and_window", "float_window",
          "half_causal"}


def _full_keys(rng, env, length: int) -> range:
    lo, hi = rng
    low = max(_value(lo, env) if lo is not None else 0, 0)
    high = min(_value(hi, env) if hi is not None else length - 1, length - 1)
    return range(low, high + 1)


def _dense(name: str):
    q_len, kv_len = (Q, Q) if name in SQUARE else (Q, KV)
    attn = attnc.compile(families(q_len, kv_len)[name])
    bindings = attn._bind()
    B, H = (2, 4) if name in ("per_head_window", "padding") else (1, 1)
    grids = index_grids(B, H, q_len, kv_len, torch.device("cpu"))
    dense = evaluate_mask(attn.program, *grids, list(bindings.tensors), bindings.params).expand(B, H, q_len, kv_len)
    return attn, bindings, dense


@pytest.mark.parametrize("axis", ["kv", "q"])
@pytest.mark.parametrize("name", sorted(families()))
def test_full_ranges_hold_only_allowed_pairs(name, axis):
    """axis "kv": the full keys of each query tile; "q": the full queries of each key tile."""
    attn, bindings, dense = _dense(name)
    B, H, q_len, kv_len = dense.shape
    full = (kv_full_range if axis == "kv" else q_full_range)(attn.program.mask)
    if full is None:
        assert name not in BANDED
        return
    tile_len, other_len = (q_len, kv_len) if axis == "kv" else (kv_len, q_len)
    covered = 0
    for b in range(B):
        for h in range(H):
            for lo in range(0, tile_len, BLOCK):
                hi = min(lo + BLOCK, tile_len) - 1
                tile = {"q_lo": lo, "q_hi": hi} if axis == "kv" else {"kv_lo": lo, "kv_hi": hi}
                inside = _full_keys(full, _scalar_env(bindings, b, h, **tile), other_len)
                block = dense[b, h, lo:hi + 1, inside.start:inside.stop] if axis == "kv" else \
                    dense[b, h, inside.start:inside.stop, lo:hi + 1]
                assert len(inside) == 0 or bool(block.all()), (b, h, lo, inside)
                covered += len(inside)
    assert covered > 0 or name not in BANDED


def test_causal_full_range_is_the_keys_left_of_the_tile():
    attn = attnc.compile(lambda b, h, q, kv: q >= kv)
    bindings = attn._bind()
    lo, hi = kv_full_range(attn.program.mask)
    assert lo is None
    assert _value(hi, _scalar_env(bindings, 0, 0, q_lo=64, q_hi=127)) == 64


def test_data_dependent_mask_has_no_full_range():
    doc = torch.tensor([0, 0, 1, 1])
    attn = attnc.compile(lambda b, h, q, kv: doc[q] == doc[kv])
    assert kv_full_range(attn.program.mask) is None


@pytest.mark.parametrize("mask", [
    lambda b, h, q, kv: kv <= q + (2**31 - 10),  # q + c wraps (int32) for every query past 9
    lambda b, h, q, kv: kv + (2**31 - 100) >= q,  # kv + c wraps for keys past 99
    lambda b, h, q, kv: (kv // 16 <= q // 16) & (q - kv < 70),
    lambda b, h, q, kv: (kv < 40) | (kv > q),
], ids=["query-wrap", "key-wrap", "blocks-and-window", "sink-or-future"])
def test_full_range_is_sound_for_adversarial_masks(mask):
    attn = attnc.compile(mask)
    bindings = attn._bind()
    grids = index_grids(1, 1, 256, 256, torch.device("cpu"))
    dense = evaluate_mask(attn.program, *grids, [], bindings.params)[0, 0]
    full = kv_full_range(attn.program.mask)
    assert full is not None
    for q_lo in range(0, 256, BLOCK):
        keys = _full_keys(full, _scalar_env(bindings, 0, 0, q_lo=q_lo, q_hi=q_lo + BLOCK - 1), 256)
        assert bool(dense[q_lo:q_lo + BLOCK, keys.start:keys.stop].all()), (q_lo, keys)
