"""Tuned configs at launch, and tuning a variant's kernels on its real inputs.

A launch on a GPU uses the config tuned for (GPU model, kernel, shape bucket) if `tuning.json` beside the
kernel cache has one, else the first config of its architecture's default ladder that compiles without
spills for the variant (`spill_free_default`, an ahead-of-time compile per variant and shape class); it never
benchmarks. Tuning
(`Attention.tune`, `attnc tune`) runs the variant's own kernels on the given inputs, so the tiles are timed
on the variant's real sparsity (its closed-form ranges, or the block map it builds for data it reads), not
on dense metadata. In the Triton interpreter launches use `INTERPRETER_TILES`; tuning there (with a timer
given) exercises the same path under the name "interpreter", for tests.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch

from attnc.runtime import autotune
from attnc.runtime.autotune import Tuner
from attnc.runtime.cache import CacheError, content_hash
from attnc.runtime.config import INTERPRETER_TILES, KernelConfig, Settings
from attnc.runtime.launch import Shapes

INTERPRETER = "interpreter"  # the GPU name tuning in the interpreter is stored under
Progress = Callable[[str, KernelConfig, float | None], None]  # (kind, config, ms or None when it failed)


@functools.cache
def shared_tuner() -> Tuner:
    """The process-wide tuner, on `tuning.json` in the kernel cache directory `Settings` names."""
    return Tuner(Settings.from_environment().cache_dir)


@functools.lru_cache(maxsize=16)
def identity(device: torch.device) -> tuple[str, str]:
    """(GPU model, architecture) of a CUDA device; ("interpreter", "sm_90") elsewhere (the interpreter
    stands in for the architecture attnc's defaults are written for). Cached: every launch asks."""
    if device.type != "cuda":
        return INTERPRETER, "sm_90"
    return torch.cuda.get_device_name(device), autotune.device_arch(device)


def launch_config(kind: str, shapes: Shapes, source: str, dtype: torch.dtype, device: torch.device,
                  attn: Any = None, block_mask: bool | None = None) -> KernelConfig:
    """The config a launch of `kind` uses (see the module docstring): the tuned one, else the first rung of the
    architecture's default ladder that compiles without spills for `attn`'s kernel (`spill_free_default`;
    the first rung when no `attn` is given)."""
    if device.type != "cuda":
        return INTERPRETER_TILES
    gpu, arch = identity(device)
    key = autotune.tune_key(kind, gpu=gpu, kernel=autotune.kernel_key(source, dtype), **_dims(shapes))
    tuned = shared_tuner().lookup(key)
    if tuned is not None:
        return tuned
    if attn is None:
        return autotune.default_for(kind, arch, shapes.D, shapes.Dv, dtype.itemsize)
    return spill_free_default(attn, kind, arch=arch, dtype=dtype, D=shapes.D, Dv=shapes.Dv, block_mask=block_mask)


_SPILL_FREE: dict[tuple[Any, ...], KernelConfig] = {}


def spill_free_default(attn: Any, kind: str, *, arch: str, dtype: torch.dtype, D: int, Dv: int,
                       block_mask: bool | None = None) -> KernelConfig:
    """The first config of the default ladder for `dtype` (`autotune.default_ladder`) whose kernel, compiled
    ahead of time in the loop the variant runs (`aot_report`), fits `arch`'s shared memory and spills nothing:
    a mod that gathers per score element needs more registers than the largest tiles leave, and float64 tiles
    need four times a bfloat16's shared memory. Remembered per kernel source, kind, arch, dtype and head dims
    for the life of the process. Raises ValueError where even the smallest rung needs more shared memory than
    `arch` has (a launch would fail). `block_mask`: for the loop a launch runs, a BlockMask's (True) or the
    closed-form tile loops (False); None: a config spill-free in both (a mod's derivative can make the BlockMask
    loop spill at tiles the other holds)."""
    ladder = autotune.default_ladder(kind, arch, D, Dv, dtype.itemsize)
    source = attn.source.source if kind == "forward" else attn.backward_source.source
    key = (content_hash(source), kind, arch, dtype, D, Dv, block_mask)
    if key not in _SPILL_FREE:
        try:
            _SPILL_FREE[key] = _first_fitting_spill_free(attn, kind, ladder, arch=arch, dtype=dtype, D=D, Dv=Dv,
                                                         loops=_LOOPS[block_mask])
        except CacheError:  # no kernel file to compile ahead of time (the cache directory cannot be written)
            _SPILL_FREE[key] = ladder[0]
    return _SPILL_FREE[key]


# which of `_both_loops`' reports a launch's loop needs: the closed-form loops', the BlockMask loop's, or both
_LOOPS = {False: (0,), True: (1,), None: (0, 1)}
_LOOP_REPORTS: dict[tuple[Any, ...], list[dict[str, Any]]] = {}


def _first_fitting_spill_free(attn: Any, kind: str, ladder: Sequence[KernelConfig], *, arch: str,
                              dtype: torch.dtype, D: int, Dv: int, loops: Sequence[int] = (0, 1)) -> KernelConfig:
    """`autotune.first_spill_free` over the compile reports of the kernel's `loops` (each rung compiled once per
    process); a ValueError where the rung it settles on, then the smallest, needs more shared memory than
    `arch` has."""
    source = attn.source.source if kind == "forward" else attn.backward_source.source

    def reports(config: KernelConfig) -> list[dict[str, Any]]:
        key = (content_hash(source), kind, arch, dtype, D, Dv, config)
        if key not in _LOOP_REPORTS:
            _LOOP_REPORTS[key] = _both_loops(attn, kind, config, arch, dtype, D, Dv)
        return [_LOOP_REPORTS[key][i] for i in loops]

    def worst(config: KernelConfig, resource: str) -> int:
        return max(info[resource] for info in reports(config))

    limit = autotune.shared_memory_limit(arch)
    chosen = autotune.first_spill_free(ladder, lambda c: worst(c, "spills"),
                                       fits=lambda c: worst(c, "shared_memory") <= limit)
    if worst(chosen, "shared_memory") > limit:
        raise ValueError(f"attnc: the {kind} kernel for {str(dtype).removeprefix('torch.')} inputs with head dims "
                         f"D={D}, Dv={Dv} needs {worst(chosen, 'shared_memory')} bytes of shared memory per block at "
                         f"its smallest tiles ({chosen}); {arch} has {limit}. Use smaller head dims or a narrower "
                         "dtype on this GPU")
    return chosen


def untuned_configs(attn: Any, *, arch: str, dtype: torch.dtype, D: int,
                    Dv: int) -> Callable[..., KernelConfig]:
    """`(kind, block_mask=None) -> config` an untuned launch of `attn` on `arch` picks (`spill_free_default`)."""
    return functools.partial(spill_free_default, attn, arch=arch, dtype=dtype, D=D, Dv=Dv)


def _both_loops(attn: Any, kind: str, config: KernelConfig, arch: str, dtype: torch.dtype, D: int,
                Dv: int) -> list[dict[str, Any]]:
    """Compile reports of `kind` with `config` in both the loops a call can run: `attn(...)`'s and a BlockMask's
    (`flex_attention` with a block mask). Compiled from launches recorded at the benchmark's shape and
    specialised as Triton's JIT specialises them (`attnc.perf.launches`), so registers and spills are those of
    the kernel a GPU runs."""
    from attnc.perf.launches import Shape, attnc_launches
    from attnc.runtime import aot
    from attnc.runtime.launch_backward import BackwardConfigs

    shape = Shape(head_dim=D, head_dim_v=Dv, dtype=dtype)
    pair = BackwardConfigs(config, config)
    launches = attnc_launches(attn, shape, backward=kind != "forward", config=config, backward_configs=pair)
    capability = aot.parse_arch(arch)
    jobs = [launches[name].job(capability, disassemble=False) for name in (kind, kind + "_block_mask")]
    return aot.compile_kernels(jobs)


def tune_kernel(kind: str, *, shapes: Shapes, source: str, dtype: torch.dtype, device: torch.device,
                run: Callable[[KernelConfig], None], timer: Callable[[Callable[[], None]], float] | None = None,
                configs: Sequence[KernelConfig] | None = None, limit: int | None = None,
                progress: Progress | None = None, tuner: Tuner | None = None, attn: Any = None) -> KernelConfig:
    """The tuned config of one kernel for these shapes: stored, or found by timing `run(config)` over the
    architecture's default and candidates (or `configs`), then the Hopper options on the fastest few (on a
    GPU, warp specialization only where an ahead-of-time compile of `attn`'s kernel shows it takes effect:
    `warp_specializes`)."""
    gpu, arch = identity(device)
    if timer is None:
        if device.type != "cuda":
            raise RuntimeError("attnc: tuning times kernels on a CUDA GPU; these tensors are on "
                               f"{device.type} (pass timer= to tune in the Triton interpreter)")
        timer = autotune.gpu_timer
    dims = _dims(shapes)
    if configs is None:
        configs = autotune.tile_candidates(kind, arch, shapes.D, shapes.Dv, dtype.itemsize, limit)
    key = autotune.tune_key(kind, gpu=gpu, kernel=autotune.kernel_key(source, dtype), **dims)
    tell = None if progress is None else functools.partial(progress, kind)
    specializes = None
    if attn is not None and device.type == "cuda":
        specializes = functools.partial(warp_specializes, attn, kind, arch=arch, dtype=dtype, D=shapes.D, Dv=shapes.Dv)
    return (tuner or shared_tuner()).tune(key, configs, run, timer,
                                          refine=lambda best: autotune.hopper_options(best, arch, kind, specializes),
                                          progress=tell)


def _dims(shapes: Shapes) -> dict[str, Any]:
    return {"B": shapes.B, "H": shapes.Hq, "Q_LEN": shapes.Q_LEN, "KV_LEN": shapes.KV_LEN, "D": shapes.D,
            "Dv": shapes.Dv}


def aot_report(attn: Any, kind: str, configs: Sequence[KernelConfig], *, arch: str, dtype: torch.dtype, D: int,
               Dv: int, progress: Callable[[int, int], None] | None = None) -> dict[KernelConfig, dict[str, Any]]:
    """Registers, spills and shared memory of `kind` compiled ahead of time for `arch` (no GPU) with each
    config, in the loop `attn(...)` runs (its own block map for masks that read data, else the closed-form
    ranges), specialised as a launch at the benchmark's shape; for `autotune.prune_by_resources`.
    `progress(done, total)` is told as each config's compile finishes."""
    from attnc.perf.launches import Shape, attnc_launches
    from attnc.runtime import aot
    from attnc.runtime.launch_backward import BackwardConfigs

    capability = aot.parse_arch(arch)
    shape = Shape(head_dim=D, head_dim_v=Dv, dtype=dtype)
    jobs = []
    for config in configs:
        launches = attnc_launches(attn, shape, backward=kind != "forward", config=config,
                                  backward_configs=BackwardConfigs(config, config))
        jobs.append(launches[kind].job(capability, disassemble=False))
    return dict(zip(configs, aot.compile_kernels(jobs, progress=progress), strict=True))


def warp_specializes(attn: Any, kind: str, config: KernelConfig, *, arch: str, dtype: torch.dtype, D: int,
                     Dv: int) -> bool:
    """Whether `kind` of `attn` with `config` (warp_specialize on) compiles for `arch` and Triton splits its
    loop into producer and consumer warps: on Triton 3.9 some loops fail ("unsupported load type for producer
    commit") and most compile without any split, where the option would only time the same code again."""
    from attnc.runtime.aot import AOTError

    try:
        report = aot_report(attn, kind, [config], arch=arch, dtype=dtype, D=D, Dv=Dv)[config]
    except AOTError:
        return False
    return bool(report.get("warp_specialized"))
