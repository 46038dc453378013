"""Decoding and chunked prefill over a KV cache: attnc against torch's FlexAttention decoding path and SDPA.

    python benchmarks/bench_decode.py                       # H200-sized rows, bf16, D 128
    python benchmarks/bench_decode.py --quick               # fewer rows
    python benchmarks/bench_decode.py --smoke               # no GPU: tiny sizes on the CPU, every code path

Rows: Sq 1 and 4 (decode, speculative verification) and 128 (chunked prefill); B x cache length from 1 x 128K
to 64 x 4K; GQA 32/8 and 64/8; contiguous and paged (pages of 64) caches; variants causal, sliding window
(the last 4096 keys), ALiBi and document (the cache split into documents of 1/8 of it, the queries in the
last). Implementations: `attnc` (attnc.kvcache_attention, backend "triton": split-KV decoding with GQA packing
for Sq 1 and 4, the ordinary forward over a gathered cache for Sq 128); `flex` (torch's flex_attention
under torch.compile with a block mask built for the query's positions: its decoding path for short queries);
`sdpa` (F.scaled_dot_product_attention with a boolean mask, where the mask fits in memory). Every cache
length in a row is the full S (cache_seqlens = S).

The figure of merit is the achieved bandwidth over the keys and values a row must read: for each sequence and
kv head, the cache positions its mask allows (e.g. only the window), in the cache's dtype, divided by the time.
Each row also prints the bandwidth of a device copy of the same number of bytes (the memory system's pace, in
the same run) and attnc's speed against each peer. attnc's output is compared with each peer's first; a
relative error above 2e-2 (bf16) is a MISMATCH note and exit status 1. --smoke runs float32, tiny shapes,
attnc in the Triton interpreter and timings from time.perf_counter: it proves the code paths, not speed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import flex_attention as torch_flex

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import attnc  # noqa: E402  (after the path: the checkout's attnc)


@dataclasses.dataclass(frozen=True)
class Row:
    variant: str
    batch: int
    cache: int
    sq: int
    heads: tuple[int, int]
    paged: bool


def rows(args: argparse.Namespace) -> list[Row]:
    if args.smoke:
        return [Row(v, 2, 96, sq, (4, 2), paged) for v in ("causal", "sliding_window", "alibi", "document")
                for sq in (1, 4) for paged in (False, True)]
    shapes = [(1, 131072), (8, 32768), (64, 4096)] if not args.quick else [(8, 32768)]
    found = []
    for variant in ("causal", "sliding_window", "alibi", "document"):
        for (batch, cache), sq, heads, paged in zip_rows(shapes, args.quick):
            found.append(Row(variant, batch, cache, sq, heads, paged))
    return found


def zip_rows(shapes: list[tuple[int, int]], quick: bool) -> list[tuple[tuple[int, int], int, tuple[int, int], bool]]:
    queries = (1, 4) if quick else (1, 4, 128)
    heads = ((32, 8),) if quick else ((32, 8), (64, 8))
    return [(shape, sq, h, paged) for shape in shapes for sq in queries for h in heads for paged in (False, True)]


def variant(name: str, cache: int, heads: int, device: torch.device) -> tuple[Callable | None, Callable | None]:
    """(mask_mod, score_mod) in absolute positions."""
    window = 4096 if cache > 4096 else cache // 4
    if name == "causal":
        return (lambda b, h, q, kv: q >= kv), None
    if name == "sliding_window":
        return (lambda b, h, q, kv: (q >= kv) & (q - kv < window)), None
    if name == "alibi":
        slopes = torch.exp2(-8.0 * torch.arange(1, heads + 1, device=device) / heads)
        return (lambda b, h, q, kv: q >= kv), (lambda s, b, h, q, kv: s + slopes[h] * (kv - q))
    doc = (torch.arange(cache, device=device) * 8 // cache).int()
    return (lambda b, h, q, kv: (doc[q] == doc[kv]) & (q >= kv)), None


def allowed_keys(row: Row, mask_mod: Callable, device: torch.device) -> int:
    """Cache positions some query of the row may read, per sequence and kv head."""
    q = torch.arange(row.cache - row.sq, row.cache, device=device).view(-1, 1)
    kv = torch.arange(row.cache, device=device).view(1, -1)
    zero = torch.zeros(1, 1, dtype=torch.int64, device=device)
    return int(mask_mod(zero, zero, q, kv).any(0).sum())


def timed(fn: Callable[[], object], smoke: bool) -> float:
    if smoke:
        fn()
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=100)


def measure(row: Row, args: argparse.Namespace, device: torch.device) -> dict[str, object]:
    dtype = torch.float32 if args.smoke else torch.bfloat16
    D = 16 if args.smoke else 128
    Hq, Hkv = row.heads
    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(row.batch, row.sq, Hq, D, device=device, dtype=dtype, generator=g)
    k, v = (torch.randn(row.batch, row.cache, Hkv, D, device=device, dtype=dtype, generator=g) for _ in range(2))
    lengths = torch.full((row.batch,), row.cache, dtype=torch.int32, device=device)
    mask_mod, score_mod = variant(row.variant, row.cache, Hq, device)
    backend = "triton"
    if row.paged:
        page = 16 if args.smoke else 64
        pool_k, pool_v = (t.reshape(-1, page, Hkv, D) for t in (k, v))
        order = torch.randperm(pool_k.shape[0], device=device, generator=g)
        pool_k, pool_v = pool_k[order], pool_v[order]
        table = torch.argsort(order).view(row.batch, -1).to(torch.int32)

        def run_attnc() -> torch.Tensor:
            return attnc.kvcache_attention(q, pool_k, pool_v, lengths, block_table=table, mask_mod=mask_mod,
                                           score_mod=score_mod, backend=backend)
    else:
        def run_attnc() -> torch.Tensor:
            return attnc.kvcache_attention(q, k, v, lengths, mask_mod=mask_mod, score_mod=score_mod, backend=backend)

    offset = row.cache - row.sq

    def shifted_mask(b, h, qi, kv):
        return mask_mod(b, h, qi + offset, kv)

    shifted_score = None if score_mod is None else (lambda s, b, h, qi, kv: score_mod(s, b, h, qi + offset, kv))
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    flex = torch_flex.flex_attention
    flex_fn = flex if args.smoke else torch.compile(flex, dynamic=False)
    block_mask = torch_flex.create_block_mask(shifted_mask, None, None, row.sq, row.cache,
                                                                     device=device)

    def run_flex() -> torch.Tensor:
        return flex_fn(qt, kt, vt, score_mod=shifted_score, block_mask=block_mask, enable_gqa=True).transpose(1, 2)

    dense = shifted_mask(None, None, torch.arange(row.sq, device=device).view(-1, 1),
                         torch.arange(row.cache, device=device).view(1, -1))
    peers = {"flex": run_flex}
    if score_mod is None and dense.numel() * row.batch * Hq < 2**31:
        peers["sdpa"] = lambda: F.scaled_dot_product_attention(qt, kt, vt, attn_mask=dense,
                                                               enable_gqa=True).transpose(1, 2)
    result: dict[str, object] = {**dataclasses.asdict(row), "notes": []}
    reference = run_attnc().float()
    for name, fn in peers.items():
        other = fn().float()
        error = ((reference - other).norm() / other.norm().clamp_min(1e-12)).item()
        if error > (1e-3 if args.smoke else 2e-2):
            result["notes"].append(f"MISMATCH against {name}: relative error {error:.2e}")
    bytes_read = row.batch * Hkv * allowed_keys(row, mask_mod, device) * 2 * D * q.element_size()
    times = {"attnc": timed(run_attnc, args.smoke), **{n: timed(fn, args.smoke) for n, fn in peers.items()}}
    copy_src = torch.empty(bytes_read // 2 + 1, dtype=torch.int16, device=device)
    copy_dst = torch.empty_like(copy_src)
    times["copy"] = timed(lambda: copy_dst.copy_(copy_src), args.smoke)
    result["ms"] = times
    result["GB/s"] = {n: bytes_read / (t * 1e-3) / 1e9 for n, t in times.items()}
    result["speedup"] = {n: times[n] / times["attnc"] for n in peers}
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="no GPU: tiny sizes on the CPU, every code path")
    parser.add_argument("--quick", action="store_true", help="fewer rows")
    parser.add_argument("--out", default="", help="write the rows as JSON here")
    args = parser.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        print("bench_decode: no CUDA GPU; run with --smoke to exercise the code paths on the CPU")
        return 2
    device = torch.device("cpu" if args.smoke else "cuda")
    results, failed = [], False
    print(f"{'variant':>15} {'B':>3} {'cache':>7} {'Sq':>4} {'heads':>6} {'paged':>5} "
          f"{'attnc GB/s':>11} {'copy GB/s':>10} {'vs flex':>8} {'vs sdpa':>8}")
    for row in rows(args):
        r = measure(row, args, device)
        results.append(r)
        speed = r["speedup"]
        heads = f"{row.heads[0]}/{row.heads[1]}"
        print(f"{row.variant:>15} {row.batch:>3} {row.cache:>7} {row.sq:>4} {heads:>6} "
              f"{row.paged!s:>5} {r['GB/s']['attnc']:>11.1f} {r['GB/s']['copy']:>10.1f} "
              f"{speed.get('flex', math.nan):>8.2f} {speed.get('sdpa', math.nan):>8.2f}"
              + "".join(f"  {n}" for n in r["notes"]))
        failed |= bool(r["notes"])
    if args.out:
        meta = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                "torch": torch.__version__, "smoke": args.smoke}
        pathlib.Path(args.out).write_text(json.dumps({"meta": meta, "rows": results}, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
