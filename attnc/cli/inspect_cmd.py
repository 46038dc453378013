"""`attnc inspect`: the static performance report of a variant's kernels against the yardstick (no GPU)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import torch

from attnc.perf.launches import Shape
from attnc.runtime.aot import AOTError

from .errors import CliError, Exit
from .target import add_variant_arguments, load_target

DESCRIPTION = """\
Compile the kernels a call of the variant launches (forward through its closed-form tile loops and through a
BlockMask; with --backward also dK/dV and dQ), with the default tile configs and the arguments of a launch at
--shape, ahead of time for --arch (no GPU needed), disassemble them and report per kernel: its config,
registers, spills, shared memory, wgmma (HGMMA) or mma.sync (HMMA), TMA, ptxas's performance warnings, and
for each loop of the SASS its instruction count, issue slots per score element, MUFU / FP32 / INT / INT64 /
tensor-core instructions per element, and whether it is software-pipelined. The same run compiles the
yardstick (plain dense FlashAttention-2, attnc/perf/yardstick.py); each hot loop's figures are also given
as multiples of the yardstick's main loop."""

EPILOG = """\
examples:
  attnc inspect causal
  attnc inspect 'causal, softcap(30)' --backward
  attnc inspect 'natten((64, 64), 13)' --head-dim 64 --json > natten.json

issue slots per score element = loop body instructions x num_warps / (BLOCK_M x BLOCK_N); see
attnc/perf/report.py for what each figure means and its caveats."""

DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
          "fp32": torch.float32, "float32": torch.float32}


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("inspect", help="static performance report of a variant's kernels (no GPU)",
                                   description=DESCRIPTION, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_variant_arguments(parser)
    parser.add_argument("--arch", default="sm_90", help="architecture to compile for (default sm_90)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="bf16", help="input dtype (default bf16)")
    parser.add_argument("--head-dim", type=int, default=128, metavar="D", help="head dim (default 128)")
    parser.add_argument("--shape", type=_shape, default=(2, 16, 4096), metavar="B,H,S",
                        help="batch, heads and sequence length of the launch (default 2,16,4096)")
    parser.add_argument("--backward", action="store_true", help="also the backward kernels (dK/dV, dQ)")
    parser.add_argument("--json", action="store_true", help="print the whole report as JSON")
    parser.set_defaults(run=run)


def _shape(text: str) -> tuple[int, int, int]:
    try:
        B, H, S = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected B,H,S (three integers), got {text!r}") from None
    if min(B, H, S) < 1:
        raise argparse.ArgumentTypeError(f"every dimension must be at least 1, got {text!r}")
    return B, H, S


def run(args: argparse.Namespace) -> int:
    from attnc.perf.inspection import format_inspection, inspect_attention

    if args.head_dim < 1:
        raise CliError("--head-dim must be positive")
    target = load_target(args, device=torch.device("cpu"))
    target.require_values("inspect")
    B, H, S = args.shape
    shape = Shape(B, H, S, args.head_dim, None, DTYPES[args.dtype])
    print(f"compiling {target.label}'s kernels and the yardstick for {args.arch} ...", file=sys.stderr)
    try:
        inspection = inspect_attention(target.attn, arch=args.arch, shape=shape, backward=args.backward,
                                       values=target.values or None)
    except AOTError as error:
        raise CliError(str(error), Exit.CHECK_FAILED) from error
    if args.json:
        print(json.dumps({"variant": target.label, **inspection.as_json()}, indent=1))
    else:
        print(format_inspection(inspection, target.label))
    return int(Exit.OK)
