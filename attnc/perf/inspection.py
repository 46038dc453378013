"""`Attention.inspect` and `attnc inspect`: a variant's kernels and the yardstick, compiled in one run and
compared (see `attnc.perf.report` for what each figure means), as a record and as text; and
`Attention.resources`, the compile figures alone (`kernel_resources`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from attnc.perf import report
from attnc.perf.launches import Launch, Shape, attnc_launches, decode_launches, yardstick_launches
from attnc.runtime import aot, tuning
from attnc.runtime import cache as kernel_files
from attnc.runtime.config import KernelConfig

TMA_FROM = 90  # the first architecture with TMA: before it the yardstick loads through pointers


@dataclasses.dataclass(frozen=True)
class Inspection:
    arch: str
    shape: Shape
    kernels: list[report.KernelReport]
    yardstick: list[report.KernelReport]
    comparisons: list[report.Comparison]
    tile_stats: dict[str, dict[str, Any]]  # per kernel: the tile grid and the counts the weights came from
    triton: str

    def kernel(self, name: str) -> report.KernelReport:
        return next(k for k in self.kernels if k.name == name)

    def comparison(self, name: str) -> report.Comparison | None:
        return next((c for c in self.comparisons if c.kernel == name), None)

    def as_json(self) -> dict[str, Any]:
        return {"arch": self.arch, "shape": self.shape.as_json(), "triton": self.triton,
                "kernels": [k.as_json() for k in self.kernels], "yardstick": [k.as_json() for k in self.yardstick],
                "comparisons": [c.as_json() for c in self.comparisons], "tile_stats": self.tile_stats}


def compile_yardstick(arch: str, shape: Shape, *, backward: bool, python: str | None = None,
                      processes: int = 1) -> list[report.KernelReport]:
    """The yardstick's kernels for `shape`, compiled for `arch` and analysed (reusable across variants)."""
    capability = aot.parse_arch(arch)
    launches = list(yardstick_launches(shape, backward=backward, use_tma=capability >= TMA_FROM).values())
    return report.compile_launches(launches, capability, python=python, processes=processes)


def inspect_attention(attn: Any, *, arch: str = "sm_90", shape: Shape | None = None, backward: bool = False,
                      config: KernelConfig | None = None, backward_configs: Any = None,
                      values: Mapping[str, Any] | None = None, yardstick: Sequence[report.KernelReport] | None = None,
                      python: str | None = None, processes: int = 1, decode: bool = False) -> Inspection:
    """Compile what `attn` launches at `shape` (default: the benchmark's B=2, H=16, S=4096, D=128, bf16)
    for `arch`, and the yardstick unless given, and compare them. With `decode`, also the split-KV decode
    kernels (`decode_launches`: a group of 8 query heads per kv head, one new token; no yardstick)."""
    import triton

    shape = shape or Shape()
    capability = aot.parse_arch(arch)
    untuned = tuning.untuned_configs(attn, arch=arch, dtype=shape.dtype, D=shape.head_dim, Dv=shape.dv)
    launches = attnc_launches(attn, shape, backward=backward, config=config, backward_configs=backward_configs,
                              values=values, untuned=untuned)
    decoding = list(decode_launches(attn, shape).values()) if decode else []
    extra = [] if yardstick is not None else list(
        yardstick_launches(shape, backward=backward, use_tma=capability >= TMA_FROM).values())
    ours = [*launches.values(), *decoding]
    compiled = report.compile_launches([*ours, *extra], capability, python=python, processes=processes)
    kernels = compiled[:len(ours)]
    yardstick = list(yardstick) if yardstick is not None else compiled[len(ours):]
    stats = _tile_stats(attn, launches, shape, values)
    by_kind = {k.kind: k for k in yardstick}
    comparisons = [report.compare(k, by_kind[report.COMPARED_WITH[k.kind]], stats[k.name]["shares"])
                   for k in kernels if report.COMPARED_WITH.get(k.kind) in by_kind]
    return Inspection(arch, shape, kernels, yardstick, comparisons, stats, triton.__version__)


def kernel_resources(attn: Any, *, arch: str, shape: Shape, backward: bool, config: KernelConfig | None,
                     backward_configs: Any, python: str | None) -> dict[str, dict[str, Any]]:
    """Registers, spills and shared memory (and the config) of each kernel `attn` launches at `shape`, compiled
    for `arch` without disassembly; for a masked variant also its block-map builder ("block_map"). See
    `Attention.resources`."""
    capability = aot.parse_arch(arch)
    untuned = tuning.untuned_configs(attn, arch=arch, dtype=shape.dtype, D=shape.head_dim, Dv=shape.dv)
    launches = attnc_launches(attn, shape, backward=backward, config=config, backward_configs=backward_configs,
                              untuned=untuned)
    jobs = {name: launched.job(capability, disassemble=False) for name, launched in launches.items()}
    if attn.program.mask is not None:
        builder_path = kernel_files.kernel_cache().ensure_file(attn.block_map_source.source)
        jobs["block_map"] = aot.block_map_job(builder_path, attn.program, capability)
    results = aot.compile_kernels(list(jobs.values()), python=python)
    configs = {name: launches[name].config if name in launches else None for name in jobs}
    return {name: {**result, "config": configs[name]} for name, result in zip(jobs, results, strict=True)}


def _tile_stats(attn: Any, launches: Mapping[str, Launch], shape: Shape,
                values: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Per kernel: the tile grid its tile classes are counted on, the counts and the visited shares."""
    cache: dict[tuple[int, int], dict[str, int]] = {}
    stats: dict[str, dict[str, Any]] = {}
    for name, launch in launches.items():
        grid = report.tile_grid(launch)
        if grid is None:
            stats[name] = {"grid": None, "counts": None, "shares": None}
            continue
        if grid not in cache:
            cache[grid] = attn.tile_stats(shape.batch, shape.heads, shape.seq_len, shape.seq_len, BLOCK_M=grid[0],
                                          BLOCK_N=grid[1], **(values or {}))
        stats[name] = {"grid": list(grid), "counts": cache[grid], "shares": report.tile_shares(cache[grid])}
    return stats


# -- text --------------------------------------------------------------------------------------------------


def describe_config(config: KernelConfig | None) -> str:
    if config is None:
        return "-"
    flags = "".join(f" {name}" for name, on in (("tma", config.tma), ("ws", config.warp_specialize)) if on)
    return f"{config.block_m}x{config.block_n} w{config.num_warps} s{config.num_stages}{flags}"


def format_inspection(inspection: Inspection, label: str) -> str:
    shape = inspection.shape
    lines = [f"attnc inspect {label}: {inspection.arch}, {shape.as_json()['dtype']}, B={shape.batch} "
             f"H={shape.heads} S={shape.seq_len} D={shape.head_dim} Dv={shape.dv}; triton {inspection.triton}",
             "", "yardstick (dense FlashAttention-2, attnc/perf/yardstick.py):"]
    lines += [line for k in inspection.yardstick for line in _kernel_lines(k, None, indent="  ")]
    lines += ["", "kernels (figures per score element; (xN) = N times the yardstick's main loop):"]
    for kernel in inspection.kernels:
        lines += _kernel_lines(kernel, inspection.comparison(kernel.name), indent="  ")
    lines += ["", FORMULA]
    return "\n".join(lines)


FORMULA = ("issue slots per score element = loop body instructions x num_warps / (BLOCK_M x BLOCK_N), static "
           "count (paths: shortest..longest through one iteration); see attnc.perf.report for the caveats")


def _kernel_lines(kernel: report.KernelReport, comparison: report.Comparison | None, indent: str) -> list[str]:
    tma = f"TMA {'yes' if kernel.tma_sass else 'no'} (ttgir {'yes' if kernel.tma_ttgir else 'no'})"
    head = (f"{indent}{kernel.name:<26} {describe_config(kernel.config):<18} registers {kernel.registers} "
            f"spills {kernel.spills} shared {kernel.shared_memory} B  {kernel.matmul}  {tma}"
            + ("  warp-specialized" if kernel.warp_specialized else "")
            + ("" if kernel.specialized else "  (unspecialised: compiled from its signature)")
            + ("" if kernel.config else "  (no tiles: loop figures are per iteration)"))
    lines = [head]
    lines += [f"{indent}    ptxas: {w}" for w in kernel.ptxas_warnings]
    ratios = {row["span"]: row for row in comparison.loops} if comparison else {}
    for loop in kernel.loops:
        if not loop.hot and comparison is None and kernel.kind not in ("block_map", "decode_combine") \
                and loop.census["tensor"] == 0:
            continue  # the yardstick's side loops say nothing
        lines.append(_loop_line(loop, ratios.get(loop.span), indent + "    "))
    if comparison and comparison.headline_max is not None:
        weighted = ("" if comparison.headline_weighted is None
                    else f", weighted x{comparison.headline_weighted:.2f} ({comparison.weights_from})")
        lines.append(f"{indent}    headline: issue slots per score element vs yardstick: max "
                     f"x{comparison.headline_max:.2f}{weighted}")
    return lines


def _loop_line(loop: report.LoopReport, row: Mapping[str, Any] | None, indent: str) -> str:
    role = ("hot" if loop.hot else "tensor" if loop.census["tensor"]
            # only waits and branches: a wait that retries (an mbarrier's, usually placed out of line)
            else "wait loop" if loop.census["sync"] + loop.census["control"] == loop.size else "no tensor ops")
    paths = "" if loop.shortest_path == loop.longest_path == loop.size else \
        f" (paths {loop.shortest_path}..{loop.longest_path})"
    figures = "  ".join(f"{name} {loop.per_element[name]:.3f}" + _times(row, name) for name in report.FIGURES)
    work = "" if loop.mma_work is None else f"  mma work {loop.mma_work:.2f}"
    waits = f"  wgmma waits {loop.wgmma_waits}" if loop.wgmma_waits else ""
    pipe = "pipelined" if loop.pipelining.pipelined else "not pipelined"
    aside = f", {loop.out_of_line} out of line" if loop.out_of_line else ""
    return (f"{indent}loop {loop.span} [{role}] {loop.size} instr{aside}{paths}; {pipe}: {loop.pipelining.how}\n"
            f"{indent}  {figures}{work}{waits}")


def _times(row: Mapping[str, Any] | None, name: str) -> str:
    if row is None or row["ratio"][name] is None:
        return ""
    return f" (x{row['ratio'][name]:.2f})"
