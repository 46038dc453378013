"""`attnc viz`: a PNG of a variant's mask and the tile classes the kernel sees (attnc.visualize)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import attnc
from attnc.runtime import visualize

from .errors import CliError, Exit
from .show import tile_values
from .target import add_variant_arguments, load_target

DESCRIPTION = """\
Draw a variant's mask (query rows down, key columns across, pooled to at most 1024 pixels a side) next to the
class of each tile: empty (skipped), partial (mask evaluated) or full (attended without the mask). A library
variant with a score mod gets a third panel, the bias the score mod adds to a zero score. Needs matplotlib
(pip install attnc[viz])."""

EPILOG = """\
examples:
  attnc viz causal -o causal.png
  attnc viz 'sliding_window(256)' --seq 4096 --block 64 -o window.png
  attnc viz 'natten((16, 16), 7, dilation=2)' --seq 256 --block 16 -o natten.png
  attnc viz 'causal, alibi(8)' -o alibi.png
  attnc viz document.attn --tensor doc_ids=ids.pt --seq 4096 -o documents.png"""


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("viz", help="PNG of a variant's mask and tile classes",
                                   description=DESCRIPTION, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_variant_arguments(parser)
    parser.add_argument("-o", "--output", required=True, type=Path, metavar="PATH.png", help="where to write")
    parser.add_argument("--seq", type=int, default=1024, metavar="N", help="query length (default 1024)")
    parser.add_argument("--kv-seq", type=int, metavar="N", help="key length (default: --seq)")
    parser.add_argument("--block", type=int, default=128, metavar="N", help="tile size (default 128)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    kv_seq = args.kv_seq or args.seq
    if min(args.seq, kv_seq, args.block) < 1:
        raise CliError("--seq, --kv-seq and --block must be positive")
    if args.output.suffix.lower() != ".png":
        raise CliError(f"-o {args.output}: the picture is a PNG; name it PATH.png")
    _require_matplotlib()
    target = load_target(args)
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
