"""Query ranges of key tiles (for kernels that own keys): sound for every family, and together with the
tile test they visit exactly the non-empty tiles."""

from __future__ import annotations

import pytest
import torch

import attnc
from attnc.api import evaluate_mask
from attnc.ir.interpret import Env, evaluate, index_grids
from attnc.ir.node import var
from attnc.ir.tiles import tile_test
from attnc.ir.transpose import q_ranges, substitute
from tests.test_sparsity import families

Q, KV, BLOCK_M, BLOCK_N = 200, 230, 32, 16
SQUARE = {"natten_1d", "natten_1d_dilated", "natten_1d_strided_causal", "natten_2d", "natten_2d_causal_rows",
          "natten_3d", "document"}
STRUCTURAL = sorted(set(families()) - {"document"})  # document ids get a block map, not ranges


def _scalar_env(bindings, b: int, h: int, **tile: int) -> Env:
    def scalar(value: int) -> torch.Tensor:
        return torch.tensor(value, dtype=torch.int32)

    return Env(b=scalar(b), h=scalar(h), q=scalar(0), kv=scalar(0), tensors=list(bindings.tensors),
               params=bindings.params, **{name: scalar(v) for name, v in tile.items()})


def _value(node, env: Env) -> int | None:
    return None if node is None else int(evaluate(node, env))


@pytest.mark.parametrize("name", STRUCTURAL)
def test_query_ranges_and_tile_test_visit_exactly_the_non_empty_tiles(name):
    q_len, kv_len = (Q, Q) if name in SQUARE else (Q, KV)
    attn = attnc.compile(families(q_len, kv_len)[name])
    bindings = attn._bind()
    mask = attn.program.mask
    ranges, test = q_ranges(mask), tile_test(mask)
    B, H = (2, 4) if name in ("per_head_window", "padding") else (1, 1)
    grids = index_grids(B, H, q_len, kv_len, torch.device("cpu"))
    dense = evaluate_mask(attn.program, *grids, list(bindings.tensors), bindings.params).expand(B, H, q_len, kv_len)
    for b in range(B):
        for h in range(H):
            for kv_lo in range(0, kv_len, BLOCK_N):
                kv_hi = min(kv_lo + BLOCK_N, kv_len) - 1
                env = _scalar_env(bindings, b, h, kv_lo=kv_lo, kv_hi=kv_hi)
                starts = set()
                for lo, hi in ranges:
                    low = max(_value(lo, env) if lo is not None else 0, 0)
                    high = min(_value(hi, env) if hi is not None else q_len - 1, q_len - 1)
                    starts |= set(range(low // BLOCK_M * BLOCK_M, high + 1, BLOCK_M))
                visited = {s for s in starts
                           if bool(evaluate(test.may_true, _scalar_env(bindings, b, h, kv_lo=kv_lo, kv_hi=kv_hi,
                                                                      q_lo=s, q_hi=min(s + BLOCK_M, q_len) - 1)))}
                needed = {s for s in range(0, q_len, BLOCK_M)
                          if bool(dense[b, h, s:s + BLOCK_M, kv_lo:kv_hi + 1].any())}
                assert needed <= starts, (b, h, kv_lo, sorted(needed - starts))  # sound
                assert visited == needed, (b, h, kv_lo)  # exact


def test_substitute_replaces_all_at_once():
    q, kv = var("q"), var("kv")
    expr = attnc.compile(lambda b, h, qi, ki: qi - ki >= 3).program.mask
    swapped = substitute(expr, {q: kv, kv: q})
    assert substitute(swapped, {q: kv, kv: q}) is expr
    assert swapped is not expr
