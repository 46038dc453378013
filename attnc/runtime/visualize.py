"""Pictures of a mask: which pairs it allows, and which tiles a kernel skips, masks, or runs unmasked.

    attnc.visualize(mask_mod, 8192, 8192, path="mask.png")

The left panel is the mask, query rows down and key columns across, shrunk to at most `MAX_PIXELS`
per side by max-pooling (a pixel is lit when any pair it covers is allowed). Pixels whose block of
pairs the tile analysis decides (empty or full) are not evaluated; the others are, a band of query rows
at a time over the columns that need it, so a 64K x 64K mask never exists at once. The right panel is each tile's class
from `attnc.create_block_mask`: empty (never visited), partial (visited, mask evaluated) or full
(visited, mask skipped). With a `score_mod`, a third panel shows `score_mod(0, b, h, q, kv)` on the
allowed pairs (max-pooled the same way): the bias the mod adds to a zero score.

matplotlib is optional (`pip install attnc[viz]`); it is imported only when a picture is drawn, and
drawn with the Agg backend through a figure of its own, so the caller's pyplot state is untouched.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from attnc import api
from attnc.ir.interpret import Env, evaluate
from attnc.ir.program import Program
from attnc.ir.tiles import EMPTY, FULL, PARTIAL, classify_grid
from attnc.runtime.block_mask import BlockMask, listed_to_dense
from attnc.runtime.tile_ranges import tile_ranges

MAX_PIXELS = 1024
# Mask elements evaluated per band of query rows: 2^24 bools (16 MiB, int32 temporaries 64 MiB).
BAND_ELEMENTS = 1 << 24
CLASSIFY_PIXELS = 1 << 16  # pixels classified per step
CLASS_COLOURS = (("empty", "#f2f2f2"), ("partial", "#f28e2b"), ("full", "#2b5f8f"))
MISSING_MATPLOTLIB = ("attnc.visualize draws with matplotlib, which is not installed: "
                      "pip install attnc[viz]  (or: pip install matplotlib)")


def visualize(mask_mod: Callable, Q_LEN: int, KV_LEN: int, *, path: str | pathlib.Path, B: int = 1, H: int = 1,
              b: int = 0, h: int = 0, BLOCK_SIZE: int | tuple[int, int] = 128,
              score_mod: Callable | None = None) -> pathlib.Path:
    """Write a PNG of `mask_mod` for batch `b`, head `h` (of `B`, `H`) to `path`; return the path."""
    title = getattr(mask_mod, "__name__", "mask_mod")
    return draw(api.compile(mask_mod, score_mod), Q_LEN, KV_LEN, path=path, B=B, H=H, b=b, h=h,
                BLOCK_SIZE=BLOCK_SIZE, bias=score_mod is not None, title=title)


def draw(attn: api.Attention, Q_LEN: int, KV_LEN: int, *, path: str | pathlib.Path, B: int = 1, H: int = 1,
         b: int = 0, h: int = 0, BLOCK_SIZE: int | tuple[int, int] = 128, bias: bool = False, title: str = "",
         values: dict[str, Any] | None = None) -> pathlib.Path:
    """`visualize` for a compiled variant (a text variant binds its tensors and parameters from `values`);
    the bias panel only with `bias` (and a score mod)."""
    if not (0 <= b < B and 0 <= h < H):
        raise ValueError(f"visualize: b={b}, h={h} must index B={B} batches and H={H} heads")
    figure_cls, canvas_cls, patch_cls, colormap_cls = _matplotlib()
    bound = _Bound.of(attn, values)
    pooled = bound.pooled_mask(Q_LEN, KV_LEN, b, h, MAX_PIXELS)
    block_mask = attn.block_mask(B, H, Q_LEN, KV_LEN, "cpu", BLOCK_SIZE, **(values or {}))
    bias = bias and attn.program.score is not None
    panels = 3 if bias else 2
    figure = figure_cls(figsize=(6 * panels, 6), layout="constrained")
    canvas_cls(figure)
    axes = figure.subplots(1, panels, squeeze=False)[0]
    _draw_mask(axes[0], pooled, Q_LEN, KV_LEN)
    _draw_classes(axes[1], tile_classes(block_mask, b=b, h=h), block_mask, patch_cls, colormap_cls)
    if bias:
        _draw_bias(figure, axes[2], bound.pooled_bias(Q_LEN, KV_LEN, b, h, MAX_PIXELS), Q_LEN, KV_LEN)
    figure.suptitle(f"{title}: Q_LEN={Q_LEN}, KV_LEN={KV_LEN}, b={b}, h={h}")
    figure.savefig(path, dpi=100)
    return pathlib.Path(path)


def _matplotlib() -> tuple[Any, Any, Any, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.colors import ListedColormap
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError as exc:
        raise ImportError(MISSING_MATPLOTLIB) from exc
    return Figure, FigureCanvasAgg, Patch, ListedColormap


# -- what is drawn (no matplotlib needed) --------------------------------------------------------------


def pool_factors(Q_LEN: int, KV_LEN: int, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """Pairs per pixel along (q, kv) so that neither side of the picture exceeds `max_pixels`."""
    return max(1, math.ceil(Q_LEN / max_pixels)), max(1, math.ceil(KV_LEN / max_pixels))


def pooled_mask(mask_mod: Callable, Q_LEN: int, KV_LEN: int, *, b: int = 0, h: int = 0,
                max_pixels: int = MAX_PIXELS) -> Tensor:
    """bool `[ceil(Q_LEN / fq), ceil(KV_LEN / fk)]`: True where any pair of the pixel's
    `fq x fk` block is allowed (`pool_factors` gives fq, fk). Pixels the tile analysis decides (empty or
    full) are not evaluated; the rest are, a band of rows at a time."""
    return _Bound.of(api.compile(mask_mod)).pooled_mask(Q_LEN, KV_LEN, b, h, max_pixels)


def pooled_bias(mask_mod: Callable | None, score_mod: Callable, Q_LEN: int, KV_LEN: int, *, b: int = 0, h: int = 0,
                max_pixels: int = MAX_PIXELS) -> Tensor:
    """float32 like `pooled_mask`: the largest `score_mod(0, b, h, q, kv)` over the allowed pairs of each
    pixel, -inf where none is allowed."""
    return _Bound.of(api.compile(mask_mod, score_mod)).pooled_bias(Q_LEN, KV_LEN, b, h, max_pixels)


@dataclasses.dataclass(frozen=True)
class _Bound:
    """A compiled variant's program with its current tensors (on the CPU, where pictures are drawn) and
    parameters."""

    program: Program
    tensors: list[Tensor]
    params: Sequence

    @staticmethod
    def of(attn: api.Attention, values: dict[str, Any] | None = None) -> _Bound:
        bindings = attn._bind(values)
        return _Bound(attn.program, [t.cpu() for t in bindings.tensors], bindings.params)

    def pooled_mask(self, q_len: int, kv_len: int, b: int, h: int, max_pixels: int) -> Tensor:
        factors = pool_factors(q_len, kv_len, max_pixels)
        classes = _pixel_classes(self.program, self.tensors, self.params, b, h, q_len, kv_len, factors)

        def band(q: Tensor, kv: Tensor) -> Tensor:
            return api.evaluate_mask(self.program, _at(b), _at(h), q, kv, self.tensors, self.params)

        return _pool_bands(band, classes == FULL, classes == PARTIAL, q_len, kv_len, factors)

    def pooled_bias(self, q_len: int, kv_len: int, b: int, h: int, max_pixels: int) -> Tensor:
        factors = pool_factors(q_len, kv_len, max_pixels)
        classes = _pixel_classes(self.program, self.tensors, self.params, b, h, q_len, kv_len, factors)

        def band(q: Tensor, kv: Tensor) -> Tensor:
            zero = torch.zeros((1, 1, 1, 1), dtype=torch.float32)
            env = Env(_at(b), _at(h), q, kv, score=zero, tensors=self.tensors, params=self.params)
            bias = evaluate(self.program.score, env).float()
            allowed = api.evaluate_mask(self.program, _at(b), _at(h), q, kv, self.tensors, self.params)
            return torch.where(allowed, bias, -math.inf)

        image = torch.full(classes.shape, -math.inf)
        return _pool_bands(band, image, classes != EMPTY, q_len, kv_len, factors)


def _at(index: int) -> Tensor:
    return torch.full((1, 1, 1, 1), index, dtype=torch.int32)


def _pixel_classes(program: Program, tensors: list[Tensor], params: Sequence, b: int, h: int, q_len: int,
                   kv_len: int, factors: tuple[int, int]) -> Tensor:
    """int8 `[rows, cols]`: the tile class of each pixel's block of pairs, from the tile analysis (sound:
    EMPTY and FULL are certain, PARTIAL means undecided)."""
    (fq, fk), rows, cols = factors, math.ceil(q_len / factors[0]), math.ceil(kv_len / factors[1])
    if program.mask is None or rows == 0 or cols == 0:
        return torch.full((rows, cols), FULL if program.mask is None else EMPTY, dtype=torch.int8)
    ranges = tile_ranges(program, tensors, params, B=b + 1, H=h + 1, Q_LEN=q_len, KV_LEN=kv_len, q_block=fq,
                         kv_block=fk)
    kv_lo, kv_hi = _block_bounds(0, cols, fk, kv_len, dim=3)
    step = max(1, CLASSIFY_PIXELS // cols)  # the analysis has many intermediate values per pixel
    pieces = []
    for start in range(0, rows, step):
        q_lo, q_hi = _block_bounds(start, min(start + step, rows), fq, q_len, dim=2)
        classes = classify_grid(program.mask, b=_at(b), h=_at(h), q_lo=q_lo, q_hi=q_hi, kv_lo=kv_lo, kv_hi=kv_hi,
                                tensors=[*tensors, *ranges.extra_tensors], params=params,
                                load_range=ranges.load_range)
        pieces.append(classes.expand(1, 1, q_lo.shape[2], cols)[0, 0])
    return torch.cat(pieces)


def _block_bounds(first: int, stop: int, block: int, length: int, dim: int) -> tuple[Tensor, Tensor]:
    """Inclusive bounds of blocks first..stop-1, the last clipped to the length, along `dim` of 4."""
    shape = [1, 1, 1, 1]
    shape[dim] = stop - first
    lo = torch.arange(first, stop, dtype=torch.int32) * block
    return lo.view(shape), torch.clamp(lo + block - 1, max=length - 1).view(shape)


def _pool_bands(band: Callable[[Tensor, Tensor], Tensor], image: Tensor, needed: Tensor, q_len: int, kv_len: int,
                factors: tuple[int, int]) -> Tensor:
    """`image` with its `needed` pixels computed: `band(q [1,1,rows,1], kv [1,1,1,cols])` is evaluated on
    bands of whole pixel rows, over the columns spanning the band's needed pixels, and max-pooled."""
    fq, fk = factors
    fill = False if image.dtype == torch.bool else -math.inf
    pixel_rows = max(1, BAND_ELEMENTS // (fq * max(kv_len, 1)))
    for r0 in range(0, image.shape[0], pixel_rows):
        r1 = min(r0 + pixel_rows, image.shape[0])
        columns = needed[r0:r1].any(dim=0).nonzero()
        if columns.numel() == 0:
            continue
        c0, c1 = int(columns[0]), int(columns[-1]) + 1
        q = torch.arange(r0 * fq, min(r1 * fq, q_len), dtype=torch.int32).view(1, 1, -1, 1)
        kv = torch.arange(c0 * fk, min(c1 * fk, kv_len), dtype=torch.int32).view(1, 1, 1, -1)
        values = band(q, kv).expand(1, 1, q.shape[2], kv.shape[3])[0, 0]
        image[r0:r1, c0:c1] = _max_pool(values, fq, fk, fill)
    return image


def _max_pool(values: Tensor, fq: int, fk: int, fill: bool | float) -> Tensor:
    """`[rows, cols]` -> `[ceil(rows / fq), ceil(cols / fk)]`; the ragged edge is padded with `fill`."""
    rows, cols = values.shape
    out_rows, out_cols = math.ceil(rows / fq), math.ceil(cols / fk)
    padded = torch.full((out_rows * fq, out_cols * fk), fill, dtype=values.dtype)
    padded[:rows, :cols] = values
    return padded.view(out_rows, fq, out_cols, fk).amax(dim=(1, 3))


def tile_classes(block_mask: BlockMask, *, b: int = 0, h: int = 0) -> Tensor:
    """int8 `[n_q_blocks, n_kv_blocks]` for batch `b`, head `h`: EMPTY, PARTIAL or FULL, rebuilt from
    the block lists (`b` / `h` are clamped where the map broadcasts over a size-1 batch or head dim)."""
    b, h = min(b, block_mask.kv_num_blocks.shape[0] - 1), min(h, block_mask.kv_num_blocks.shape[1] - 1)
    listed = listed_to_dense(block_mask.kv_num_blocks[b, h].cpu(), block_mask.kv_indices[b, h].cpu())
    classes = listed.to(torch.int8) * PARTIAL
    if block_mask.full_kv_num_blocks is not None:
        full = listed_to_dense(block_mask.full_kv_num_blocks[b, h].cpu(), block_mask.full_kv_indices[b, h].cpu()) == 1
        classes = torch.where(full, torch.tensor(FULL, dtype=torch.int8), classes)
    return classes


# -- drawing -------------------------------------------------------------------------------------------


def _draw_mask(axis: Any, pooled: Tensor, q_len: int, kv_len: int) -> None:
    axis.imshow(pooled.numpy(), cmap="Blues", vmin=0, vmax=1, interpolation="nearest",
                extent=(0, kv_len, q_len, 0), aspect="auto")
    fq, fk = pool_factors(q_len, kv_len)
    pooled_note = "" if fq == fk == 1 else f" (1 pixel = {fq} x {fk} pairs, any allowed)"
    _label(axis, f"allowed pairs{pooled_note}")


def _draw_classes(axis: Any, classes: Tensor, block_mask: BlockMask, patch_cls: Any, colormap_cls: Any) -> None:
    (q_len, kv_len), (q_block, kv_block) = block_mask.seq_lengths, block_mask.BLOCK_SIZE
    n_q, n_kv = classes.shape
    colormap = colormap_cls([colour for _, colour in CLASS_COLOURS])
    axis.imshow(classes.numpy(), cmap=colormap, vmin=EMPTY, vmax=FULL, interpolation="nearest",
                extent=(0, n_kv * kv_block, n_q * q_block, 0), aspect="auto")
    axis.set_xlim(0, kv_len)
    axis.set_ylim(q_len, 0)
    counts = [int((classes == value).sum()) for value in (EMPTY, PARTIAL, FULL)]
    handles = [patch_cls(facecolor=colour, edgecolor="black", label=f"{name}: {count}")
               for (name, colour), count in zip(CLASS_COLOURS, counts, strict=True)]
    axis.legend(handles=handles, loc="upper right", framealpha=0.9)
    _label(axis, f"tiles of {q_block} x {kv_block}")


def _draw_bias(figure: Any, axis: Any, pooled: Tensor, q_len: int, kv_len: int) -> None:
    shown = torch.where(torch.isinf(pooled) & (pooled < 0), math.nan, pooled)  # nothing allowed: blank
    image = axis.imshow(shown.numpy(), cmap="viridis", interpolation="nearest",
                        extent=(0, kv_len, q_len, 0), aspect="auto")
    figure.colorbar(image, ax=axis, shrink=0.8)
    _label(axis, "score_mod(0, b, h, q, kv) on allowed pairs (max per pixel)")


def _label(axis: Any, title: str) -> None:
    axis.set_title(title)
    axis.set_xlabel("kv_idx")
    axis.set_ylabel("q_idx")
