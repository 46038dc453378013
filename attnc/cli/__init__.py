"""The `attnc` command: look at, draw, check and time attention variants, and manage the kernel cache.

    attnc show 'sliding_window(256)'           IR, tile classes; --source / --backward: generated Triton
    attnc viz causal -o causal.png              a picture of the mask and its tile classes (needs matplotlib)
    attnc check 'causal, alibi(8)' --backward   the generated kernels against the float64 reference
    attnc bench 'sliding_window(1024)'          time attnc (and torch's flex_attention and SDPA on a GPU)
    attnc tune causal --shape 8,16,4096,128     pre-tune the kernels per GPU and shape (--dry-run without one)
    attnc inspect causal --backward             static report of the kernels' SASS against a FlashAttention yardstick
    attnc cache ls | clear | info               the kernel cache directory

A variant is a family of `attnc.variants.FAMILIES` called with literal arguments, or a `.attn` file (see
`attnc.cli.target`); a family's tensor argument comes from a file (--tensor doc_ids=ids.pt) or, for show, viz
and bench, from a synthetic stand-in (`attnc.cli.stand_ins`). Also `python -m attnc`.

The parser (`attnc.cli.parsers`) imports neither torch nor triton: `attnc --help` answers at once, and each
subcommand's module is imported when it runs.

Exit codes: 0 success; 1 check found errors above tolerance (bench: attnc disagrees with a peer; inspect: a
kernel failed to compile); 2 a usage error or an invalid variant, file, tensor or parameter; 3 a missing
optional dependency or no GPU (or Triton interpreter) where one is needed. Errors print their message on
stderr, without a traceback unless --traceback is given.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .errors import EXIT_CODES, CliError, Exit
from .parsers import Parser, add_subcommands

__all__ = ["Exit", "main"]

DESCRIPTION = """\
attnc compiles attention variants (a mask and a score modification) into fused Triton kernels. This command
shows what it generates for a variant, draws its mask, checks its kernels against the reference and times
them. VARIANT is a family of attnc.variants.FAMILIES with literal arguments, masks combined with & | ~ and
optionally a score mod after a comma; FILE is a variant in the text syntax (.attn). A family's tensor argument
(document's doc_ids, t5_bias's table, ...) comes from --tensor NAME=PATH (.pt or .npy); without it, show, viz
and bench use a synthetic one and say which."""

EPILOG = f"""\
examples:
  attnc show causal
  attnc show 'sliding_window(256)' --source
  attnc viz 'natten((16, 16), 7, dilation=2)' --seq 256 -o natten.png
  attnc viz 'causal() & document' -o documents.png          (synthetic document ids, announced)
  attnc check document --tensor doc_ids=ids.pt
  attnc check 'causal() & sliding_window(64)' --backward
  attnc check examples/alibi_window.attn --tensor slopes=slopes.pt --param window=64
  attnc bench causal --seq 4096 8192 --pass fwd+bwd
  attnc tune causal --shape 8,16,4096,128 --backward
  attnc inspect causal --backward
  attnc cache info

{EXIT_CODES}"""



def build_parser() -> argparse.ArgumentParser:
    """The whole command line; building it imports neither torch nor triton (attnc.cli.parsers)."""
    parser = Parser(prog="attnc", description=DESCRIPTION, epilog=EPILOG,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traceback", action="store_true", help="on an error, print the full traceback")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)
    add_subcommands(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line `argv` (default: sys.argv[1:]); return the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help and argparse's usage errors
        return exit_.code if isinstance(exit_.code, int) else Exit.USAGE
    try:
        return int(args.run(args))
    except BrokenPipeError:  # the reader went away (`attnc show causal --source | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush cannot fail again
        return int(Exit.OK)
    except CliError as error:
        return _fail(args, error, error.code)
    except Exception as error:
        if isinstance(error, _rejections()):  # attnc rejected the variant, a value or the cache
            return _fail(args, error, Exit.USAGE)
        raise


def _rejections() -> tuple[type[Exception], ...]:
    # imported here, after the command ran: importing them up front would load torch for `attnc --help`
    from attnc.dsl.errors import TraceError
    from attnc.runtime.cache import CacheError

    return TraceError, CacheError, ValueError


def _fail(args: argparse.Namespace, error: BaseException, code: Exit) -> int:
    if args.traceback:
        raise error
    message = str(error) or type(error).__name__
    prefix = "" if message.startswith("attnc") else f"attnc {args.command}: "
    print(prefix + message, file=sys.stderr)
    return int(code)
