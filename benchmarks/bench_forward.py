"""Forward attention throughput: attnc against FlexAttention (torch.compile) and SDPA, on one CUDA GPU.

    python benchmarks/bench_forward.py            # S = 4096, 8192, 16384
    python benchmarks/bench_forward.py --quick    # S = 4096 only, shorter timing

Variants: `causal` (q_idx >= kv_idx) and `document` (q and kv in the same document; a fixed, seeded
split of the sequence into documents of uneven length, the same for every batch and head). bf16,
D = 128, B * H * S held constant. FLOPs count only the allowed (unmasked) pairs: 4 * B * H * D per pair
for the forward (two matmuls, a multiply and an add each). Prints a table with TFLOP/s and attnc's speed
relative to the others, and writes `benchmarks/results/<date>-<gpu>.json` (the format in DESIGN.md §3).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import pathlib
import re
import sys
import traceback
from collections.abc import Callable

import torch
import torch.nn.functional as F

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

TOKENS = 8 * 16 * 4096  # B * H * S, the same for every sequence length
HEADS, HEAD_DIM, DTYPE = 16, 128, torch.bfloat16
TOLERANCE = 2e-2  # bf16 outputs of averaged unit-normal values: a few ulps
SDPA_MASK_SHARE = 0.25  # a dense SDPA mask (and its float bias) may take this share of free memory


@dataclasses.dataclass(frozen=True)
class Variant:
    """One attention variant at one sequence length, with everything each implementation needs."""

    name: str
    mask_mod: Callable
    allowed_pairs: int  # per (batch, head)
    sdpa_kwargs: Callable[[], dict]  # built lazily: a dense mask may not fit


@dataclasses.dataclass(frozen=True)
class Row:
    variant: str
    impl: str
    B: int
    H: int
    S: int
    D: int
    ms: float
    tflops: float

    def as_json(self) -> dict:
        return {"variant": self.variant, "impl": self.impl, "pass": "fwd", "B": self.B, "H": self.H,
                "S": self.S, "D": self.D, "dtype": str(DTYPE).removeprefix("torch."),
                "ms": round(self.ms, 4), "tflops": round(self.tflops, 2)}


# -- variants ------------------------------------------------------------------------------------------


def causal_variant(seq_len: int, device: torch.device) -> Variant:
    def causal(b, h, q_idx, kv_idx):
        return q_idx >= kv_idx

    return Variant("causal", causal, seq_len * (seq_len + 1) // 2, lambda: {"is_causal": True})


def document_lengths(seq_len: int) -> list[int]:
    """Uneven documents of S/32 .. S/4 tokens covering the sequence; seeded, so every run sees the same."""
    gen = torch.Generator().manual_seed(seq_len)
    lengths: list[int] = []
    while sum(lengths) < seq_len:
        lengths.append(int(torch.randint(seq_len // 32, seq_len // 4 + 1, (), generator=gen)))
    lengths[-1] -= sum(lengths) - seq_len
    return lengths


def document_variant(seq_len: int, device: torch.device) -> Variant:
    lengths = document_lengths(seq_len)
    doc = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths)).to(device, torch.int32)

    def document(b, h, q_idx, kv_idx):
        return doc[q_idx] == doc[kv_idx]

    def sdpa_kwargs() -> dict:
        return {"attn_mask": (doc[:, None] == doc[None, :])[None, None]}

    return Variant("document", document, sum(n * n for n in lengths), sdpa_kwargs)


VARIANTS = {"causal": causal_variant, "document": document_variant}


# -- implementations: each returns a zero-argument callable computing the output, or a reason it can't ----


def make_attnc(variant: Variant, q, k, v) -> Callable:
    import attnc

    block_mask = attnc.create_block_mask(variant.mask_mod, None, None, q.shape[2], k.shape[2], device=q.device)
    return lambda: attnc.flex_attention(q, k, v, block_mask=block_mask, backend="triton")


_FLEX: list[Callable] = []


def make_flex(variant: Variant, q, k, v) -> Callable:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    if not _FLEX:
        # Every (variant, length) is a new graph; keep them all instead of falling back to eager.
        torch._dynamo.config.cache_size_limit = 64
        _FLEX.append(torch.compile(flex_attention, dynamic=False))
    block_mask = create_block_mask(variant.mask_mod, None, None, q.shape[2], k.shape[2], device=q.device)
    return lambda: _FLEX[0](q, k, v, block_mask=block_mask)


def make_sdpa(variant: Variant, q, k, v) -> Callable | str:
    if variant.name != "causal":
        seq_len = q.shape[2]
        need = 3 * seq_len * seq_len  # the bool mask and the bf16 bias SDPA derives from it
        free, _ = torch.cuda.mem_get_info()
        if need > SDPA_MASK_SHARE * free:
            return f"dense {seq_len}x{seq_len} mask needs {need / 2**30:.1f} GiB"
    kwargs = variant.sdpa_kwargs()
    return lambda: F.scaled_dot_product_attention(q, k, v, **kwargs)


IMPLS = {"attnc": make_attnc, "flex": make_flex, "sdpa": make_sdpa}


# -- measuring -----------------------------------------------------------------------------------------


def inputs(seq_len: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    batch = max(1, TOKENS // (HEADS * seq_len))
    gen = torch.Generator(device=device).manual_seed(0)
    return tuple(torch.randn(batch, HEADS, seq_len, HEAD_DIM, device=device, dtype=DTYPE, generator=gen)
                 for _ in range(3))


def build(impl: str, variant: Variant, qkv, notes: list[str]) -> Callable | None:
    """The impl's callable, run once; None (with a note) when it cannot run this case."""
    case = f"{variant.name} S={qkv[0].shape[2]}"
    try:
        fn = IMPLS[impl](variant, *qkv)
        if isinstance(fn, str):
            notes.append(f"{impl} skipped for {case}: {fn}")
            return None
        fn()
        torch.cuda.synchronize()
        return fn
    except Exception as error:  # one failing implementation must not hide the others' numbers
        traceback.print_exc()
        notes.append(f"{impl} failed for {case}: {type(error).__name__}: {error}")
        torch.cuda.empty_cache()
        return None


def compare_outputs(fns: dict[str, Callable], variant: str, seq_len: int, notes: list[str]) -> list[dict]:
    """attnc's output against each other implementation's, before anything is timed."""
    checks = []
    for other in ("flex", "sdpa"):
        if "attnc" not in fns or other not in fns:
            continue
        diff = (fns["attnc"]().float() - fns[other]().float()).abs().max().item()
        checks.append({"variant": variant, "S": seq_len, "against": other, "max_abs_diff": diff})
        if not diff <= TOLERANCE:  # also catches NaN
            notes.append(f"MISMATCH {variant} S={seq_len}: max |attnc - {other}| = {diff:.3e} > {TOLERANCE}")
    return checks


def time_ms(fn: Callable, quick: bool) -> float:
    import triton.testing

    warmup, rep = (10, 30) if quick else (25, 100)
    return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


def run_case(variant: str, seq_len: int, device: torch.device, quick: bool, notes: list[str],
             checks: list[dict]) -> list[Row]:
    qkv = inputs(seq_len, device)
    spec = VARIANTS[variant](seq_len, device)
    fns = {impl: build(impl, spec, qkv, notes) for impl in IMPLS}
    fns = {impl: fn for impl, fn in fns.items() if fn is not None}
    checks.extend(compare_outputs(fns, variant, seq_len, notes))
    batch = qkv[0].shape[0]
    flops = 4 * batch * HEADS * HEAD_DIM * spec.allowed_pairs
    rows = []
    for impl, fn in fns.items():
        ms = time_ms(fn, quick)
        rows.append(Row(variant, impl, batch, HEADS, seq_len, HEAD_DIM, ms, flops / (ms * 1e-3) / 1e12))
    del fns, qkv
    torch.cuda.empty_cache()
    return rows


# -- reporting -----------------------------------------------------------------------------------------


def ratio(rows: list[Row], row: Row, other: str) -> str:
    match = [r for r in rows if (r.variant, r.S, r.impl) == (row.variant, row.S, other)]
    return f"{row.tflops / match[0].tflops:.2f}x" if match and row.impl == "attnc" else ""


def print_table(rows: list[Row], checks: list[dict], notes: list[str]) -> None:
    header = (f"{'variant':<9} {'S':>6} {'B':>3} {'H':>3} {'impl':<6} {'ms':>9} {'TFLOP/s':>8} "
              f"{'attnc/flex':>10} {'attnc/sdpa':>10}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r.variant:<9} {r.S:>6} {r.B:>3} {r.H:>3} {r.impl:<6} {r.ms:>9.3f} {r.tflops:>8.1f} "
              f"{ratio(rows, r, 'flex'):>10} {ratio(rows, r, 'sdpa'):>10}")
    for c in checks:
        print(f"check: {c['variant']} S={c['S']}: max |attnc - {c['against']}| = {c['max_abs_diff']:.3e}")
    for note in notes:
        print(f"note: {note}")


def gpu_slug() -> str:
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-")


def write_results(rows: list[Row], checks: list[dict], notes: list[str], out_dir: pathlib.Path) -> pathlib.Path:
    import triton

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{datetime.date.today().isoformat()}-{gpu_slug()}.json"
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
              "rows": [r.as_json() for r in rows], "checks": checks, "notes": notes}
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="S = 4096 only, shorter timing")
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "benchmarks" / "results",
                        help="directory for the JSON results")
    parser.add_argument("--no-save", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_forward: needs a CUDA GPU (torch.cuda.is_available() is False); nothing measured.",
              file=sys.stderr)
        return 2
    rows, checks, notes = [], [], []
    for variant in VARIANTS:
        for seq_len in (4096,) if args.quick else (4096, 8192, 16384):
            rows += run_case(variant, seq_len, torch.device("cuda"), args.quick, notes, checks)
    print_table(rows, checks, notes)
    if not args.no_save:
        print(f"wrote {write_results(rows, checks, notes, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
