"""The grammar of the `attnc` command: every subcommand's arguments, help and examples.

This module imports neither torch nor triton, so `attnc --help` and `attnc COMMAND --help` answer at once;
each parser's `run` is a `Handler` that imports the subcommand's module (attnc.cli.show, ...) only when the
command runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
from pathlib import Path
from typing import Any

from .errors import Exit, did_you_mean

DTYPE_NAMES = ("float32", "float16", "bfloat16")  # the keys of attnc.cli.devices.DTYPES
INSPECT_DTYPE_NAMES = ("bf16", "bfloat16", "fp16", "float16", "fp32", "float32")  # attnc.cli.inspect_cmd.DTYPES
PASSES = ("fwd", "fwd+bwd")  # the keys of attnc.cli.bench.FLOPS_PER_PAIR


@dataclasses.dataclass(frozen=True)
class Handler:
    """`function` of `attnc.cli.<module>`, imported when the command runs."""

    module: str
    function: str

    def __call__(self, args: argparse.Namespace) -> int | Exit:
        return getattr(importlib.import_module(f"attnc.cli.{self.module}"), self.function)(args)


VARIANT_HELP = ("a library variant: a family of attnc.variants.FAMILIES with literal arguments (causal, "
                "sliding_window(256), natten((16, 16), 7, dilation=2)), masks combined with & | ~, optionally "
                "followed by a comma and a score mod ('causal, alibi(8)'); or a path to a .attn file")
TENSOR_HELP = ("a tensor argument of a library variant (document --tensor doc_ids=ids.pt; FAMILY.NAME=PATH where two "
               "families share a name) or a tensor a .attn file declares, from a .pt file (torch.save) or a .npy "
               "file (numpy.save); repeatable")


class Parser(argparse.ArgumentParser):
    """argparse's parser, with a "did you mean" for a misspelled subcommand, choice or option."""

    def error(self, message: str) -> Any:  # argparse's signature: it never returns
        super().error(message + self._suggestion(message))

    def _suggestion(self, message: str) -> str:
        if "invalid choice: " in message:
            word = message.split("invalid choice: ", 1)[1].split("'")[1]
            return did_you_mean(word, self._choices())
        if message.startswith("unrecognized arguments: "):
            word = message.removeprefix("unrecognized arguments: ").split()[0].split("=")[0]
            return did_you_mean(word, self._option_strings()) if word.startswith("-") else ""
        return ""

    def _choices(self) -> list[str]:
        return [str(c) for action in self._actions for c in (action.choices or ())]

    def _option_strings(self) -> list[str]:
        # the options of the chosen subcommand too: argparse reports its leftovers through the top parser
        parsers = [self, *(p for a in self._actions if isinstance(a, argparse._SubParsersAction)
                           for p in a.choices.values())]
        return list(dict.fromkeys(o for parser in parsers for action in parser._actions for o in action.option_strings))


def add_subcommands(subparsers: Any) -> None:
    for add in (add_show, add_viz, add_check, add_bench, add_tune, add_inspect, add_cache):
        add(subparsers)


def add_variant_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("variant", metavar="VARIANT|FILE", help=VARIANT_HELP)
    parser.add_argument("--tensor", action="append", default=[], metavar="NAME=PATH", help=TENSOR_HELP)
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="a value for a param the .attn file declares (repeatable)")


# -- show ----------------------------------------------------------------------------------------------------------


_SHOW_DESCRIPTION = """\
Print what attnc makes of a variant: the IR as traced and after optimisation (with what each tensor slot
t<i> and parameter slot p<i> is), how the mask's tiles split into empty (skipped), partial (mask evaluated)
and full (attended without the mask) for the given lengths and block size, and whether the mask is analytic
(tile classes in closed form), data-dependent (a block map from per-tile value ranges) or pair-by-pair.
With --source or --backward, the generated Triton kernels. Without flags: the IR and the tile summary."""


_SHOW_EPILOG = """\
examples:
  attnc show causal
  attnc show 'sliding_window(256)' --tiles --seq 8192 --block 64
  attnc show 'natten((16, 16), 7, dilation=2)' --seq 256
  attnc show 'causal, alibi(8)' --source
  attnc show examples/alibi_window.attn --backward
  attnc show 'causal() & document' --tiles --tensor doc_ids=ids.pt
  attnc show 'causal, t5_bias' --seq 512      (a synthetic bias table, announced)"""


def add_show(subparsers: Any) -> None:
    parser = subparsers.add_parser("show", help="IR, tile classes and generated Triton source of a variant",
                                   description=_SHOW_DESCRIPTION, epilog=_SHOW_EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_variant_arguments(parser)
    parser.add_argument("--seq", type=int, default=4096, metavar="N", help="query length for the tiles (default 4096)")
    parser.add_argument("--kv-seq", type=int, metavar="N", help="key length for the tiles (default: --seq)")
    parser.add_argument("--block", type=int, default=128, metavar="N", help="tile size (default 128)")
    parser.add_argument("--ir", action="store_true", help="the traced and the optimised IR")
    parser.add_argument("--tiles", action="store_true", help="the tile classes and how the mask is analysed")
    parser.add_argument("--source", action="store_true", help="the generated forward kernel")
    parser.add_argument("--backward", action="store_true", help="the generated backward kernels (dK/dV, dQ)")
    parser.set_defaults(run=Handler("show", "run"))


# -- viz -----------------------------------------------------------------------------------------------------------


_VIZ_DESCRIPTION = """\
Draw a variant's mask (query rows down, key columns across, pooled to at most 1024 pixels a side) next to the
class of each tile: empty (skipped), partial (mask evaluated) or full (attended without the mask). A library
variant with a score mod gets a third panel, the bias the score mod adds to a zero score. Needs matplotlib
(pip install attnc[viz])."""


_VIZ_EPILOG = """\
examples:
  attnc viz causal -o causal.png
  attnc viz 'sliding_window(256)' --seq 4096 --block 64 -o window.png
  attnc viz 'natten((16, 16), 7, dilation=2)' --seq 256 --block 16 -o natten.png
  attnc viz 'causal, alibi(8)' -o alibi.png
  attnc viz document.attn --tensor doc_ids=ids.pt --seq 4096 -o documents.png
  attnc viz document --seq 4096 -o documents.png      (4 synthetic documents, announced)"""


def add_viz(subparsers: Any) -> None:
    parser = subparsers.add_parser("viz", help="PNG of a variant's mask and tile classes",
                                   description=_VIZ_DESCRIPTION, epilog=_VIZ_EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_variant_arguments(parser)
    parser.add_argument("-o", "--output", required=True, type=Path, metavar="PATH.png", help="where to write")
    parser.add_argument("--seq", type=int, default=1024, metavar="N", help="query length (default 1024)")
    parser.add_argument("--kv-seq", type=int, metavar="N", help="key length (default: --seq)")
    parser.add_argument("--block", type=int, default=128, metavar="N", help="tile size (default 128)")
    parser.set_defaults(run=Handler("viz", "run"))


# -- check ---------------------------------------------------------------------------------------------------------


_CHECK_DESCRIPTION = """\
Run the generated kernel (backend="triton": on a CUDA GPU, else in the Triton interpreter on the CPU) on random
inputs and compare it with the reference interpreter computing in float64 on the same inputs. Prints the largest
absolute error and the relative error (||kernel - reference|| / ||reference||) of the output and the
log-sum-exp; with --backward also of dq, dk, dv and the gradient of each captured floating tensor. Exits 1 if
a relative error, or a largest error over the largest reference value (at least 1), is above the tolerance for
--dtype (float32 2e-4, float16 1e-2, bfloat16 5e-2). The defaults are small enough for the CPU."""


_CHECK_EPILOG = """\
examples:
  attnc check causal
  attnc check 'sliding_window(64)' --seq 200 --kv-seq 300 --heads 4 --kv-heads 2
  attnc check 'causal, alibi(4)' --heads 4 --backward
  attnc check 'gemma2(0, window=48)' --dtype float16
  attnc check window.attn --tensor slopes=slopes.pt --param window=32 --backward"""


def add_check(subparsers: Any) -> None:
    parser = subparsers.add_parser("check", help="compare the generated kernels with the float64 reference",
                                   description=_CHECK_DESCRIPTION, epilog=_CHECK_EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_variant_arguments(parser)
    parser.add_argument("--seq", type=int, default=128, metavar="N", help="query length (default 128)")
    parser.add_argument("--kv-seq", type=int, metavar="N", help="key length (default: --seq)")
    parser.add_argument("--batch", type=int, default=1, metavar="B", help="batch size (default 1)")
    parser.add_argument("--heads", type=int, default=2, metavar="H", help="query heads (default 2)")
    parser.add_argument("--kv-heads", type=int, metavar="H", help="key/value heads (default: --heads)")
    parser.add_argument("--head-dim", type=int, default=32, metavar="D", help="head dimension (default 32)")
    parser.add_argument("--dtype", choices=DTYPE_NAMES, default="float32", help="input dtype (default float32)")
    parser.add_argument("--backward", action="store_true", help="also compare the gradients")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the random inputs (default 0)")
    parser.set_defaults(run=Handler("check", "run"))


# -- bench ---------------------------------------------------------------------------------------------------------


_BENCH_DESCRIPTION = """\
Time a variant's generated kernels (backend="triton") on random inputs. On a CUDA GPU (bfloat16 by default,
16 heads, B * H * S held at 2^19 tokens) also time torch's flex_attention under torch.compile (library
variants only: a .attn variant has no Python mods to give it) and SDPA where it can express the variant (no
score mod; causal as is_causal, other masks as a dense boolean mask), check that they agree with attnc before
timing, and print ms, TFLOP/s over the allowed pairs, and attnc's speed relative to each. On the CPU the
kernels run in the Triton interpreter at tiny default sizes: that proves the code path, not performance."""


_BENCH_EPILOG = """\
examples:
  attnc bench causal
  attnc bench 'sliding_window(1024)' --seq 4096 8192 16384 --head-dim 128
  attnc bench 'causal, alibi(16)' --pass fwd+bwd
  attnc bench document.attn --tensor doc_ids=ids.pt --seq 8192
  attnc bench 'causal() & document' --tensor doc_ids=ids.npy --seq 8192"""


def add_bench(subparsers: Any) -> None:
    parser = subparsers.add_parser("bench", help="time the kernels (against flex_attention and SDPA on a GPU)",
                                   description=_BENCH_DESCRIPTION, epilog=_BENCH_EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_variant_arguments(parser)
    parser.add_argument("--seq", type=int, nargs="+", metavar="N", help="lengths (default: 4096; CPU 128)")
    parser.add_argument("--head-dim", type=int, metavar="D", help="head dimension (default: 128; CPU 32)")
    parser.add_argument("--heads", type=int, metavar="H", help="heads (default: 16; CPU 2)")
    parser.add_argument("--batch", type=int, metavar="B", help="batch (default: 2^19 tokens / (H * S); CPU 1)")
    parser.add_argument("--dtype", choices=DTYPE_NAMES, help="input dtype (default: bfloat16; CPU float32)")
    parser.add_argument("--pass", dest="pass_name", choices=PASSES, default="fwd",
                        help="time the forward, or forward and backward (default fwd)")
    parser.set_defaults(run=Handler("bench", "run"))


# -- tune ----------------------------------------------------------------------------------------------------------


_TUNE_DESCRIPTION = """\
Tune the variant's kernels (forward; with --backward also dK/dV and dQ) for each --shape on this CUDA GPU: each
candidate tile config that fits the GPU's shared memory and registers by estimate is timed on random inputs
with the variant's own sparsity, then TMA and warp specialization are tried on the fastest (Hopper). The
fastest config per (GPU model, kernel, shape bucket) is stored in tuning.json beside the kernel cache; later
runs, in any process, launch with it without benchmarking. A shape tuned before is not timed again.

Without a GPU, --dry-run lists each kernel's candidates for --arch; with --aot it compiles each ahead of time
for --arch (no GPU needed) and drops those that spill."""


_TUNE_EPILOG = """\
examples:
  attnc tune causal --shape 8,16,4096,128 --shape 4,16,16384,128 --backward
  attnc tune 'sliding_window(1024)' --shape 16,16,2048,64 --dtype bfloat16
  attnc tune 'document_mask' --shape 4,16,8192,128 --dry-run --aot
progress: a bar when tqdm is installed (pip install 'attnc[tune]'), else one line per config on stderr."""


def add_tune(subparsers: Any) -> None:
    parser = subparsers.add_parser("tune", help="pre-tune a variant's kernels for a list of shapes on this GPU",
                                   description=_TUNE_DESCRIPTION, epilog=_TUNE_EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_variant_arguments(parser)
    parser.add_argument("--shape", action="append", type=_tune_shape, required=True, metavar="B,H,S,D",
                        help="batch, query heads, sequence length and head dim (repeatable)")
    parser.add_argument("--kv-heads", type=int, metavar="H", help="key/value heads (default: as the query)")
    parser.add_argument("--dtype", choices=DTYPE_NAMES, default="bfloat16", help="input dtype (default bfloat16)")
    parser.add_argument("--backward", action="store_true", help="also tune the backward kernels")
    parser.add_argument("--dry-run", action="store_true", help="list the candidates instead of timing them")
    parser.add_argument("--aot", action="store_true", help="with --dry-run: drop candidates that spill on --arch")
    parser.add_argument("--arch", default="sm_90", help="architecture of --dry-run (default sm_90)")
    parser.add_argument("--limit", type=int, metavar="N", help="at most N tile candidates per kernel")
    parser.set_defaults(run=Handler("tune", "run"))


def _tune_shape(text: str) -> tuple[int, int, int, int]:
    try:
        B, H, S, D = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected B,H,S,D (four integers), got {text!r}") from None
    if min(B, H, S, D) < 1:
        raise argparse.ArgumentTypeError(f"every dimension must be at least 1, got {text!r}")
    return B, H, S, D


# -- inspect ---------------------------------------------------------------------------------------------------


_INSPECT_DESCRIPTION = """\
Compile the kernels a call of the variant launches (forward through its closed-form tile loops and through a
BlockMask; with --backward also dK/dV and dQ), with the default tile configs and the arguments of a launch at
--shape, ahead of time for --arch (no GPU needed), disassemble them and report per kernel: its config,
registers, spills, shared memory, wgmma (HGMMA) or mma.sync (HMMA), TMA, ptxas's performance warnings, and
for each loop of the SASS its instruction count, issue slots per score element, MUFU / FP32 / INT / INT64 /
tensor-core instructions per element, and whether it is software-pipelined. The same run compiles the
yardstick (plain dense FlashAttention-2, attnc/perf/yardstick.py); each hot loop's figures are also given
as multiples of the yardstick's main loop."""


_INSPECT_EPILOG = """\
examples:
  attnc inspect causal
  attnc inspect 'causal, softcap(30)' --backward
  attnc inspect 'natten((64, 64), 13)' --head-dim 64 --json > natten.json

issue slots per score element = loop body instructions x num_warps / (BLOCK_M x BLOCK_N); see
attnc/perf/report.py for what each figure means and its caveats."""


def add_inspect(subparsers: Any) -> None:
    parser = subparsers.add_parser("inspect", help="static performance report of a variant's kernels (no GPU)",
                                   description=_INSPECT_DESCRIPTION, epilog=_INSPECT_EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_variant_arguments(parser)
    parser.add_argument("--arch", default="sm_90", help="architecture to compile for (default sm_90)")
    parser.add_argument("--dtype", choices=INSPECT_DTYPE_NAMES, default="bf16", help="input dtype (default bf16)")
    parser.add_argument("--head-dim", type=int, default=128, metavar="D", help="head dim (default 128)")
    parser.add_argument("--shape", type=_launch_shape, default=(2, 16, 4096), metavar="B,H,S",
                        help="batch, heads and sequence length of the launch (default 2,16,4096)")
    parser.add_argument("--backward", action="store_true", help="also the backward kernels (dK/dV, dQ)")
    parser.add_argument("--decode", action="store_true",
                        help="also the split-KV decode kernels (contiguous and paged caches, a GQA group of 8, "
                             "one new token) and their combine")
    parser.add_argument("--json", action="store_true", help="print the whole report as JSON")
    parser.set_defaults(run=Handler("inspect_cmd", "run"))


def _launch_shape(text: str) -> tuple[int, int, int]:
    try:
        B, H, S = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected B,H,S (three integers), got {text!r}") from None
    if min(B, H, S) < 1:
        raise argparse.ArgumentTypeError(f"every dimension must be at least 1, got {text!r}")
    return B, H, S


# -- cache ---------------------------------------------------------------------------------------------------------


_CACHE_DESCRIPTION = """\
The kernel cache holds each generated kernel as a file attnc_<sha256>.py, named by its content, under
$ATTNC_CACHE_DIR (default $XDG_CACHE_HOME/attnc, else ~/.cache/attnc). `ls` lists the files (kind, size, time,
and whether they were written by this codegen, Triton and torch), `info` summarises the directory and whether
attnc trusts it (owned by you, not writable by others), and `clear` removes the kernel files attnc wrote (those
whose first line is attnc's checksum for their name) and the compiled copies older versions left in
__pycache__, nothing else, never through a link. Deleting kernels is always safe: they are generated again
when needed."""


_CACHE_EPILOG = """\
examples:
  attnc cache info
  attnc cache ls
  attnc cache clear --dry-run
  ATTNC_CACHE_DIR=/tmp/kernels attnc cache clear"""


def add_cache(subparsers: Any) -> None:
    parser = subparsers.add_parser("cache", help="list, summarise or clear the kernel cache",
                                   description=_CACHE_DESCRIPTION, epilog=_CACHE_EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("ls", help="list the kernel files: kind, size, modification time",
                                 description="List the kernel files of the cache directory.")
    listing.set_defaults(run=Handler("cache", "list_files"))
    clear = actions.add_parser("clear", help="remove the kernel files (and only them)",
                               description="Remove the attnc_*.py kernel files of the cache directory and their "
                               "compiled copies in __pycache__; nothing else. Asks nothing; prints what it removes.")
    clear.add_argument("--dry-run", action="store_true", help="print what would be removed, remove nothing")
    clear.set_defaults(run=Handler("cache", "clear_files"))
    info = actions.add_parser("info", help="the directory, its size, and whether attnc trusts it",
                              description="Summarise the cache directory: where it is, how many kernel files it "
                              "holds and their size, and whether attnc trusts it.")
    info.set_defaults(run=Handler("cache", "show_info"))
