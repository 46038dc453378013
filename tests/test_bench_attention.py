"""benchmarks/bench_attention.py: its --smoke run exercises every code path on the CPU, and its FLOP counts
count exactly the pairs each mask allows."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_attention", ROOT / "benchmarks" / "bench_attention.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


bench = load_bench()
SDPA_VARIANTS = [name for name in bench.VARIANTS if name != "softcap"]  # SDPA cannot express a softcap


def table_rows(text: str) -> set[tuple[str, str, str]]:
    """(variant, pass, impl) of each row the table printed."""
    rows = set()
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] in bench.VARIANTS:
            rows.add((fields[0], fields[1], fields[6]))
    return rows


@pytest.mark.parametrize("pass_name", ["fwd", "fwd+bwd"])
def test_smoke_run_measures_every_variant(pass_name, tmp_path, capsys):
    assert bench.main(["--smoke", "--pass", pass_name, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "MISMATCH" not in out
    expected = {(variant, pass_name, "attnc") for variant in bench.VARIANTS}
    expected |= {(variant, pass_name, "sdpa") for variant in SDPA_VARIANTS}
    assert expected <= table_rows(out)
    (results,) = tmp_path.iterdir()
    report = json.loads(results.read_text())
    assert {(r["variant"], r["pass"], r["impl"]) for r in report["rows"]} == table_rows(out)
    # flex has no CPU backward, so only SDPA is certain to check every tensor of both passes.
    checked = {(c["variant"], c["tensor"], c["against"]) for c in report["checks"]}
    tensors = bench.TENSORS[pass_name]
    assert {(variant, tensor, "sdpa") for variant in SDPA_VARIANTS for tensor in tensors} <= checked
    assert all(c["rel_err"] < 1e-5 for c in report["checks"])  # float32 on both sides


def test_smoke_writes_nothing_unless_told(capsys):
    before = sorted((ROOT / "benchmarks" / "results").iterdir())
    assert bench.main(["--smoke", "--variant", "causal"]) == 0
    assert sorted((ROOT / "benchmarks" / "results").iterdir()) == before
    assert "wrote" not in capsys.readouterr().out


@pytest.mark.parametrize("seq_len", [128, 300, 1000])
@pytest.mark.parametrize("variant", list(bench.VARIANTS))
def test_allowed_pairs_match_the_dense_mask(variant, seq_len):
    settings = bench.Settings(torch.device("cpu"), torch.float32, heads=2, tokens=2 * seq_len, window=100,
                              pass_name="fwd")
    spec = bench.VARIANTS[variant](seq_len, settings)
    assert spec.allowed_pairs == int(bench.dense_mask(spec.mask_mod, seq_len, settings.device).sum())


def test_alibi_bias_matches_the_score_mod():
    settings = bench.Settings(torch.device("cpu"), torch.float32, heads=4, tokens=4 * 64, window=16,
                              pass_name="fwd")
    spec = bench.VARIANTS["alibi"](64, settings)
    bias = spec.sdpa_kwargs()["attn_mask"]
    pos = torch.arange(64)
    for h in range(4):
        scores = spec.score_mod(torch.zeros(64, 64), 0, h, pos[:, None], pos[None, :])
        expected = scores.masked_fill(~bench.dense_mask(spec.mask_mod, 64, settings.device), float("-inf"))
        torch.testing.assert_close(bias[0, h], expected)


def test_without_a_gpu_it_says_so_and_exits_2(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert bench.main(["--quick"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_results_merge_replaces_only_the_cases_measured_again():
    def row(variant, impl, ms):
        return bench.Row(variant, impl, "fwd", 8, 16, 4096, 128, "bfloat16", ms, 1.0)

    old = {"rows": [row("causal", "attnc", 1.0).as_json(), row("document", "attnc", 2.0).as_json()],
           "checks": [], "notes": ["causal S=4096 D=128 fwd: flex failed: OutOfMemoryError: ...",
                                   "document S=4096 D=128 fwd: sdpa skipped: ..."]}
    new = bench.merged(old, [row("causal", "attnc", 0.5), row("causal", "sdpa", 0.7)], [], [])
    assert [(r["variant"], r["impl"], r["ms"]) for r in new["rows"]] == [
        ("document", "attnc", 2.0), ("causal", "attnc", 0.5), ("causal", "sdpa", 0.7)]
    assert new["notes"] == ["document S=4096 D=128 fwd: sdpa skipped: ..."]
