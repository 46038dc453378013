"""Static performance report of the benchmark set, no GPU needed: attnc's kernels and the yardstick (plain
dense FlashAttention-2, attnc/perf/yardstick.py) compiled ahead of time for sm_90 and compared loop by loop.

    python benchmarks/bench_static.py                       # every variant, D = 64 and 128, fwd and bwd
    python benchmarks/bench_static.py --head-dim 128 --variant causal softcap --no-save
    python benchmarks/bench_static.py --forward-only        # skip the backward kernels

The variants are bench_attention.py's (noop, causal, softcap, sliding_window, prefix_lm, alibi, document,
natten_2d), bf16, at its S = 4096 shape with B = 2 and H = 16: the kernels are compiled with the arguments a
launch at that shape passes (attnc.perf.launches), and the tile classes that weight loops are counted on it.
Per variant and head dim: the forward through its closed-form tile loops ("forward", what `attn(q, k, v)`
runs) and through a BlockMask ("forward_block_mask", what bench_attention.py times), the backward's dK/dV and
dQ kernels of both, each with its config, registers, spills, shared memory, wgmma or mma.sync, TMA, ptxas's
performance warnings and its hot loops' figures per score element against the yardstick's main loop of the
same kind (attnc.perf.report explains each figure and its caveats). The headline per kernel:

    issue slots per score element in the kernel's hot loop(s) / the yardstick's
    (max over hot loops; "weighted" by the share of partial and full tiles each loop visits)

Prints a table per head dim and writes every figure to `benchmarks/results/<date>-static-sm_90.json` (with
the Triton version and the yardstick's configs), replacing that day's file.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import pathlib
import sys
import time
from typing import Any

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "benchmarks"))  # the variant definitions are bench_attention's

import bench_attention as bench  # noqa: E402  (imports attnc first, as Triton requires)

import attnc  # noqa: E402
from attnc.perf import inspection, report  # noqa: E402
from attnc.perf.launches import Shape  # noqa: E402

BATCH, HEADS, SEQ_LEN, HEAD_DIMS, ARCH = 2, bench.HEADS, 4096, bench.HEAD_DIMS, "sm_90"
PROCESSES = 2  # compile workers at once: one core each


def variant_attention(name: str, seq_len: int) -> attnc.Attention:
    """bench_attention's variant `name` at `seq_len`, compiled (its captured tensors on the CPU)."""
    settings = bench.Settings(torch.device("cpu"), bench.DTYPE, HEADS, HEADS * seq_len, bench.WINDOW, "fwd")
    spec = bench.VARIANTS[name](seq_len, settings)
    return attnc.compile(spec.mask_mod, spec.score_mod)


def rows_of(variant: str, result: inspection.Inspection) -> list[dict[str, Any]]:
    """One table row per kernel: resources, and its hot loops against the yardstick."""
    rows = []
    for kernel in result.kernels:
        comparison = result.comparison(kernel.name)
        hot = kernel.hot_loops
        dearest = max(hot, key=lambda loop: loop.per_element["issue"], default=None)
        loops = [] if comparison is None else comparison.loops
        ratios = max(loops, key=lambda row: row["ratio"]["issue"] or 0, default={"ratio": {}})["ratio"]
        rows.append({
            "variant": variant, "D": result.shape.head_dim, "kernel": kernel.name,
            "config": inspection.describe_config(kernel.config), "registers": kernel.registers,
            "spills": kernel.spills, "shared_kib": round(kernel.shared_memory / 1024, 1), "matmul": kernel.matmul,
            "tma": kernel.tma_sass, "pipelined": all(loop.pipelining.pipelined for loop in hot) if hot else None,
            "warnings": kernel.warning_codes, "hot_loops": len(hot),
            "issue": None if dearest is None else dearest.per_element["issue"],
            "x_max": None if comparison is None else comparison.headline_max,
            "x_weighted": None if comparison is None else comparison.headline_weighted,
            "x_mufu": ratios.get("mufu"), "x_fp32": ratios.get("fp32"), "x_int": ratios.get("int"),
            "int64": None if dearest is None else dearest.per_element["int64"],
            "mma_work": None if dearest is None else dearest.mma_work,
        })
    return rows


COLUMNS = (("variant", 14, "{}"), ("kernel", 24, "{}"), ("config", 17, "{}"), ("registers", 4, "{}"),
           ("spills", 6, "{}"), ("shared_kib", 6, "{:.0f}"), ("matmul", 8, "{}"), ("tma", 3, "{}"),
           ("pipelined", 4, "{}"), ("warnings", 7, "{}"), ("hot_loops", 3, "{}"), ("issue", 6, "{:.3f}"),
           ("x_max", 6, "x{:.2f}"), ("x_weighted", 6, "x{:.2f}"), ("x_mufu", 6, "x{:.2f}"), ("x_fp32", 6, "x{:.2f}"),
           ("x_int", 6, "x{:.1f}"), ("int64", 6, "{:.3f}"), ("mma_work", 5, "{:.2f}"))
HEADERS = {"registers": "regs", "shared_kib": "smem", "pipelined": "pipe", "warnings": "ptxas", "hot_loops": "hot",
           "issue": "issue", "x_max": "x max", "x_weighted": "x wtd", "x_mufu": "mufu", "x_fp32": "fp32",
           "x_int": "int", "mma_work": "mma"}


def format_table(rows: list[dict[str, Any]]) -> str:
    def cell(row: dict[str, Any], key: str, width: int, fmt: str) -> str:
        value = row.get(key)
        if value is None or value == []:
            text = "-"
        elif isinstance(value, bool):
            text = "yes" if value else "no"
        elif isinstance(value, list):
            text = ",".join(value)
        else:
            text = fmt.format(value)
        return text.ljust(width) if key in ("variant", "kernel", "config", "matmul", "warnings") else text.rjust(width)

    header = "  ".join((HEADERS.get(k, k)).ljust(w) if k in ("variant", "kernel", "config", "matmul", "warnings")
                       else HEADERS.get(k, k).rjust(w) for k, w, _ in COLUMNS)
    lines = [header, "-" * len(header)]
    lines += ["  ".join(cell(row, k, w, f) for k, w, f in COLUMNS) for row in rows]
    return "\n".join(lines)


def yardstick_rows(kernels: list[report.KernelReport], head_dim: int) -> list[dict[str, Any]]:
    rows = []
    for kernel in kernels:
        main = kernel.main_loop()
        rows.append({"variant": "(yardstick)", "D": head_dim, "kernel": kernel.name,
                     "config": inspection.describe_config(kernel.config), "registers": kernel.registers,
                     "spills": kernel.spills, "shared_kib": round(kernel.shared_memory / 1024, 1),
                     "matmul": kernel.matmul, "tma": kernel.tma_sass,
                     "pipelined": main.pipelining.pipelined if main else None, "warnings": kernel.warning_codes,
                     "hot_loops": len(kernel.hot_loops), "issue": main.per_element["issue"] if main else None,
                     "int64": main.per_element["int64"] if main else None,
                     "mma_work": main.mma_work if main else None})
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head-dim", type=int, nargs="+", default=list(HEAD_DIMS), help="head dims (default: 64 128)")
    parser.add_argument("--variant", nargs="+", choices=tuple(bench.VARIANTS), default=list(bench.VARIANTS),
                        help="variants (default: all)")
    parser.add_argument("--forward-only", action="store_true", help="skip the backward kernels")
    parser.add_argument("--arch", default=ARCH, help=f"architecture to compile for (default {ARCH})")
    parser.add_argument("--processes", type=int, default=PROCESSES, help="compile workers at once (default 2)")
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "benchmarks" / "results",
                        help="directory for the JSON results (default: benchmarks/results)")
    parser.add_argument("--no-save", action="store_true", help="print the table only")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import triton

    args = parse_args(argv)
    backward = not args.forward_only
    record: dict[str, Any] = {"arch": args.arch, "triton": triton.__version__, "torch": torch.__version__,
                              "date": datetime.date.today().isoformat(),
                              "shape": {"B": BATCH, "H": HEADS, "S": SEQ_LEN, "dtype": "bfloat16"},
                              "formula": inspection.FORMULA, "yardstick": {}, "variants": [], "rows": []}
    for head_dim in args.head_dim:
        shape = Shape(BATCH, HEADS, SEQ_LEN, head_dim, None, bench.DTYPE)
        started = time.perf_counter()
        yardstick = inspection.compile_yardstick(args.arch, shape, backward=backward, processes=args.processes)
        rows = yardstick_rows(yardstick, head_dim)
        record["yardstick"][str(head_dim)] = {
            "configs": {k.name: None if k.config is None else dataclasses.asdict(k.config) for k in yardstick},
            "kernels": [k.as_json() for k in yardstick]}
        for name in args.variant:
            attn = variant_attention(name, SEQ_LEN)
            result = inspection.inspect_attention(attn, arch=args.arch, shape=shape, backward=backward,
                                                  yardstick=yardstick, processes=args.processes)
            found = rows_of(name, result)
            rows += found
            as_json = result.as_json()
            as_json.pop("yardstick")  # once per head dim, above
            record["variants"].append({"variant": name, "D": head_dim, **as_json})
            print(f"compiled {name} D={head_dim}", file=sys.stderr)
        record["rows"] += rows
        print(f"\nD = {head_dim} ({args.arch}, bf16, B={BATCH} H={HEADS} S={SEQ_LEN}; triton {triton.__version__}; "
              f"{time.perf_counter() - started:.0f} s)")
        print(format_table(rows))
    print(f"\n{inspection.FORMULA}\nx max / x wtd: issue slots per score element of the dearest hot loop / of the "
          "tile-weighted hot loops, over the yardstick's; mufu, fp32, int: the same ratio for those instructions "
          "(dearest loop); int64: 64-bit integer instructions per element; mma: tensor-core work issued per tile "
          "over what one tile needs")
    if not args.no_save:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"{record['date']}-static-{args.arch}.json"
        path.write_text(json.dumps(merged(path, record), indent=1) + "\n")
        print(f"wrote {path}")
    return 0


def merged(path: pathlib.Path, record: dict) -> dict:
    """`record` with the head dims it did not measure kept from the file already at `path` (same triton and
    arch only), so that runs over different head dims add up instead of replacing each other."""
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        return record
    if (previous.get("triton"), previous.get("arch")) != (record["triton"], record["arch"]):
        return record
    measured = {str(d) for d in record["yardstick"]}
    kept = {d: v for d, v in previous.get("yardstick", {}).items() if d not in measured}
    return {**record, "yardstick": {**kept, **record["yardstick"]},
            "variants": [v for v in previous.get("variants", []) if str(v.get("D")) not in measured]
            + record["variants"],
            "rows": [r for r in previous.get("rows", []) if str(r.get("D")) not in measured] + record["rows"]}


if __name__ == "__main__":
    sys.exit(main())
