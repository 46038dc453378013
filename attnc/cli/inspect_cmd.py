"""`attnc inspect`: the static performance report of a variant's kernels against the yardstick (no GPU)."""

from __future__ import annotations

import argparse
import json
import sys

import torch

from attnc.perf.launches import Shape
from attnc.runtime.aot import AOTError

from .errors import CliError, Exit
from .target import load_target

DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
          "fp32": torch.float32, "float32": torch.float32}


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
                                       values=target.values or None, decode=args.decode)
    except AOTError as error:
        raise CliError(str(error), Exit.CHECK_FAILED) from error
    if args.json:
        print(json.dumps({"variant": target.label, **inspection.as_json()}, indent=1))
    else:
        print(format_inspection(inspection, target.label))
    return int(Exit.OK)
