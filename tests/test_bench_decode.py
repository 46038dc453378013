"""benchmarks/bench_decode.py --smoke runs every row's code path on the CPU, with attnc's output equal to
torch's flex_attention and SDPA on each."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_run_covers_every_variant_and_cache_layout(tmp_path: Path) -> None:
    out = tmp_path / "decode.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_decode.py"), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads(out.read_text())["rows"]
    assert {(r["variant"], r["paged"], r["sq"]) for r in rows} == {
        (v, p, s) for v in ("causal", "sliding_window", "alibi", "document") for p in (False, True) for s in (1, 4)}
    assert all(not r["notes"] and r["GB/s"]["attnc"] > 0 and "flex" in r["speedup"] for r in rows)
