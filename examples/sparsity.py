"""How sparse is a mask? Tile counts and pictures for a few common masks.

    python examples/sparsity.py [OUTPUT_DIR]     # PNGs go to OUTPUT_DIR (default: a new temporary directory)

For each mask, `attnc.compile(mask).tile_stats(...)` counts the 128 x 128 tiles a kernel skips (empty),
runs with the mask (partial) and runs without evaluating it (full); `visualize` draws the mask next to
its tile classes. Drawing needs matplotlib (`pip install attnc[viz]`).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

import attnc
from attnc.runtime.visualize import visualize

B, H, S = 1, 1, 4096
CANVAS = 64  # NATTEN: a 64 x 64 image, S = 4096 tokens


def causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def sliding_window(b, h, q_idx, kv_idx):
    return (q_idx >= kv_idx) & (q_idx - kv_idx < 512)


doc_ids = torch.repeat_interleave(torch.arange(4), torch.tensor([700, 1500, 396, 1500]))


def document(b, h, q_idx, kv_idx):
    return doc_ids[q_idx] == doc_ids[kv_idx]


def natten_2d(b, h, q_idx, kv_idx):
    """Each pixel attends to the 7 x 7 pixels around it, the window shifted inward at the image edges."""
    q_row, q_col, kv_row, kv_col = q_idx // CANVAS, q_idx % CANVAS, kv_idx // CANVAS, kv_idx % CANVAS
    row0, col0 = (q_row - 3).clamp(0, CANVAS - 7), (q_col - 3).clamp(0, CANVAS - 7)
    return (kv_row >= row0) & (kv_row < row0 + 7) & (kv_col >= col0) & (kv_col < col0 + 7)


MASKS = {"causal": causal, "sliding_window": sliding_window, "document": document, "natten_2d": natten_2d}


def main(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, mask in MASKS.items():
        stats = attnc.compile(mask).tile_stats(B, H, S, S)
        print(f"{name:<15} {stats}")
        print(f"{'':<15} {visualize(mask, S, S, path=out_dir / f'{name}.png')}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="attnc-sparsity-")))
