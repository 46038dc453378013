"""Block-map construction on the CPU: attnc.create_block_mask against FlexAttention's create_block_mask.

    python benchmarks/bench_block_map.py            # S = 16K, 32K, 64K, then causal at 256K
    python benchmarks/bench_block_map.py --quick    # S = 16K only (the 256K row only if it looks cheap)

Masks: `causal`; `sliding_window` (causal, the last 1024 keys); `document` (8 documents of uneven,
seeded lengths); `natten` (13 x 13 neighbourhoods on a square canvas whose side is a multiple of 16, so
the sequence fills whole tiles; S is the canvas area, the nearest square to the nominal length).
BLOCK_SIZE 128, B = H = None (one map broadcast over batch and heads), device cpu.

(a) Tiles: all of them, the minimal number a kernel must visit (the non-empty tiles, from a dense
    evaluation of the plain torch mask: the exact answer), and how many attnc's and FlexAttention's maps
    visit (partial + full).
(b) Build time, best of N runs: attnc, torch eager, and `torch.compile(create_block_mask)` (its first
    call at each length compiles; that time is reported separately). Ratios are torch time / attnc
    time: above 1x attnc is faster. A case that fails is recorded with its error message.

Writes `benchmarks/results/<YYYY-MM-DD>-cpu-block-map.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import json
import math
import pathlib
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import attnc  # noqa: E402
from attnc.runtime.block_mask import build_block_mask  # noqa: E402

BLOCK = 128
LENGTHS = (16384, 32768, 65536)
LONG_CAUSAL = 262144
WINDOW, DOCUMENTS, NATTEN_KERNEL = 1024, 8, 13
# torch's eager builder materialises the whole [S, S] mask (and temporaries of that size): above this
# many pairs it is skipped rather than risk the machine's memory (32K x 32K is 1 GiB per bool tensor).
EAGER_MAX_PAIRS = 1 << 30


@dataclasses.dataclass(frozen=True)
class Case:
    mask: str
    S: int
    mask_mod: Callable

    @property
    def tiles(self) -> int:
        return math.ceil(self.S / BLOCK) ** 2


# -- masks ---------------------------------------------------------------------------------------------


def causal_case(S: int) -> Case:
    def causal(b, h, q_idx, kv_idx):
        return q_idx >= kv_idx

    return Case("causal", S, causal)


def sliding_window_case(S: int) -> Case:
    def sliding_window(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (q_idx - kv_idx < WINDOW)

    return Case("sliding_window", S, sliding_window)


def document_lengths(S: int) -> list[int]:
    """DOCUMENTS documents of uneven lengths covering S tokens; seeded by S, so every run sees the same."""
    gen = torch.Generator().manual_seed(S)
    cuts = sorted((torch.randperm(S - 1, generator=gen)[: DOCUMENTS - 1] + 1).tolist())
    bounds = [0, *cuts, S]
    return [end - start for start, end in itertools.pairwise(bounds)]


def document_case(S: int) -> Case:
    lengths = document_lengths(S)
    doc = torch.repeat_interleave(torch.arange(len(lengths), dtype=torch.int32), torch.tensor(lengths))

    def document(b, h, q_idx, kv_idx):
        return doc[q_idx] == doc[kv_idx]

    return Case("document", S, document)


def natten_case(S: int) -> Case:
    side = 16 * round(math.sqrt(S) / 16)  # a multiple of 16: side * side is a whole number of 128-tiles
    half, kernel = NATTEN_KERNEL // 2, NATTEN_KERNEL

    def natten(b, h, q_idx, kv_idx):
        q_row, q_col, kv_row, kv_col = q_idx // side, q_idx % side, kv_idx // side, kv_idx % side
        # the window is centred on the query and shifted inward at the canvas edges, as in NATTEN
        row0 = (q_row - half).clamp(0, side - kernel)
        col0 = (q_col - half).clamp(0, side - kernel)
        return (kv_row >= row0) & (kv_row < row0 + kernel) & (kv_col >= col0) & (kv_col < col0 + kernel)

    return Case("natten", side * side, natten)


CASES = (causal_case, sliding_window_case, document_case, natten_case)


# -- builders and counts -----------------------------------------------------------------------------------


def build_attnc(case: Case) -> Any:
    return attnc.create_block_mask(case.mask_mod, None, None, case.S, case.S, device="cpu", BLOCK_SIZE=BLOCK)


def build_torch_eager(case: Case) -> Any:
    from torch.nn.attention.flex_attention import create_block_mask

    return create_block_mask(case.mask_mod, None, None, case.S, case.S, device="cpu", BLOCK_SIZE=BLOCK)


_COMPILED: list[Callable] = []


def build_torch_compiled(case: Case) -> Any:
    if not _COMPILED:
        from torch.nn.attention.flex_attention import create_block_mask

        torch._dynamo.config.cache_size_limit = 64  # every (mask, length) is a graph of its own
        _COMPILED.append(torch.compile(create_block_mask))
    return _COMPILED[0](case.mask_mod, None, None, case.S, case.S, device="cpu", BLOCK_SIZE=BLOCK)


def counts(block_mask: Any) -> dict[str, int]:
    """Partial, full and visited tiles of a map (attnc's or torch's: the fields are the same)."""
    partial = int(block_mask.kv_num_blocks.sum())
    full = 0 if block_mask.full_kv_num_blocks is None else int(block_mask.full_kv_num_blocks.sum())
    return {"partial": partial, "full": full, "visited": partial + full}


def minimal_tiles(case: Case) -> int:
    """Non-empty tiles, by evaluating the plain torch mask at every pair (no tracing, no analysis)."""
    dense = build_block_mask(case.mask_mod, None, None, case.S, case.S, device="cpu", BLOCK_SIZE=BLOCK)
    return counts(dense)["visited"]


# -- timing --------------------------------------------------------------------------------------------


def best_of(build: Callable[[Case], Any], case: Case, repeats: int, budget_s: float) -> tuple[float, Any]:
    """(best seconds, last result) over up to `repeats` runs; no more runs once `budget_s` is spent."""
    best, spent, result = math.inf, 0.0, None
    for _ in range(repeats):
        start = time.perf_counter()
        result = build(case)
        elapsed = time.perf_counter() - start
        best, spent = min(best, elapsed), spent + elapsed
        if spent > budget_s:
            break
    return best, result


def measure(impl: str, build: Callable[[Case], Any], case: Case, args: argparse.Namespace) -> dict:
    """One implementation on one case: seconds and tile counts, or the error it raised."""
    try:
        first_s = None
        if impl == "torch_compiled":  # the first call at a new length compiles: time it on its own
            start = time.perf_counter()
            build(case)
            first_s = time.perf_counter() - start
        seconds, block_mask = best_of(build, case, args.repeats, args.budget)
    except Exception as error:  # one failing implementation must not hide the others' numbers
        return {"error": f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300]}"}
    out = {"s": round(seconds, 5), **counts(block_mask)}
    return out if first_s is None else {**out, "first_call_s": round(first_s, 3)}


def run_case(case: Case, args: argparse.Namespace, notes: list[str]) -> dict:
    row: dict[str, Any] = {"mask": case.mask, "S": case.S, "tiles": case.tiles}
    row["minimal"] = minimal_tiles(case)
    row["attnc"] = measure("attnc", build_attnc, case, args)
    if case.S * case.S > EAGER_MAX_PAIRS:
        row["torch_eager"] = {"skipped": f"materialises the {case.S}x{case.S} mask ({case.S**2 / 2**30:.0f} GiB "
                                         "per bool tensor)"}
        notes.append(f"torch eager skipped for {case.mask} S={case.S}: {row['torch_eager']['skipped']}")
    else:
        row["torch_eager"] = measure("torch_eager", build_torch_eager, case, args)
    row["torch_compiled"] = measure("torch_compiled", build_torch_compiled, case, args)
    _check_counts(row, notes)
    print(f"  {case.mask} S={case.S}: done", file=sys.stderr, flush=True)
    return row


def _check_counts(row: dict, notes: list[str]) -> None:
    """Each map must visit every non-empty tile (fewer would drop attended pairs); more is sound but slower."""
    case = f"{row['mask']} S={row['S']}"
    for impl in ("attnc", "torch_eager", "torch_compiled"):
        visited = row[impl].get("visited")
        if visited is not None and visited < row["minimal"]:
            notes.append(f"WRONG {impl} {case}: visits {visited} < {row['minimal']} tiles")
        elif visited is not None and visited > row["minimal"]:
            notes.append(f"{impl} {case} visits {visited} tiles, {visited / row['minimal']:.2f}x the minimal")


def long_causal(rows: list[dict], args: argparse.Namespace, notes: list[str]) -> dict | None:
    """attnc's causal map at 256K tokens, unless the time measured so far predicts more than the budget
    (estimated as if the time grew with S^2, as a dense builder's does)."""
    measured = [r for r in rows if r["mask"] == "causal" and "s" in r["attnc"]]
    if not measured:
        return None
    last = max(measured, key=lambda r: r["S"])
    estimate = last["attnc"]["s"] * (LONG_CAUSAL / last["S"]) ** 2
    if estimate > args.long_budget:
        notes.append(f"causal S={LONG_CAUSAL} skipped: estimated {estimate:.0f} s from S={last['S']} "
                     f"(budget {args.long_budget:.0f} s; --long-budget to change)")
        return None
    case = causal_case(LONG_CAUSAL)
    n = LONG_CAUSAL // BLOCK
    row = {"mask": case.mask, "S": case.S, "tiles": case.tiles, "minimal": n * (n + 1) // 2}  # j <= i
    row["attnc"] = measure("attnc", build_attnc, case, args)
    _check_counts({**row, "torch_eager": {}, "torch_compiled": {}}, notes)
    return row


# -- reporting -----------------------------------------------------------------------------------------


def _cell_tiles(result: dict | None) -> str:
    if not result or "visited" not in result:
        return "-"
    return f"{result['visited']} ({result['partial']}p/{result['full']}f)"


def _cell_time(result: dict | None) -> str:
    if not result:
        return "-"
    if "error" in result:
        return f"error: {result['error']}"
    if "skipped" in result:
        return "skipped"
    first = f" (1st {result['first_call_s']:.1f})" if "first_call_s" in result else ""
    return f"{result['s']:.4f}{first}"


def _ratio(row: dict, impl: str) -> str:
    other, ours = row.get(impl, {}).get("s"), row["attnc"].get("s")
    return f"{other / ours:.2f}x" if other and ours else "-"


def print_tables(rows: list[dict], notes: list[str]) -> None:
    print(f"(a) tiles of {BLOCK} x {BLOCK} visited (partial p / full f)")
    header = f"{'mask':<15} {'S':>7} {'tiles':>8} {'minimal':>8} {'attnc':>22} {'flex':>22}"
    print(header + "\n" + "-" * len(header))
    for r in rows:
        flex = r.get("torch_eager") if "visited" in r.get("torch_eager", {}) else r.get("torch_compiled")
        print(f"{r['mask']:<15} {r['S']:>7} {r['tiles']:>8} {r['minimal']:>8} {_cell_tiles(r['attnc']):>22} "
              f"{_cell_tiles(flex):>22}")
    print("\n(b) build time, seconds, best of runs (torch / attnc: above 1x attnc is faster)")
    header = (f"{'mask':<15} {'S':>7} {'attnc':>9} {'torch eager':>12} {'torch.compile (1st call)':>26} "
              f"{'eager/attnc':>11} {'compiled/attnc':>14}")
    print(header + "\n" + "-" * len(header))
    for r in rows:
        print(f"{r['mask']:<15} {r['S']:>7} {_cell_time(r['attnc']):>9} {_cell_time(r.get('torch_eager')):>12} "
              f"{_cell_time(r.get('torch_compiled')):>26} {_ratio(r, 'torch_eager'):>11} "
              f"{_ratio(r, 'torch_compiled'):>14}")
    for note in notes:
        print(f"note: {note}")


def _commit() -> str | None:
    """The checkout measured, `-dirty` when it has uncommitted changes."""
    try:
        done = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True)
    except OSError:
        return None
    return done.stdout.strip() or None


def _processor() -> str:
    """The CPU model (Linux), else what the platform module knows."""
    cpuinfo = pathlib.Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def write_results(rows: list[dict], notes: list[str], args: argparse.Namespace) -> pathlib.Path:
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{datetime.date.today().isoformat()}-cpu-block-map.json"
    report = {"device": "cpu", "processor": _processor(),
              "threads": torch.get_num_threads(), "torch": torch.__version__, "attnc": attnc.__version__,
              "commit": _commit(), "block_size": BLOCK, "repeats": args.repeats, "quick": args.quick,
              "rows": rows, "notes": notes}
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="S = 16K only")
    parser.add_argument("--repeats", type=int, default=5, help="runs per measurement; the best counts")
    parser.add_argument("--budget", type=float, default=20.0, help="stop repeating a measurement after this many s")
    parser.add_argument("--long-budget", type=float, default=300.0,
                        help="skip causal at 256K when its estimated time exceeds this many s")
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "benchmarks" / "results",
                        help="directory for the JSON results")
    parser.add_argument("--no-save", action="store_true", help="print the tables only")
    args = parser.parse_args(argv)
    rows: list[dict] = []
    notes: list[str] = []
    for length in LENGTHS[:1] if args.quick else LENGTHS:
        rows += [run_case(make(length), args, notes) for make in CASES]
    long_row = long_causal(rows, args, notes)
    rows += [long_row] if long_row else []
    print_tables(rows, notes)
    if not args.no_save:
        print(f"wrote {write_results(rows, notes, args)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
