"""The static performance report (attnc.perf): the yardstick computes dense attention (Triton interpreter
against torch) and compiles lean for sm_90; attnc's default kernels of the benchmark set compile for sm_90
without spills or serialized wgmma; the report, `attnc inspect` and benchmarks/bench_static.py have their
structure. Compiles run ahead of time in a child process: no GPU needed."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import pickle
import sys
from pathlib import Path

import pytest
import torch

import attnc
import attnc.variants as V
from attnc.cli import main
from attnc.perf import inspection, report, yardstick
from attnc.perf.launches import Shape
from attnc.runtime.interpreter import interpreter_active

ROOT = Path(__file__).resolve().parents[1]
SHAPE = Shape(head_dim=128)  # the benchmark's: B=2, H=16, S=4096, bf16
VARIANTS = ("causal", "softcap")
KERNELS = ("forward", "forward_block_mask", "backward_dkdv", "backward_dq", "backward_dkdv_block_mask",
           "backward_dq_block_mask")


def load_bench_static():
    spec = importlib.util.spec_from_file_location("bench_static", ROOT / "benchmarks" / "bench_static.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench_static = load_bench_static()


# -- the yardstick is correct --------------------------------------------------------------------------------


def dense_attention(q, k, v, scale):
    scores = (q @ k.transpose(-1, -2)) * scale
    return torch.softmax(scores, -1) @ v, torch.logsumexp(scores, -1)


@pytest.mark.skipif(not interpreter_active(), reason="runs the yardstick in the Triton interpreter")
@pytest.mark.parametrize("use_tma", [False, True], ids=["pointers", "descriptors"])
def test_yardstick_matches_dense_attention_forward_and_backward(use_tma):
    g = torch.Generator().manual_seed(0)
    # Q_LEN != KV_LEN and D != Dv, so a swapped length or head dim shows
    q = torch.randn(2, 2, 64, 16, generator=g, requires_grad=True)
    k = torch.randn(2, 2, 96, 16, generator=g, requires_grad=True)
    v = torch.randn(2, 2, 96, 32, generator=g, requires_grad=True)
    scale = 0.3
    out, lse = yardstick.forward(q, k, v, scale, tiles=(16, 32, 4, 1), use_tma=use_tma)
    ref_out, ref_lse = dense_attention(q, k, v, scale)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, ref_lse, atol=1e-5, rtol=1e-5)
    dout = torch.randn(out.shape, generator=g)
    tiles = {"backward_dkdv": (16, 32, 4, 1), "backward_dq": (32, 16, 4, 1)}
    got = yardstick.backward(q, k, v, out, lse, dout, scale, tiles=tiles, use_tma=use_tma)
    want = torch.autograd.grad(ref_out, (q, k, v), dout)
    for name, a, b in zip(("dq", "dk", "dv"), got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=name)


def test_yardstick_rejects_what_it_does_not_handle():
    q = torch.zeros(1, 1, 100, 64)
    with pytest.raises(ValueError, match="multiples of the tiles"):
        yardstick.forward(q, q, q, tiles=(64, 64, 4, 1))
    with pytest.raises(ValueError, match="positive"):
        yardstick.forward(q[:, :, :64], q[:, :, :64], q[:, :, :64], -1.0, tiles=(64, 64, 4, 1))


# -- compiled for sm_90 ------------------------------------------------------------------------------------


def _compile_benchmark_kernels(processes: int):
    yard = inspection.compile_yardstick("sm_90", SHAPE, backward=True, processes=processes)
    found = {name: inspection.inspect_attention(bench_static.variant_attention(name, SHAPE.seq_len), shape=SHAPE,
                                                backward=True, yardstick=yard, processes=processes)
             for name in VARIANTS}
    return yard, found


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """The yardstick and the causal and softcap variants of the benchmark, D = 128, forward and backward.
    About 15 compiles: under pytest-xdist the first worker to ask compiles them (one at a time, the other
    worker has tests to run) and leaves them in the session's shared temporary directory for the other."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return _compile_benchmark_kernels(processes=2)
    from filelock import FileLock  # a dependency of torch

    shared = tmp_path_factory.getbasetemp().parent / "attnc-perf-report.pickle"
    with FileLock(f"{shared}.lock"):
        if shared.is_file():
            return pickle.loads(shared.read_bytes())
        found = _compile_benchmark_kernels(processes=1)
        shared.write_bytes(pickle.dumps(found))
        return found


def test_yardstick_compiles_lean_for_sm90(compiled):
    """Its configs (recorded in every report) compile with no spills, wgmma fed by TMA, no ptxas performance
    warning, and one pipelined hot loop doing exactly one tile's matmuls per iteration."""
    yard, _ = compiled
    assert [k.name for k in yard] == ["forward", "backward_dkdv", "backward_dq"]
    for kernel in yard:
        assert kernel.config is not None
        tiles = (kernel.config.block_m, kernel.config.block_n, kernel.config.num_warps, kernel.config.num_stages)
        assert tiles == yardstick.sm90_tiles(kernel.kind, 128, 128) and kernel.config.tma
        assert kernel.spills == 0 and kernel.matmul == "wgmma" and kernel.tma_sass, kernel.name
        assert kernel.ptxas_warnings == [], kernel.ptxas_warnings
        (hot,) = kernel.hot_loops
        assert hot.pipelining.pipelined, (kernel.name, hot.pipelining)
        assert hot.mma_work == pytest.approx(1.0), kernel.name


def test_report_structure(compiled):
    _, found = compiled
    for name, result in found.items():
        assert [k.name for k in result.kernels] == list(KERNELS)
        assert [c.kernel for c in result.comparisons] == list(KERNELS)
        for kernel in result.kernels:
            config = kernel.config
            assert config is not None and kernel.registers > 0 and kernel.specialized
            assert kernel.matmul in ("wgmma", "mma.sync", "wgmma + mma.sync"), (name, kernel.name)
            assert kernel.hot_loops, (name, kernel.name)
            for loop in kernel.loops:
                assert sum(loop.census.values()) == loop.size
                expected = loop.size * config.num_warps / (config.block_m * config.block_n)
                assert loop.per_element["issue"] == pytest.approx(expected)
                assert loop.shortest_path <= loop.size and loop.longest_path <= loop.size
            comparison = result.comparison(kernel.name)
            assert comparison.headline_max is not None and comparison.headline_max > 0
            assert len(comparison.loops) == len(kernel.hot_loops)
            shares = result.tile_stats[kernel.name]["shares"]
            assert shares is not None and math.isclose(shares["partial"] + shares["full"], 1.0)
        json.dumps(result.as_json())  # every figure is plain data
        text = inspection.format_inspection(result, name)
        assert "yardstick" in text and "headline" in text and inspection.FORMULA in text


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_default_kernels_have_no_spills_or_serialized_wgmma(compiled, variant, kernel):
    """What the benchmark launches with the default configs: no spilled registers, and no wgmma that ptxas
    had to serialize (C7515: the tensor cores wait for each matmul before the next starts)."""
    _, found = compiled
    report_ = found[variant].kernel(kernel)
    assert report_.spills == 0, (variant, kernel, report_.config, report_.spills)
    assert "C7515" not in report_.warning_codes, report_.ptxas_warnings


def test_weights_follow_the_tile_classes():
    """Two hot loops: the larger body (it evaluates the mask) takes the partial tiles' share."""
    def loop(size: int) -> report.LoopReport:
        return report.LoopReport(start=0, end=0, size=size, out_of_line=0, shortest_path=size, longest_path=size,
                                 innermost=True, hot=True, census={}, per_element={}, per_element_paths=(0.0, 0.0),
                                 mma_work=None, wgmma_waits=0, pipelining=None)

    weights, how = report._weights([loop(300), loop(250)], {"partial": 0.1, "full": 0.9})
    assert weights == [0.1, 0.9] and "tile_stats" in how
    assert report._weights([loop(300)], None)[0] == [1.0]
    assert report._weights([loop(1), loop(2), loop(3)], {"partial": 0.5, "full": 0.5})[0] == [None] * 3


# -- the command line and the benchmark script -------------------------------------------------------------


def test_cli_inspect_json(capsys):
    assert main(["inspect", "causal", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["variant"] == "causal()" and found["arch"] == "sm_90"
    assert found["shape"] == {"B": 2, "H": 16, "S": 4096, "D": 128, "Dv": 128, "dtype": "bfloat16"}
    assert [k["name"] for k in found["kernels"]] == ["forward", "forward_block_mask"]
    assert [k["name"] for k in found["yardstick"]] == ["forward"]
    for comparison in found["comparisons"]:
        assert comparison["headline_max"] > 0 and comparison["loops"]


def test_cli_inspect_rejects_a_bad_shape(capsys):
    assert main(["inspect", "causal", "--shape", "2,16"]) == 2
    assert "B,H,S" in capsys.readouterr().err


def test_bench_static_prints_and_writes_every_figure(tmp_path, capsys):
    assert bench_static.main(["--variant", "causal", "--head-dim", "128", "--forward-only",
                              "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith(("causal ", "(yardstick) "))]
    assert [(r[0], r[1]) for r in rows] == [("(yardstick)", "forward"), ("causal", "forward"),
                                            ("causal", "forward_block_mask")]
    (written,) = tmp_path.iterdir()
    assert written.name.endswith("-static-sm_90.json")
    record = json.loads(written.read_text())
    assert record["yardstick"]["128"]["configs"]["forward"]["block_m"] == 128
    assert [(v["variant"], v["D"]) for v in record["variants"]] == [("causal", 128)]
    assert {r["kernel"] for r in record["rows"] if r["variant"] == "causal"} == {"forward", "forward_block_mask"}


def test_bench_static_runs_over_other_head_dims_add_up(tmp_path: Path) -> None:
    """A run over some head dims replaces those in the results file and keeps the others."""
    def record(dims: tuple[int, ...], tag: str) -> dict:
        return {"triton": "t", "arch": "sm_90", "yardstick": {str(d): tag for d in dims},
                "variants": [{"variant": "causal", "D": d, "tag": tag} for d in dims],
                "rows": [{"variant": "causal", "D": d, "tag": tag} for d in dims]}

    path = tmp_path / "results.json"
    path.write_text(json.dumps(record((64, 128), "old")))
    merged = bench_static.merged(path, record((128,), "new"))
    assert merged["yardstick"] == {"64": "old", "128": "new"}
    assert sorted((r["D"], r["tag"]) for r in merged["rows"]) == [(64, "old"), (128, "new")]
    assert sorted((v["D"], v["tag"]) for v in merged["variants"]) == [(64, "old"), (128, "new")]
    other_triton = {**record((128,), "new"), "triton": "u"}
    assert bench_static.merged(path, other_triton) == other_triton


def test_inspect_reports_the_decode_kernels_without_spills():
    """`attnc inspect --decode`: the split-KV decode kernels (contiguous and paged caches, a GQA group of 8 in
    one program, so a K/V tile is loaded once per kv head) and their combine, compiled for sm_90."""
    shape = Shape(1, 8, 1024, 128, None, torch.bfloat16)
    found = inspection.inspect_attention(attnc.compile(V.causal()), shape=shape, yardstick=[], decode=True)
    decoding = {k.name: k for k in found.kernels if k.kind in ("decode", "decode_combine")}
    assert sorted(decoding) == ["decode", "decode_combine", "decode_paged"]
    assert all(k.spills == 0 for k in decoding.values())
    assert decoding["decode"].matmul != "none" and decoding["decode"].hot_loops
    assert "decode_paged" in inspection.format_inspection(found, "causal")
