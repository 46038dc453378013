"""Tuning a variant on its real inputs (Triton interpreter, fake timer), the Hopper options' second round,
and the launch's lookup of a tuned config."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import attnc
from attnc.runtime import autotune, tuning
from attnc.runtime.aot import AOTError
from attnc.runtime.autotune import TuneKey, Tuner, hopper_options, select, shape_bucket
from attnc.runtime.config import INTERPRETER_TILES, KernelConfig
from attnc.runtime.launch import Shapes
from attnc.runtime.tuning_store import TuningWarning

SMALL = KernelConfig(block_m=32, block_n=32, num_warps=4, num_stages=1)
LARGE = KernelConfig(block_m=64, block_n=64, num_warps=4, num_stages=1)


class CountingTimer:
    """Runs the closure (so the kernel really executes) and reports ever faster times: the last config
    timed wins, which makes the choice predictable."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, fn: Callable[[], None]) -> float:
        fn()
        self.calls += 1
        return 100.0 - self.calls


def test_hopper_options_only_on_hopper() -> None:
    assert hopper_options([SMALL], "sm_80") == []
    with_options = hopper_options([SMALL, LARGE], "sm_90")
    assert {(c.tma, c.warp_specialize) for c in with_options} == {(True, False), (False, True), (True, True)}
    assert len(with_options) == 6
    assert {(c.tma, c.warp_specialize) for c in hopper_options([SMALL], "sm_90", "backward_dq")} == {(True, False)}


def test_second_round_tries_the_hopper_options_on_the_fastest(tmp_path: Path) -> None:
    times = {SMALL: 2.0, LARGE: 1.0, dataclasses.replace(LARGE, tma=True): 0.5}
    current: list[KernelConfig] = []
    seen: list[tuple[KernelConfig, float | None]] = []

    def timer(fn: Callable[[], None]) -> float:
        fn()
        return times.get(current[-1], 3.0)

    key = TuneKey("NVIDIA H200", "k", shape_bucket(1, 1, 256, 256, 64, 64))
    best = Tuner(tmp_path).tune(key, [SMALL, LARGE], current.append, timer,
                                refine=lambda fastest: hopper_options(fastest[:1], "sm_90"),
                                progress=lambda config, ms: seen.append((config, ms)))
    assert best == dataclasses.replace(LARGE, tma=True)
    assert [config for config, _ in seen][:2] == [SMALL, LARGE]
    assert len(seen) == 2 + 3  # LARGE, the fastest of the first round, with each Hopper option
    assert Tuner(tmp_path).lookup(key) == best


def test_hopper_flags_must_be_booleans_in_the_file(tmp_path: Path) -> None:
    key = TuneKey("NVIDIA H200", "k", shape_bucket(1, 1, 256, 256, 64, 64))
    Tuner(tmp_path).tune(key, [SMALL], lambda c: None, lambda fn: 1.0)
    path = tmp_path / autotune.TUNING_FILE
    document = json.loads(path.read_text())
    (entry,) = document["entries"].values()
    entry["config"]["tma"] = 1
    path.write_text(json.dumps(document))
    with pytest.warns(TuningWarning, match="config.tma=1 must be True or False"):
        assert Tuner(tmp_path).lookup(key) is None


def test_select_prefers_the_tuned_entry_then_the_architecture_default(tmp_path: Path) -> None:
    tuner = Tuner(tmp_path)
    dims = {"B": 4, "H": 16, "Q_LEN": 4096, "KV_LEN": 4096, "D": 128, "Dv": 128}
    default = autotune.default_for("forward", "sm_90", 128, 128)
    assert select(tuner, "forward", gpu="NVIDIA H200", arch="sm_90", kernel="abc", **dims) == default
    tuned = dataclasses.replace(LARGE, tma=True)
    key = autotune.tune_key("forward", gpu="NVIDIA H200", kernel="abc", **dims)
    tuner.tune(key, [tuned], lambda c: None, lambda fn: 1.0)
    fresh = Tuner(tmp_path)  # another process: reads the file, never benchmarks
    assert select(fresh, "forward", gpu="NVIDIA H200", arch="sm_90", kernel="abc", **dims) == tuned
    # the same bucket (lengths round up) finds it; another GPU, kernel or kind does not
    assert select(fresh, "forward", gpu="NVIDIA H200", arch="sm_90", kernel="abc", **{**dims, "Q_LEN": 3000}) == tuned
    assert select(fresh, "forward", gpu="NVIDIA H100", arch="sm_90", kernel="abc", **dims) == default
    assert select(fresh, "forward", gpu="NVIDIA H200", arch="sm_90", kernel="xyz", **dims) == default
    assert select(fresh, "backward_dq", gpu="NVIDIA H200", arch="sm_90", kernel="abc", **dims) == \
        autotune.default_for("backward_dq", "sm_90", 128, 128)


def test_interpreter_launches_keep_their_tiles() -> None:
    shapes = Shapes(1, 1, 1, 256, 256, 64, 64)
    assert tuning.launch_config("forward", shapes, "src", torch.float32, torch.device("cpu")) == INTERPRETER_TILES


def test_tuning_needs_a_gpu_or_a_timer() -> None:
    attn = attnc.compile(lambda b, h, q, kv: q >= kv)
    q = torch.randn(1, 1, 64, 16)
    with pytest.raises(RuntimeError, match="CUDA GPU"):
        attn.tune(q, q, q)


def test_tune_runs_the_variants_kernels_on_its_real_sparsity(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(tuning, "shared_tuner", lambda: Tuner(tmp_path))
    docs = torch.tensor([0] * 70 + [1] * 60 + [2] * 70)
    attn = attnc.compile(lambda b, h, q, kv: (docs[q] == docs[kv]) & (q >= kv))
    calls: list[object] = []
    original = attn.planner.data_plan

    def recording_plan(*args):
        plan = original(*args)
        calls.append(plan)
        return plan

    monkeypatch.setattr(attn.planner, "data_plan", recording_plan)
    q, k, v = (torch.randn(1, 2, 200, 16) for _ in range(3))
    timer = CountingTimer()
    progress: list[tuple[str, KernelConfig, float | None]] = []
    chosen = attn.tune(q, k, v, backward=True, timer=timer, configs=[SMALL, LARGE],
                       progress=lambda kind, config, ms: progress.append((kind, config, ms)))
    # the document mask reads data: tuning ran on the block map attnc builds for it, not a dense one
    assert calls and calls[0] is not None
    assert calls[0].kv_num_blocks.sum() < calls[0].kv_num_blocks.numel() * calls[0].kv_num_blocks.shape[-1]
    # each kernel: two tiles, then the Hopper options on the fastest (sm_90 in the interpreter)
    kinds = [kind for kind, _, _ in progress]
    assert kinds.count("forward") == kinds.count("backward_dkdv") == 2 + 2 * 3
    assert kinds.count("backward_dq") == 2 + 2 * 1
    assert all(ms is not None for _, _, ms in progress)
    assert set(chosen) == {"forward", "backward_dkdv", "backward_dq"}
    assert chosen["forward"].tma and chosen["forward"].warp_specialize  # the last one timed won
    document = json.loads((tmp_path / autotune.TUNING_FILE).read_text())
    assert len(document["entries"]) == 3
    # a second tune reads the file and runs nothing
    again = CountingTimer()
    assert attn.tune(q, k, v, backward=True, timer=again, configs=[SMALL, LARGE]) == chosen
    assert again.calls == 0


def test_warp_specialization_is_offered_only_where_it_takes_effect() -> None:
    """A warp-specialized option the compile check rejects is dropped; TMA-only options stay."""
    options = hopper_options([SMALL], "sm_90", "forward", specializes=lambda config: False)
    assert {(c.tma, c.warp_specialize) for c in options} == {(True, False)}
    checked: list[KernelConfig] = []
    options = hopper_options([SMALL], "sm_90", "forward", specializes=lambda c: checked.append(c) or True)
    assert {(c.tma, c.warp_specialize) for c in options} == {(True, False), (False, True), (True, True)}
    assert all(c.warp_specialize for c in checked) and len(checked) == 2


def test_warp_specializes_reads_the_compile() -> None:
    """The ahead-of-time check answers from Triton itself: False where the compile fails (Triton 3.9's pass
    fails on this loop at 64 x 64), else whether the loop was split into warp partitions."""
    attn = attnc.compile(lambda b, h, q, kv: q >= kv)
    config = KernelConfig(64, 64, 4, 2, tma=True, warp_specialize=True)
    try:
        report = tuning.aot_report(attn, "forward", [config], arch="sm_90", dtype=torch.bfloat16, D=64, Dv=64)
        expected = bool(report[config]["warp_specialized"])
    except AOTError:
        expected = False
    assert tuning.warp_specializes(attn, "forward", config, arch="sm_90", dtype=torch.bfloat16, D=64,
                                   Dv=64) is expected


def test_each_loop_gets_its_own_spill_free_default(monkeypatch) -> None:
    """A launch's untuned config need only be spill-free in the loop it runs: here the BlockMask loop spills at
    the first rung (as a softcap's dK/dV does at 64 query rows) and the closed-form loops do not."""
    attn = attnc.compile(attnc.variants.causal(), attnc.variants.softcap(20))
    ladder = autotune.default_ladder("backward_dkdv", "sm_90", 128, 128)
    compiled: list[KernelConfig] = []

    def reports(attn_, kind, config, arch, dtype, D, Dv):
        compiled.append(config)
        spills = 96 if config == ladder[0] else 0
        return [{"spills": 0, "shared_memory": 1024}, {"spills": spills, "shared_memory": 1024}]

    monkeypatch.setattr(tuning, "_both_loops", reports)
    monkeypatch.setattr(tuning, "_SPILL_FREE", {})
    monkeypatch.setattr(tuning, "_LOOP_REPORTS", {})
    pick = {mask: tuning.spill_free_default(attn, "backward_dkdv", arch="sm_90", dtype=torch.bfloat16, D=128,
                                            Dv=128, block_mask=mask) for mask in (False, True, None)}
    assert pick == {False: ladder[0], True: ladder[1], None: ladder[1]}
    assert len(compiled) == 2  # each rung compiled once, whichever loops asked
