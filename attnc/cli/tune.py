"""`attnc tune`: pre-tune a variant's kernels over a list of shapes on this GPU, or, without one, list the
candidates (and with --aot drop those an sm_90 compile shows to spill)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch

from attnc.runtime import autotune, tuning
from attnc.runtime.config import KernelConfig

from .devices import DTYPES
from .errors import CliError, Exit
from .target import load_target


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
            default = autotune.default_for(kind, args.arch, D, D, dtype.itemsize)
            configs = autotune.tile_candidates(kind, args.arch, D, D, dtype.itemsize, args.limit)
            print(f"B={B} H={H} S={S} D={D} {kind}: {len(configs)} tile candidates for {args.arch} "
                  f"(bucket {dataclasses.astuple(autotune.shape_bucket(B, H, S, S, D, D))})")
            report: dict[KernelConfig, dict[str, Any]] = {}
            if args.aot:
                with _compile_progress(f"{kind} {args.arch}", len(configs)) as tell:
                    report = tuning.aot_report(target.attn, kind, configs, arch=args.arch, dtype=dtype, D=D, Dv=D,
                                                progress=tell)
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
            if args.aot and any(c.warp_specialize for c in autotune.hopper_options(kept[:autotune.REFINE_TOP],
                                                                                   args.arch, kind)):
                print(f"  checking warp specialization of the {min(autotune.REFINE_TOP, len(kept))} fastest, a "
                      "compile each ...", file=sys.stderr)
            extra = len(autotune.hopper_options(kept[:autotune.REFINE_TOP], args.arch, kind, specializes))
            print(f"  then {extra} Hopper variants of the {autotune.REFINE_TOP} fastest" if extra else
                  "  (no Hopper options on this architecture)")
    return int(Exit.OK)


def describe(config: KernelConfig) -> str:
    flags = "".join([" tma" if config.tma else "", " warp-specialized" if config.warp_specialize else ""])
    return (f"BLOCK_M={config.block_m:<3} BLOCK_N={config.block_n:<3} warps={config.num_warps} "
            f"stages={config.num_stages}{flags}")


def _tqdm() -> Any:
    """tqdm's bar where one can be drawn (tqdm installed and stderr a terminal), else None: plain lines."""
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


@contextlib.contextmanager
def _progress(label: str) -> Iterator[tuning.Progress]:
    """A callback for each timed config: a tqdm bar on stderr (on a terminal, with tqdm), else a line each."""
    tqdm = _tqdm()
    if tqdm is None:
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


@contextlib.contextmanager
def _compile_progress(label: str, total: int) -> Iterator[Callable[[int, int], None]]:
    """`tell(done, total)` for ahead-of-time compiles (about a second each): a bar, else a line per config."""
    print(f"  compiling {total} configs for {label.split()[-1]}, about a second each ...", file=sys.stderr)
    tqdm = _tqdm()
    if tqdm is None:
        shown = [0]

        def line(done: int, total: int) -> None:
            for n in range(shown[0] + 1, done + 1):
                print(f"  [{label}] compiled {n}/{total}", file=sys.stderr, flush=True)
            shown[0] = max(shown[0], done)

        yield line
        return
    # redrawn after every config: compiles are slow enough that tqdm's rate limit would only hide steps
    with tqdm(desc=label, total=total, unit="config", file=sys.stderr, leave=False, mininterval=0,
              miniters=1) as bar:
        def advance(done: int, total: int) -> None:
            bar.update(done - bar.n)

        yield advance
