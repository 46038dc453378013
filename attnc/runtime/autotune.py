"""Choosing kernel tile configurations per GPU: candidate generation, pruning, benchmarking, persistence.

Nothing here touches a GPU. `candidates` enumerates tile shapes and drops those that cannot fit by
estimate; `prune_by_resources` drops those an ahead-of-time compile showed to spill; a `Tuner` times the
rest with a timer it is given (`gpu_timer` on a GPU: the median of `triton.testing.do_bench`), then the
Hopper options (`hopper_options`: TMA, warp specialization) on the fastest few, and remembers the fastest
per (GPU model, kernel, shape bucket) in `tuning.json` inside the kernel cache directory, so a later process
reuses the choice without benchmarking (`select`). Without a tuned entry, `default_for` gives a
per-architecture default; on sm_90 those are exactly the tiles `default_config` and `backward_configs` use.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from attnc.runtime import tuning_store
from attnc.runtime.aot import parse_arch
from attnc.runtime.cache import content_hash
from attnc.runtime.config import KernelConfig

# the file's format lives in tuning_store; its names stay importable from here
from attnc.runtime.tuning_store import TUNING_FILE, TuneEntry, TuningWarning
from attnc.runtime.tuning_store import TUNING_VERSION as TUNING_VERSION

KINDS = ("forward", "backward_dkdv", "backward_dq")

# Shared memory one block may use, in bytes (opt-in maximum). Unknown architectures get the smallest.
SHARED_MEMORY_LIMIT = {"sm_80": 163 * 1024, "sm_86": 99 * 1024, "sm_89": 99 * 1024, "sm_90": 227 * 1024}
_SMALLEST_SHARED_MEMORY = min(SHARED_MEMORY_LIMIT.values())
# fp32 accumulator values per thread beyond which the tile would crowd out everything else in the
# 255-register budget (scores, pointers, the mods' own values) and spill.
ACCUMULATOR_REGISTER_LIMIT = 128

# The search space per kernel (block_m, block_n, num_warps, num_stages): each kernel's loop streams the
# other axis' tiles, and its accumulators live along its own axis (the forward's [BLOCK_M, Dv], dK/dV's two
# [BLOCK_N, D]), so the sizes that can pay differ.
_SPACE = {
    "forward": ((64, 128), (32, 64, 128), (4, 8), (2, 3, 4)),
    "backward_dkdv": ((16, 32, 64), (32, 64, 128), (4, 8), (1, 2, 3)),
    "backward_dq": ((32, 64, 128), (16, 32, 64), (4, 8), (1, 2, 3)),
}
# float64 elements take four times a bfloat16's shared memory and their accumulators twice a float32's registers:
# the search space is that of smaller tiles and shallower pipelines.
_FLOAT64_SPACE = {
    "forward": ((16, 32, 64), (16, 32, 64), (4, 8), (1, 2, 3)),
    "backward_dkdv": ((16, 32), (16, 32, 64), (4, 8), (1, 2)),
    "backward_dq": ((16, 32, 64), (16, 32), (4, 8), (1, 2)),
}
FLOAT64_BYTES = 8
# Architectures with TMA and warp specialization in Triton (Hopper and later).
_HOPPER_OPTIONS_FROM = 90
# How many of the fastest tile shapes get the Hopper options tried on top.
REFINE_TOP = 3


class TuneError(Exception):
    """No candidate configuration could be run."""


def shared_memory_estimate(kind: str, config: KernelConfig, head_dim: int, head_dim_v: int, dtype_bytes: int) -> int:
    """An estimate, in bytes, of the shared memory the kernel's tiles need: the tile held for the whole
    program plus `num_stages` copies of the tiles its loop streams (the software pipeline's buffers).
    Triton's real allocation also holds layout-conversion scratch, so this is a lower bound used to prune."""
    width = head_dim + head_dim_v
    stages = config.num_stages
    if kind == "forward":  # Q resident; K and V streamed
        elements = config.block_m * head_dim + stages * config.block_n * width
    elif kind == "backward_dkdv":  # K and V resident; Q and dO streamed
        elements = config.block_n * width + stages * config.block_m * width
    elif kind == "backward_dq":  # Q and dO resident; K and V streamed
        elements = config.block_m * width + stages * config.block_n * width
    else:
        raise ValueError(f"attnc: unknown kernel kind {kind!r}; expected one of {KINDS}")
    return elements * dtype_bytes


def accumulator_registers(kind: str, config: KernelConfig, head_dim: int, head_dim_v: int,
                          dtype_bytes: int = 2) -> float:
    """An estimate of the 32-bit registers each thread's accumulators take: the output tile spread over the
    block's threads (forward: [BLOCK_M, Dv]; dK/dV: [BLOCK_N, D] and [BLOCK_N, Dv]; dQ: [BLOCK_M, D]), in
    float32, or float64 (two registers a value) for float64 inputs (`dtype_bytes` 8)."""
    threads = 32 * config.num_warps
    if kind == "forward":
        values = config.block_m * head_dim_v / threads
    elif kind == "backward_dkdv":
        values = config.block_n * (head_dim + head_dim_v) / threads
    elif kind == "backward_dq":
        values = config.block_m * head_dim / threads
    else:
        raise ValueError(f"attnc: unknown kernel kind {kind!r}; expected one of {KINDS}")
    return values * (2 if dtype_bytes == FLOAT64_BYTES else 1)


def shared_memory_limit(arch: str) -> int:
    return SHARED_MEMORY_LIMIT.get(arch, _SMALLEST_SHARED_MEMORY)


def candidates(kind: str, head_dim: int, head_dim_v: int, dtype_bytes: int, arch: str) -> list[KernelConfig]:
    """Every tile shape in the kernel's search space that fits the architecture by estimate (see
    `shared_memory_estimate` and `accumulator_registers`), smallest tiles first. float64 inputs
    (`dtype_bytes` 8) search smaller tiles (`_FLOAT64_SPACE`)."""
    if kind not in _SPACE:
        raise ValueError(f"attnc: unknown kernel kind {kind!r}; expected one of {KINDS}")
    space = _FLOAT64_SPACE if dtype_bytes == FLOAT64_BYTES else _SPACE
    limit = shared_memory_limit(arch)
    found = []
    for block_m, block_n, warps, stages in itertools.product(*space[kind]):
        config = KernelConfig(block_m=block_m, block_n=block_n, num_warps=warps, num_stages=stages)
        fits = shared_memory_estimate(kind, config, head_dim, head_dim_v, dtype_bytes) <= limit
        registers = accumulator_registers(kind, config, head_dim, head_dim_v, dtype_bytes)
        if fits and registers <= ACCUMULATOR_REGISTER_LIMIT:
            found.append(config)
    return found


def hopper_options(configs: Iterable[KernelConfig], arch: str, kind: str = "forward",
                   specializes: Callable[[KernelConfig], bool] | None = None) -> list[KernelConfig]:
    """Each config with TMA, with warp specialization and with both, on architectures that have them
    (sm_90 and later); nothing elsewhere. The dQ kernel gets TMA only (its launcher never warp-specializes).
    `specializes(config)`: whether the kernel with that config compiles and Triton really splits its loop
    into warp partitions (an ahead-of-time compile says); a warp-specialized option it rejects is dropped,
    since it would fail to compile or time the same code twice."""
    if parse_arch(arch) < _HOPPER_OPTIONS_FROM:
        return []
    flags = ((True, False),) if kind == "backward_dq" else ((True, False), (False, True), (True, True))
    options = [dataclasses.replace(c, tma=tma, warp_specialize=ws) for c in configs for tma, ws in flags]
    return [c for c in options if not c.warp_specialize or specializes is None or specializes(c)]


def tile_candidates(kind: str, arch: str, head_dim: int, head_dim_v: int, dtype_bytes: int,
                    limit: int | None = None) -> list[KernelConfig]:
    """What tuning times first: the architecture's default for the dtype, then every candidate that fits (at
    most `limit` in all)."""
    default = default_for(kind, arch, head_dim, head_dim_v, dtype_bytes)
    found = candidates(kind, head_dim, head_dim_v, dtype_bytes, arch)
    return list(dict.fromkeys([default, *found]))[:limit]


def prune_by_resources(configs: Iterable[KernelConfig],
                       report: Mapping[KernelConfig, Mapping[str, Any]]) -> list[KernelConfig]:
    """The configs whose compile report ({"registers", "spills", ...} as `aot.compile_kernels` gives per
    job) shows no spills; a config missing from the report is kept, since nothing is known against it."""
    return [config for config in configs if report.get(config, {}).get("spills", 0) == 0]


# ---- defaults per architecture ----

# (widest head dim up to, ladder of configs) in increasing order; the last row catches everything wider. A
# ladder is tried in order and the first config whose kernel compiles without spills is the default
# (`first_spill_free`); its first rung is what `default_for` names.
DefaultRows = tuple[tuple[float, tuple[KernelConfig, ...]], ...]


def _kc(block_m: int, block_n: int, warps: int, stages: int, tma: bool = False) -> KernelConfig:
    return KernelConfig(block_m, block_n, warps, stages, tma=tma)


# Hopper, forward: 128 query rows as two warpgroups of 64 (wgmma's M; no two warpgroups compute the same
# score tile), 128 keys per tile so the accumulator's rescale is amortised over as many scores as the
# best Hopper kernels, K and V through TMA. Mods that gather per score element need more registers: the
# ladder steps down to 64 keys, then to one warpgroup. Backward: dK/dV's wgmma runs along its keys (M = 64
# per warpgroup), dQ's along its queries; at D = 128 two [BLOCK_N, 128] float32 accumulators fill most of
# the register file, so dK/dV tries a third pipeline stage (ptxas allocates differently: causal's two loops
# spill 8 bytes at two stages and none at three), then steps from 64 to 32 queries per tile where a variant's
# loops spill at 64 (a softcap's derivative, prefix LM's two loops), and last to the mma.sync tiles that never
# spill. dQ at D = 128 keeps one warpgroup of 64 queries: two (128 x 64, no spills in the benchmark set either)
# put more of a banded mask's tiles on its band, and its tile-weighted issue slots rise (sliding window 1.11x
# to 1.21x the yardstick's, causal 1.05x to 1.08x).
_HOPPER: dict[str, DefaultRows] = {
    "forward": (
        (64, (_kc(128, 128, 8, 2, True), _kc(128, 64, 8, 2, True), _kc(64, 64, 4, 2, True), _kc(64, 32, 8, 3))),
        (128, (_kc(128, 128, 8, 2, True), _kc(128, 64, 8, 2, True), _kc(64, 64, 4, 2, True), _kc(64, 32, 8, 3))),
        (math.inf, (_kc(128, 64, 8, 2, True), _kc(64, 64, 4, 2, True), _kc(64, 32, 8, 2))),
    ),
    "backward_dkdv": (
        (64, (_kc(64, 128, 8, 2, True), _kc(32, 128, 8, 2, True), _kc(32, 64, 8, 2), _kc(16, 32, 8, 1))),
        (128, (_kc(64, 128, 8, 2, True), _kc(64, 128, 8, 3, True), _kc(32, 128, 8, 2, True), _kc(32, 64, 4, 2, True),
               _kc(32, 32, 8, 2),
               _kc(16, 32, 8, 1))),
        (math.inf, (_kc(16, 32, 8, 1), _kc(16, 16, 4, 1))),
    ),
    "backward_dq": (
        (64, (_kc(128, 64, 8, 2, True), _kc(64, 64, 4, 2, True), _kc(64, 32, 4, 2), _kc(32, 16, 4, 1))),
        (128, (_kc(64, 64, 4, 2, True), _kc(64, 32, 8, 2), _kc(32, 16, 4, 1))),
        (math.inf, (_kc(16, 16, 8, 1), _kc(16, 16, 4, 1))),
    ),
}
# Ampere and Ada (mma.sync, no TMA): the tiles attnc has launched there, which spill for none of the
# library's variants; less shared memory than Hopper, so fewer pipeline stages.
_AMPERE: dict[str, DefaultRows] = {
    "forward": ((128, (_kc(64, 32, 8, 2),)), (math.inf, (_kc(64, 32, 8, 2),))),
    "backward_dkdv": ((64, (_kc(32, 64, 8, 2),)), (128, (_kc(32, 32, 8, 2),)), (math.inf, (_kc(16, 32, 8, 1),))),
    "backward_dq": ((64, (_kc(64, 32, 4, 2),)), (128, (_kc(64, 32, 8, 2),)), (math.inf, (_kc(16, 16, 8, 1),))),
}
_ADA: dict[str, DefaultRows] = {**_AMPERE, "forward": ((128, (_kc(64, 32, 4, 2),)), (math.inf, (_kc(64, 32, 8, 1),)))}

DEFAULTS_BY_ARCH: dict[str, dict[str, DefaultRows]] = {
    "sm_80": _AMPERE,
    "sm_89": _ADA,
    "sm_90": _HOPPER,
    "generic": _ADA,  # the smallest shared memory of the three
}

# float64 inputs, on every architecture: there is no wgmma for float64 (Hopper multiplies with mma.sync's f64
# shape, as Ampere does), and each element takes four times a bfloat16's shared memory and, accumulated, two
# registers. The 2-byte ladders spill at nearly every rung in float64 and, from D = 192, need more shared memory
# than an H200 block has (227 KB). These rungs compile for sm_90 (a mask-only variant) without spills and within
# its shared memory, but for the backward at D > 128: there the smallest tiles (two [16, 256] float64 tiles held
# and two [16, 256] accumulators per dK/dV program) spill a few bytes (dK/dV) to 2 KB (dQ) at 8 warps, and more
# at 4 or 16. The shared-memory check (`fitting_rungs`) drops what another architecture cannot hold.
_FLOAT64: dict[str, DefaultRows] = {
    "forward": (
        (64, (_kc(64, 32, 8, 3), _kc(32, 32, 4, 2), _kc(16, 32, 4, 1))),
        (128, (_kc(32, 32, 4, 2), _kc(16, 32, 4, 1))),
        (math.inf, (_kc(16, 32, 8, 1), _kc(16, 16, 4, 1))),
    ),
    "backward_dkdv": (
        (64, (_kc(32, 32, 4, 2), _kc(16, 32, 4, 1))),
        (128, (_kc(16, 32, 8, 1), _kc(16, 16, 4, 1))),
        (math.inf, (_kc(16, 16, 8, 1),)),
    ),
    "backward_dq": (
        (64, (_kc(64, 32, 8, 2), _kc(32, 32, 4, 2), _kc(32, 16, 4, 1))),
        (128, (_kc(16, 32, 8, 1), _kc(16, 16, 8, 1))),
        (math.inf, (_kc(16, 16, 8, 1),)),
    ),
}


def default_ladder(kind: str, arch: str, head_dim: int, head_dim_v: int,
                   dtype_bytes: int = 2) -> tuple[KernelConfig, ...]:
    """The untuned configs for `kind` on `arch` with inputs of `dtype_bytes` per element, preferred first (an
    unknown architecture gets the generic rows; float64 its own, `_FLOAT64`), without the rungs whose shared
    memory exceeds the architecture's by estimate (`fitting_rungs`)."""
    table = _FLOAT64 if dtype_bytes == FLOAT64_BYTES else DEFAULTS_BY_ARCH.get(arch, DEFAULTS_BY_ARCH["generic"])
    rows = table.get(kind)
    if rows is None:
        raise ValueError(f"attnc: unknown kernel kind {kind!r}; expected one of {KINDS}")
    widest = max(head_dim, head_dim_v)
    ladder = next(ladder for upto, ladder in rows if widest <= upto)
    return fitting_rungs(kind, ladder, arch, head_dim, head_dim_v, dtype_bytes)


def fitting_rungs(kind: str, ladder: tuple[KernelConfig, ...], arch: str, head_dim: int, head_dim_v: int,
                  dtype_bytes: int) -> tuple[KernelConfig, ...]:
    """The rungs of `ladder` whose shared memory by `shared_memory_estimate` (a lower bound) is within `arch`'s
    limit; the last rung alone where none is (the smallest tiles: an ahead-of-time compile tells how far off)."""
    limit = shared_memory_limit(arch)
    fitting = tuple(c for c in ladder if shared_memory_estimate(kind, c, head_dim, head_dim_v, dtype_bytes) <= limit)
    return fitting or ladder[-1:]


def default_for(kind: str, arch: str, head_dim: int, head_dim_v: int, dtype_bytes: int = 2) -> KernelConfig:
    """The preferred untuned tiles for `kind` on `arch` with inputs of `dtype_bytes`: the first rung of its
    ladder."""
    return default_ladder(kind, arch, head_dim, head_dim_v, dtype_bytes)[0]


def first_spill_free(ladder: Iterable[KernelConfig], spills: Callable[[KernelConfig], int],
                     fits: Callable[[KernelConfig], bool] | None = None) -> KernelConfig:
    """The first config of `ladder` that fits the architecture by `fits(config)` (its shared memory, from an
    ahead-of-time compile, within the limit; every config when not given) and whose kernels spill nothing by
    `spills(config)` (bytes, from the same compile); where all that fit spill, the last of them, since it is the
    smallest; where none fits, the last config."""
    configs = list(ladder)
    smallest_fitting = None
    for config in configs:  # in order, so a compile is spent on a rung only when those before it are ruled out
        if fits is not None and not fits(config):
            continue
        if spills(config) == 0:
            return config
        smallest_fitting = config
    return configs[-1] if smallest_fitting is None else smallest_fitting


# ---- keys ----


@dataclasses.dataclass(frozen=True)
class ShapeBucket:
    batch_heads: int
    q_len: int
    kv_len: int
    head_dim: int
    head_dim_v: int


def _round_up_power_of_two(n: int, minimum: int) -> int:
    return max(minimum, 1 << max(n - 1, 0).bit_length())


def shape_bucket(B: int, H: int, Q_LEN: int, KV_LEN: int, D: int, Dv: int) -> ShapeBucket:
    """The bucket a problem's tuning applies to. Lengths round up to powers of two (at least 128, below
    which one tile covers the sequence anyway): the best tiles move with the order of magnitude of the
    loop trip count, not its exact value. Head dims stay exact: they are compile-time constants that set
    the tile widths. B*H only sets how many waves of programs fill the GPU, so it rounds up to a power of
    four, capped at 1024 where there are many waves on any GPU and more heads only repeat them."""
    waves = 1
    while waves < min(B * H, 1024):
        waves *= 4
    return ShapeBucket(waves, _round_up_power_of_two(Q_LEN, 128), _round_up_power_of_two(KV_LEN, 128), D, Dv)


@dataclasses.dataclass(frozen=True)
class TuneKey:
    gpu: str  # the device's model name, e.g. torch.cuda.get_device_name()
    kernel: str  # identifies the generated kernel, e.g. the hash of its source
    bucket: ShapeBucket

    def serialize(self) -> str:
        # JSON, not a joined string: no GPU name or kernel key can make two keys collide.
        return json.dumps([self.gpu, self.kernel, dataclasses.astuple(self.bucket)])


# ---- tuning and persistence ----


class Tuner:
    """Benchmarks candidate configs per `TuneKey` and persists the fastest in `<directory>/tuning.json`
    (`tuning_store`: validated on read, merged under a lock on write; a file that cannot be written leaves
    the entry in this tuner's memory, with a warning)."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / TUNING_FILE
        self.failures: dict[KernelConfig, str] = {}  # why each config of the latest `tune` was skipped
        self._entries: dict[str, TuneEntry] | None = None
        self._added: dict[str, TuneEntry] = {}  # tuned by this tuner: what it merges into the file

    def lookup(self, key: TuneKey) -> KernelConfig | None:
        entry = self._loaded().get(key.serialize())
        return entry.config if entry is not None else None

    def tune(self, key: TuneKey, configs: Iterable[KernelConfig], run: Callable[[KernelConfig], None],
             timer: Callable[[Callable[[], None]], float], *,
             refine: Callable[[list[KernelConfig]], Iterable[KernelConfig]] | None = None,
             progress: Callable[[KernelConfig, float | None], None] | None = None) -> KernelConfig:
        """The stored config for `key`, or else the fastest of `configs` under `timer`, then stored.
        `refine(fastest)` may add configs derived from the REFINE_TOP fastest (the Hopper options), timed in
        a second round. A config whose run raises (or times as non-finite) is skipped and its reason kept in
        `failures`. `progress(config, ms)` is told each timing (ms None: skipped)."""
        stored = self.lookup(key)
        if stored is not None:
            return stored
        self.failures = {}
        timings: dict[KernelConfig, float | None] = {}

        def time_all(batch: Iterable[KernelConfig]) -> None:
            for config in dict.fromkeys(batch):
                if config not in timings:
                    timings[config] = self._time(config, run, timer)
                    if progress is not None:
                        progress(config, timings[config])

        time_all(configs)
        if refine is not None:
            ranked = sorted((c for c, ms in timings.items() if ms is not None), key=lambda c: timings[c])
            time_all(refine(ranked[:REFINE_TOP]))
        timed = {config: ms for config, ms in timings.items() if ms is not None}
        if not timed:
            reasons = "; ".join(f"{config}: {why}" for config, why in self.failures.items()) or "no candidates"
            raise TuneError(f"attnc: no configuration could be run for {key}: {reasons}")
        best = min(timed, key=timed.__getitem__)
        entry = TuneEntry(best, timed[best], len(timings))
        self._loaded()[key.serialize()] = self._added[key.serialize()] = entry
        self._save()
        return best

    def _time(self, config: KernelConfig, run: Callable[[KernelConfig], None],
              timer: Callable[[Callable[[], None]], float]) -> float | None:
        try:
            ms = float(timer(lambda: run(config)))
        except Exception as e:  # a config the compiler or the GPU rejects is a losing candidate, not an error
            self.failures[config] = f"{type(e).__name__}: {e}"
            return None
        if not math.isfinite(ms):
            self.failures[config] = f"non-finite time {ms}"
            return None
        return ms

    def _loaded(self) -> dict[str, TuneEntry]:
        if self._entries is None:
            contents = tuning_store.read(self.path)
            message = tuning_store.describe(self.path, contents)
            if message is not None:
                warnings.warn(message, TuningWarning, stacklevel=4)
            self._entries = contents.entries
        return self._entries

    def _save(self) -> None:
        try:
            self._entries = {**self._loaded(), **tuning_store.save(self.path, self._added)}
        except tuning_store.TuningStoreError as error:
            warnings.warn(f"{error}; the tuned configs are used by this process only", TuningWarning, stacklevel=4)


# ---- at launch ----


def device_arch(device: Any) -> str:
    """"sm_XY" of a CUDA device."""
    import torch

    major, minor = torch.cuda.get_device_capability(device)
    return f"sm_{major}{minor}"


@functools.lru_cache(maxsize=256)
def kernel_key(source: str, dtype: Any) -> str:
    """Identifies a generated kernel for tuning: its source's hash and the element type it runs on.
    Cached: every launch on a GPU asks, with the same source object."""
    return f"{content_hash(source)[:24]}/{str(dtype).removeprefix('torch.')}"


def select(tuner: Tuner | None, kind: str, *, gpu: str, arch: str, kernel: str, B: int, H: int, Q_LEN: int,
           KV_LEN: int, D: int, Dv: int, dtype_bytes: int = 2) -> KernelConfig:
    """The config a launch uses: the tuned one for (gpu, kernel, shape bucket) if `tuner` has it, else the
    architecture's default for inputs of `dtype_bytes`. Never benchmarks."""
    if tuner is not None:
        tuned = tuner.lookup(tune_key(kind, gpu=gpu, kernel=kernel, B=B, H=H, Q_LEN=Q_LEN, KV_LEN=KV_LEN, D=D, Dv=Dv))
        if tuned is not None:
            return tuned
    return default_for(kind, arch, D, Dv, dtype_bytes)


def tune_key(kind: str, *, gpu: str, kernel: str, B: int, H: int, Q_LEN: int, KV_LEN: int, D: int,
             Dv: int) -> TuneKey:
    """The key one kernel of a module (`kind`) is tuned and looked up under."""
    return TuneKey(gpu, f"{kernel}#{kind}", shape_bucket(B, H, Q_LEN, KV_LEN, D, Dv))


def gpu_timer(fn: Callable[[], None]) -> float:
    """Milliseconds per call on the GPU: the median of `triton.testing.do_bench` (warm-up included)."""
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
