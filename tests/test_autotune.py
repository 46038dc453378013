"""The autotuner without a GPU: candidates within estimated resources, pruning, a fake timer, persistence."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from attnc.runtime import autotune
from attnc.runtime.autotune import (
    KINDS,
    TuneError,
    TuneKey,
    Tuner,
    accumulator_registers,
    candidates,
    default_for,
    prune_by_resources,
    shape_bucket,
    shared_memory_estimate,
    shared_memory_limit,
)
from attnc.runtime.config import KernelConfig
from attnc.runtime.launch_backward import backward_configs
from attnc.runtime.tuning_store import TuningWarning

CONFIGS = [
    KernelConfig(block_m=128, block_n=32, num_warps=8, num_stages=3),
    KernelConfig(block_m=64, block_n=64, num_warps=4, num_stages=2),
    KernelConfig(block_m=64, block_n=32, num_warps=8, num_stages=2),
    KernelConfig(block_m=32, block_n=16, num_warps=4, num_stages=1),
]
# Deterministic fake times: the third config is fastest.
TIMES = {CONFIGS[0]: 3.0, CONFIGS[1]: 2.0, CONFIGS[2]: 0.5, CONFIGS[3]: 1.0}
KEY = TuneKey("NVIDIA H200", "kernel-abc", shape_bucket(2, 8, 1000, 1000, 128, 128))


class FakeGPU:
    """`run` records the config it was given; `timer` calls the closure once and returns that config's time."""

    def __init__(self, failing: frozenset[KernelConfig] = frozenset()) -> None:
        self.failing = failing
        self.timer_calls = 0
        self._current: KernelConfig | None = None

    def run(self, config: KernelConfig) -> None:
        if config in self.failing:
            raise RuntimeError("out of resources: shared memory")
        self._current = config

    def timer(self, fn: Callable[[], None]) -> float:
        self.timer_calls += 1
        fn()
        assert self._current is not None
        return TIMES[self._current]


def tune(tuner: Tuner, gpu: FakeGPU, key: TuneKey = KEY) -> KernelConfig:
    return tuner.tune(key, CONFIGS, gpu.run, gpu.timer)


def test_tune_picks_the_fastest(tmp_path: Path) -> None:
    gpu = FakeGPU()
    assert tune(Tuner(tmp_path), gpu) == CONFIGS[2]
    assert gpu.timer_calls == len(CONFIGS)


def test_failing_configs_are_skipped_and_reported(tmp_path: Path) -> None:
    tuner = Tuner(tmp_path)
    assert tune(tuner, FakeGPU(failing=frozenset({CONFIGS[2]}))) == CONFIGS[3]
    assert set(tuner.failures) == {CONFIGS[2]}
    assert "out of resources" in tuner.failures[CONFIGS[2]]


def test_all_failing_raises_with_reasons(tmp_path: Path) -> None:
    with pytest.raises(TuneError, match="out of resources"):
        tune(Tuner(tmp_path), FakeGPU(failing=frozenset(CONFIGS)))
    assert not (tmp_path / autotune.TUNING_FILE).exists()


def test_persisted_and_reused_by_a_fresh_tuner(tmp_path: Path) -> None:
    tune(Tuner(tmp_path), FakeGPU())
    document = json.loads((tmp_path / autotune.TUNING_FILE).read_text())
    assert document["version"] == autotune.TUNING_VERSION
    (entry,) = document["entries"].values()
    assert entry == {"config": {"block_m": 64, "block_n": 32, "num_warps": 8, "num_stages": 2, "tma": False,
                                "warp_specialize": False}, "ms": 0.5, "tried": 4}
    fresh, gpu = Tuner(tmp_path), FakeGPU()
    assert fresh.lookup(KEY) == CONFIGS[2]
    assert tune(fresh, gpu) == CONFIGS[2]
    assert gpu.timer_calls == 0


@pytest.mark.parametrize("content", ["{not json", '{"version": 1, "entries": {}}', "[1, 2]",
                                     '{"version": 2, "entries": {"k": {"config": {"block_m": "64"}}}}'])
def test_corrupt_or_foreign_file_is_ignored_and_rewritten(tmp_path: Path, content: str) -> None:
    path = tmp_path / autotune.TUNING_FILE
    path.write_text(content)
    tuner = Tuner(tmp_path)
    with pytest.warns(TuningWarning, match=f"attnc: ignoring .*{path}"):
        assert tuner.lookup(KEY) is None
    assert tune(tuner, FakeGPU()) == CONFIGS[2]
    assert json.loads(path.read_text())["version"] == autotune.TUNING_VERSION
    assert Tuner(tmp_path).lookup(KEY) == CONFIGS[2]


def test_wrongly_typed_entry_is_dropped_and_valid_ones_kept(tmp_path: Path) -> None:
    tune(Tuner(tmp_path), FakeGPU())
    path = tmp_path / autotune.TUNING_FILE
    document = json.loads(path.read_text())
    other = TuneKey("NVIDIA A100", "kernel-abc", KEY.bucket)
    config = {"block_m": True, "block_n": 32, "num_warps": 8, "num_stages": 2, "tma": False, "warp_specialize": False}
    document["entries"][other.serialize()] = {"config": config, "ms": 1.0, "tried": 1}
    path.write_text(json.dumps(document))
    tuner = Tuner(tmp_path)
    with pytest.warns(TuningWarning, match="ignoring 1 invalid entry of 2 .*config.block_m=True must be an integer"):
        assert tuner.lookup(KEY) == CONFIGS[2]
    assert tuner.lookup(other) is None


def test_gpu_model_and_bucket_do_not_collide(tmp_path: Path) -> None:
    tune(Tuner(tmp_path), FakeGPU())
    for key in (TuneKey("NVIDIA A100", KEY.kernel, KEY.bucket),
                TuneKey(KEY.gpu, KEY.kernel, shape_bucket(2, 8, 8192, 8192, 128, 128)),
                TuneKey(KEY.gpu, "kernel-other", KEY.bucket)):
        tuner, gpu = Tuner(tmp_path), FakeGPU()
        assert tuner.lookup(key) is None
        tune(tuner, gpu, key)
        assert gpu.timer_calls == len(CONFIGS)
    assert len(json.loads((tmp_path / autotune.TUNING_FILE).read_text())["entries"]) == 4


def test_two_tuners_on_one_directory_keep_each_others_entries(tmp_path: Path) -> None:
    first, second = Tuner(tmp_path), Tuner(tmp_path)
    other = TuneKey("NVIDIA A100", KEY.kernel, KEY.bucket)
    first.lookup(KEY)  # both load the empty file before either saves
    second.lookup(other)
    tune(first, FakeGPU())
    tune(second, FakeGPU(), other)
    fresh = Tuner(tmp_path)
    assert fresh.lookup(KEY) == fresh.lookup(other) == CONFIGS[2]


def test_shape_bucket_rounds_lengths_and_batch_heads() -> None:
    bucket = shape_bucket(3, 5, 1000, 20, 96, 64)
    assert (bucket.batch_heads, bucket.q_len, bucket.kv_len, bucket.head_dim, bucket.head_dim_v) == (16, 1024, 128,
                                                                                                    96, 64)
    assert shape_bucket(1, 1, 1, 1, 64, 64) == shape_bucket(1, 1, 128, 100, 64, 64)
    assert shape_bucket(64, 64, 4096, 4096, 64, 64) == shape_bucket(32, 32, 4096, 4096, 64, 64)
    assert shape_bucket(1, 4, 4096, 4096, 64, 64) != shape_bucket(1, 5, 4096, 4096, 64, 64)


@pytest.mark.parametrize("arch", ["sm_80", "sm_89", "sm_90", "sm_75"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_candidates_fit_the_estimates(arch: str, kind: str, head_dim: int) -> None:
    found = candidates(kind, head_dim, head_dim, 2, arch)
    assert found
    for config in found:
        assert shared_memory_estimate(kind, config, head_dim, head_dim, 2) <= shared_memory_limit(arch)
        assert accumulator_registers(kind, config, head_dim, head_dim) <= autotune.ACCUMULATOR_REGISTER_LIMIT
        assert 16 <= config.block_m <= 128 and 16 <= config.block_n <= 128
        assert config.num_warps in (4, 8) and 1 <= config.num_stages <= 4
        assert not config.tma and not config.warp_specialize  # the Hopper options come in a second round


def test_smaller_shared_memory_prunes_more() -> None:
    hopper = candidates("forward", 256, 256, 2, "sm_90")
    ada = candidates("forward", 256, 256, 2, "sm_89")
    assert set(ada) < set(hopper)
    # Q [128, 256] plus four stages of K and V [128, 256] each, in halves: 576 KiB.
    wide = KernelConfig(block_m=128, block_n=128, num_warps=8, num_stages=4)
    assert shared_memory_estimate("forward", wide, 256, 256, 2) == (128 * 256 + 4 * 128 * 512) * 2
    assert wide not in hopper


def test_prune_by_resources_drops_spilling_configs() -> None:
    report = {CONFIGS[0]: {"registers": 255, "spills": 96}, CONFIGS[1]: {"registers": 168, "spills": 0},
              CONFIGS[2]: {"registers": 255, "spills": 4}}
    assert prune_by_resources(CONFIGS, report) == [CONFIGS[1], CONFIGS[3]]


@pytest.mark.parametrize("head_dim, head_dim_v", [(32, 32), (64, 64), (80, 80), (128, 128), (128, 256), (256, 256)])
def test_sm90_defaults_are_todays_configs(head_dim: int, head_dim_v: int) -> None:
    backward = backward_configs(head_dim, head_dim_v, interpret=False)
    assert default_for("backward_dkdv", "sm_90", head_dim, head_dim_v) == backward.dkdv
    assert default_for("backward_dq", "sm_90", head_dim, head_dim_v) == backward.dq


@pytest.mark.parametrize("arch", ["sm_80", "sm_89", "sm_90", "sm_120"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_defaults_fit_their_architecture(arch: str, kind: str, head_dim: int) -> None:
    config = default_for(kind, arch, head_dim, head_dim)
    assert shared_memory_estimate(kind, config, head_dim, head_dim, 2) <= shared_memory_limit(arch)
    assert accumulator_registers(kind, config, head_dim, head_dim) <= autotune.ACCUMULATOR_REGISTER_LIMIT


def test_unknown_kind_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown kernel kind"):
        default_for("sideways", "sm_90", 64, 64)
    with pytest.raises(ValueError, match="unknown kernel kind"):
        candidates("sideways", 64, 64, 2, "sm_90")


def test_file_in_a_directory_others_may_write_is_not_trusted(tmp_path: Path) -> None:
    tune(Tuner(tmp_path), FakeGPU())
    tmp_path.chmod(0o777)
    try:
        with pytest.warns(TuningWarning, match=f"its directory {tmp_path} is owned by another user or writable"):
            assert Tuner(tmp_path).lookup(KEY) is None
    finally:
        tmp_path.chmod(0o700)
    assert Tuner(tmp_path).lookup(KEY) == CONFIGS[2]
