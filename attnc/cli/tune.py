"""`attnc tune`: pre-tune a variant's kernels over a list of shapes on this GPU, or, without one, list the
candidates (and with --aot drop those an sm_90 compile shows to spill)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import sys
from collections.abc import Iterator
from typing import Any

import torch

from attnc.runtime import autotune, tuning
from attnc.runtime.config import KernelConfig

from .devices import DTYPES
from .errors import CliError, Exit
from .target import add_variant_arguments, load_target

DESCRIPTION = """\
Tune the variant's kernels (forward; with --backward also dK/dV and dQ) for each --shape on this CUDA GPU: each
candidate tile config that fits the GPU's shared memory and registers by estimate is timed on random inputs
with the variant's own sparsity, then TMA and warp specialization are tried on the fastest (Hopper). The
fastest config per (GPU model, kernel, shape bucket) is stored in tuning.json beside the kernel cache; later
runs, in any process, launch with it without benchmarking. A shape tuned before is not timed again.

Without a GPU, --dry-run lists each kernel's candidates for --arch; with --aot it compiles each ahead of time
for --arch (no GPU needed) and drops those that spill."""

EPILOG = """\
examples:
  attnc tune causal --shape 8,16,4096,128 --shape 4,16,16384,128 --backward
  attnc tune 'sliding_window(1024)' --shape 16,16,2048,64 --dtype bfloat16
  attnc tune 'document_mask' --shape 4,16,8192,128 --dry-run --aot
progress: a bar when tqdm is installed (pip install 'attnc[tune]'), else one line per config on stderr."""


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("tune", help="pre-tune a variant's kernels for a list of shapes on this GPU",
                                   description=DESCRIPTION, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_variant_arguments(parser)
    parser.add_argument("--shape", action="append", type=_shape, required=True, metavar="B,H,S,D",
                        help="batch, query heads, sequence length and head dim (repeatable)")
    parser.add_argument("--kv-heads", type=int, metavar="H", help="key/value heads (default: as the query)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="bfloat16", help="input dtype (default bfloat16)")
    parser.add_argument("--backward", action="store_true", help="also tune the backward kernels")
    parser.add_argument("--dry-run", action="store_true", help="list the candidates instead of timing them")
    parser.add_argument("--aot", action="store_true", help="with --dry-run: drop candidates that spill on --arch")
    parser.add_argument("--arch", default="sm_90", help="architecture of --dry-run (default sm_90)")
    parser.add_argument("--limit", type=int, metavar="N", help="at most N tile candidates per kernel")
    parser.set_defaults(run=run)


def _shape(text: str) -> tuple[int, int, int, int]:
    try:
        B, H, S, D = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected B,H,S,D (four integers), got {text!r}") from None
    if min(B, H, S, D) < 1:
        raise argparse.ArgumentTypeError(f"every dimension must be at least 1, got {text!r}")
    return B, H, S, D


def _kinds(backward: bool) -> tuple[str, ...]:
    return autotune.KINDS if backward else ("forward",)


def run(args: argparse.Namespace) -> int:
    if args.aot and not args.dry_run:
        raise CliError("attnc tune: --aot goes with --dry-run (on a GPU, spilling configs simply lose)", Exit.USAGE)
    if args.dry_run:
        return _dry_run(args)
    if not torch.cuda.is_available():
        raise CliError("attnc tune times kernels on a CUDA GPU and none is available; --dry-run lists the "
                       "candidates without one (--aot also drops those that spill)", Exit.MISSING)
    device = torch.device("cuda")
    target = load_target(args, device=device)
    target.require_values("tune")
    values = target.values_on(device)
    dtype = DTYPES[args.dtype]
    gpu, arch = tuning.identity(device)
    print(f"{target.label} on {gpu} ({arch}), {args.dtype}")
    for B, H, S, D in args.shape:
        Hkv = args.kv_heads or H
        q = torch.randn(B, H, S, D, device=device, dtype=dtype)
        k, v = (torch.randn(B, Hkv, S, D, device=device, dtype=dtype) for _ in range(2))
        with _progress(f"{B}x{H}x{S}x{D}") as tell:
            chosen = target.attn.tune(q, k, v, backward=args.backward, progress=tell, limit=args.limit,
                                          **values)
        for kind, config in chosen.items():
            print(f"  B={B} H={H} S={S} D={D} {kind:<14} {describe(config)}")
    print(f"stored in {tuning.shared_tuner().path}")
    return int(Exit.OK)


def _dry_run(args: argparse.Namespace) -> int:
    target = load_target(args, device=torch.device("cpu"))
    dtype = DTYPES[args.dtype]
    for B, H, S, D in args.shape:
        for kind in _kinds(args.backward):
            default = autotune.default_for(kind, args.arch, D, D)
            configs = autotune.tile_candidates(kind, args.arch, D, D, dtype.itemsize, args.limit)
            print(f"B={B} H={H} S={S} D={D} {kind}: {len(configs)} tile candidates for {args.arch} "
                  f"(bucket {dataclasses.astuple(autotune.shape_bucket(B, H, S, S, D, D))})")
            report: dict[KernelConfig, dict[str, Any]] = {}
            if args.aot:
                print(f"  compiling {len(configs)} configs for {args.arch} ...", file=sys.stderr)
                report = tuning.aot_report(target.attn, kind, configs, arch=args.arch, dtype=dtype, D=D, Dv=D)
            kept = autotune.prune_by_resources(configs, report)
            for config in configs:
                facts = report.get(config)
                resources = (f" registers {facts['registers']:>3} spills {facts['spills']:>4}"
                             if facts else "")
                verdict = "" if config in kept else "  dropped (spills)"
                mark = " (default)" if config == default else ""
                print(f"  {describe(config)}{resources}{mark}{verdict}")
            # with --aot, warp specialization only where a compile shows Triton splits the loop
            specializes = (functools.partial(tuning.warp_specializes, target.attn, kind, arch=args.arch, dtype=dtype,
                                             D=D, Dv=D) if args.aot else None)
            extra = len(autotune.hopper_options(kept[:autotune.REFINE_TOP], args.arch, kind, specializes))
            print(f"  then {extra} Hopper variants of the {autotune.REFINE_TOP} fastest" if extra else
                  "  (no Hopper options on this architecture)")
    return int(Exit.OK)


def describe(config: KernelConfig) -> str:
    flags = "".join([" tma" if config.tma else "", " warp-specialized" if config.warp_specialize else ""])
    return (f"BLOCK_M={config.block_m:<3} BLOCK_N={config.block_n:<3} warps={config.num_warps} "
            f"stages={config.num_stages}{flags}")


@contextlib.contextmanager
def _progress(label: str) -> Iterator[tuning.Progress]:
    """A callback for each timed config: a tqdm bar on stderr when tqdm is installed, else a line each."""
    try:
        from tqdm import tqdm
    except ImportError:
        def line(kind: str, config: KernelConfig, ms: float | None) -> None:
            time = f"{ms:.3f} ms" if ms is not None else "-"
            print(f"  [{label}] {kind:<14} {describe(config)}  {time}", file=sys.stderr)

        yield line
        return
    with tqdm(desc=label, unit="config", file=sys.stderr, leave=False) as bar:
        def advance(kind: str, config: KernelConfig, ms: float | None) -> None:
            bar.set_postfix_str(f"{kind} {ms:.3f} ms" if ms is not None else kind)
            bar.update()

        yield advance
