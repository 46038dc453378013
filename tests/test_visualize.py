"""visualize: the pooled mask and tile classes it draws (against brute force), the PNG, the missing-matplotlib
error, and the downsampling path at a length where the dense mask would be large."""

from __future__ import annotations

import math
import sys

import pytest
import torch

from attnc import api
from attnc.runtime.block_mask import build_block_mask
from attnc.runtime.visualize import (
    EMPTY,
    FULL,
    PARTIAL,
    pool_factors,
    pooled_bias,
    pooled_mask,
    tile_classes,
    visualize,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def alibi(score, b, h, q_idx, kv_idx):
    return score - (h + 1) * 0.125 * (q_idx - kv_idx)


def head_document_mask():
    """Per-head documents, so the picture depends on h and on a captured tensor."""
    doc = torch.stack([torch.arange(300) // 70, torch.arange(300) // 45])

    def head_document(b, h, q_idx, kv_idx):
        return (doc[h, q_idx] == doc[h, kv_idx]) & (q_idx >= kv_idx)

    return head_document, doc


def brute_pool(dense: torch.Tensor, fq: int, fk: int) -> torch.Tensor:
    rows, cols = math.ceil(dense.shape[0] / fq), math.ceil(dense.shape[1] / fk)
    return torch.tensor([[bool(dense[i * fq:(i + 1) * fq, j * fk:(j + 1) * fk].any()) for j in range(cols)]
                         for i in range(rows)])


def test_pooled_mask_is_any_over_each_pixel():
    mod, doc = head_document_mask()
    q, kv = torch.arange(300).view(-1, 1), torch.arange(200).view(1, -1)
    dense = (doc[1, q] == doc[1, kv]) & (q >= kv)
    fq, fk = pool_factors(300, 200, max_pixels=64)
    assert (fq, fk) == (5, 4)
    pooled = pooled_mask(mod, 300, 200, h=1, max_pixels=64)
    assert torch.equal(pooled, brute_pool(dense, fq, fk))


def test_pooled_mask_without_pooling_is_the_mask():
    assert torch.equal(pooled_mask(causal, 40, 30), torch.arange(40).view(-1, 1) >= torch.arange(30))


def test_pooled_mask_evaluates_only_the_pixels_the_analysis_leaves_open(monkeypatch):
    evaluated = []
    evaluate_mask = api.evaluate_mask

    def counting(program, b, h, q, kv, tensors, params):
        evaluated.append(q.numel() * kv.numel())
        return evaluate_mask(program, b, h, q, kv, tensors, params)

    monkeypatch.setattr(api, "evaluate_mask", counting)
    pooled = pooled_mask(causal, 65536, 65536)  # 1024 x 1024 pixels of 64 x 64 pairs
    assert torch.equal(pooled, torch.arange(1024).view(-1, 1) >= torch.arange(1024))
    # Bands of 4 pixel rows, each evaluated over its 4 diagonal pixels only: 1/256 of the 2^32 pairs.
    assert sum(evaluated) == 256 * (256 * 256)


def test_pooled_bias_is_max_over_allowed_pairs():
    pooled = pooled_bias(causal, alibi, 8, 8, h=1, max_pixels=4)
    q, kv = torch.arange(8).view(-1, 1), torch.arange(8).view(1, -1)
    bias = torch.where(q >= kv, -0.25 * (q - kv).float(), -math.inf)
    assert torch.equal(pooled, bias.view(4, 2, 4, 2).amax(dim=(1, 3)))


def test_tile_classes_rebuild_the_block_classes():
    _, doc = head_document_mask()
    mask_fn = lambda b, h, q, kv: (doc[h, q] == doc[h, kv]) & (q >= kv)
    block_mask = build_block_mask(mask_fn, 1, 2, 300, 300, device="cpu", BLOCK_SIZE=16)
    for h in (0, 1):
        dense = torch.zeros(304, 304, dtype=torch.bool)  # 19 tiles of 16, the last one ragged
        dense[:300, :300] = mask_fn(0, h, torch.arange(300).view(-1, 1), torch.arange(300).view(1, -1))
        tiles = dense.view(19, 16, 19, 16)
        expected = torch.where(tiles.any(dim=(1, 3)), PARTIAL, EMPTY).to(torch.int8)
        expected[:18, :18][tiles.all(dim=(1, 3))[:18, :18]] = FULL  # a ragged tile is never full
        assert torch.equal(tile_classes(block_mask, h=h), expected)
    assert set(tile_classes(block_mask, h=0).unique().tolist()) == {EMPTY, PARTIAL, FULL}


def test_visualize_writes_a_png(tmp_path):
    image = pytest.importorskip("matplotlib.image")
    path = visualize(causal, 256, 256, path=tmp_path / "causal.png", BLOCK_SIZE=64)
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    height, width = image.imread(path).shape[:2]
    assert (height, width) == (600, 1200)  # two 6-inch panels at 100 dpi


def test_visualize_with_a_score_mod_adds_a_panel(tmp_path):
    image = pytest.importorskip("matplotlib.image")
    mod, _ = head_document_mask()
    path = visualize(mod, 300, 300, path=tmp_path / "doc.png", H=2, h=1, BLOCK_SIZE=32, score_mod=alibi)
    assert image.imread(path).shape[:2] == (600, 1800)


def scattered(b, h, q_idx, kv_idx):
    """Not piecewise affine: the tile analysis decides nothing, so every pair is evaluated."""
    return (q_idx * kv_idx) % 7 == 0


@pytest.mark.parametrize("mask_mod", [causal, scattered])
def test_visualize_downsamples_long_sequences_in_few_bands(tmp_path, monkeypatch, mask_mod):
    """The cost measure is the mask evaluations (calls and pairs), not seconds: a loaded machine cannot fail
    it, and a per-pixel or per-row loop would."""
    pytest.importorskip("matplotlib")
    calls, pairs, original = [], [], api.evaluate_mask

    def counting(program, b, h, q, kv, *args):
        calls.append(1)
        pairs.append(q.numel() * kv.numel())
        return original(program, b, h, q, kv, *args)

    monkeypatch.setattr(api, "evaluate_mask", counting)
    S = 8192
    path = visualize(mask_mod, S, S, path=tmp_path / "long.png")
    assert len(calls) <= 16
    # causal: the tile analysis decides the pixels off the diagonal, so a band evaluates only the columns
    # up to its diagonal; scattered: every pair, once
    assert sum(pairs) <= (S * S // 4 if mask_mod is causal else S * S)
    assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_batch_and_head_must_be_in_range(tmp_path):
    with pytest.raises(ValueError, match="b=0, h=2 must index B=1 batches and H=2 heads"):
        visualize(causal, 64, 64, path=tmp_path / "never.png", H=2, h=2)


def test_missing_matplotlib_says_how_to_install(tmp_path, monkeypatch):
    for name in ("matplotlib", "matplotlib.backends.backend_agg", "matplotlib.colors", "matplotlib.figure",
                 "matplotlib.patches"):
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules makes the import fail
    with pytest.raises(ImportError, match=r"pip install attnc\[viz\]"):
        visualize(causal, 64, 64, path=tmp_path / "never.png")
    assert not (tmp_path / "never.png").exists()
