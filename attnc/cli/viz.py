"""`attnc viz`: a PNG of a variant's mask and the tile classes the kernel sees (attnc.visualize)."""

from __future__ import annotations

import argparse

import attnc
from attnc.runtime import visualize

from .errors import CliError, Exit
from .show import tile_values
from .stand_ins import Extent
from .target import load_target


def run(args: argparse.Namespace) -> int:
    kv_seq = args.kv_seq or args.seq
    if min(args.seq, kv_seq, args.block) < 1:
        raise CliError("--seq, --kv-seq and --block must be positive")
    if args.output.suffix.lower() != ".png":
        raise CliError(f"-o {args.output}: the picture is a PNG; name it PATH.png")
    _require_matplotlib()
    target = load_target(args, stand_ins=Extent(args.seq, kv_seq))
    for note in target.notes:
        print(note)
    if target.text is None:
        mask_mod, score_mod = target.mods
        attnc.visualize(mask_mod or attnc.noop_mask, args.seq, kv_seq, path=args.output, BLOCK_SIZE=args.block,
                        score_mod=score_mod)
    else:
        values = tile_values(target, required_for="viz")
        assert values is not None
        visualize.draw(target.attn, args.seq, kv_seq, path=args.output, BLOCK_SIZE=args.block, title=target.label,
                       values=values)
    print(f"wrote {args.output}")
    return 0


def _require_matplotlib() -> None:
    """Before any work: viz cannot do without it."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CliError(visualize.MISSING_MATPLOTLIB, Exit.MISSING) from None
