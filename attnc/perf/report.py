"""The static performance report: attnc's kernels compiled for a GPU architecture ahead of time (no GPU),
disassembled, and judged loop by loop against the yardstick (`attnc.perf.yardstick`, plain dense
FlashAttention-2) compiled in the same run.

    launches   what a call launches, with its real arguments       attnc.perf.launches
    compile    each launch for the arch; SASS and ptxas warnings   attnc.runtime.aot (child process)
    analyse    resources, loops, instruction census per loop        attnc.perf.sass
    compare    each hot loop's figures / the yardstick's main loop  this module

Per loop, the figures are per computed score element (one (query, key) pair of a tile):

    issue slots per element = body instructions x num_warps / (BLOCK_M x BLOCK_N)

since every warp of the program issues the body once per iteration and an iteration computes one
BLOCK_M x BLOCK_N tile. The same factor turns each category's count (MUFU, FP32, INT, INT64, tensor, ...)
into a per-element figure. Caveats: the count is static (a branch inside the body makes part of it
conditional, so each loop also reports its shortest and longest path through one iteration; predicated-off
instructions still take their slot); `mma_work` is the tensor-core multiply-adds issued per iteration over
those one tile needs: 1.0 when an iteration is one tile's matmuls, 2.0 for a loop Triton unrolled twice,
1.5 where two warpgroups both compute a product only one needs (BLOCK_M = 64 with 8 warps); with warp
specialization, warps run different loops and the num_warps factor overstates each. A loop is "hot" when
it holds tensor-core ops and no loop inside it does; a loop without them is likely not an attention loop
(an mbarrier wait that retries, a block-list walk).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

from attnc.perf import sass
from attnc.perf.launches import Launch
from attnc.runtime import aot
from attnc.runtime.config import KernelConfig

# The per-element figures each loop reports and compares: issue slots, then categories of `sass.census`
# ("int" and "int64" are disjoint: 32-bit integer work, and the halves of 64-bit integer operations).
FIGURES = ("issue", "mufu", "fp32", "int", "int64", "tensor")
# The yardstick kernel each attnc kernel kind is compared with.
COMPARED_WITH = {"forward": "forward", "backward_dkdv": "backward_dkdv", "backward_dq": "backward_dq"}
_WARNING_CODE = re.compile(r"\((C\d+)\)")


def matmul_depth(kind: str, head_dim: int, head_dim_v: int) -> int:
    """Multiply-adds per score element that the kernel's matmuls need: the forward's QK^T (D) and PV (Dv);
    dK/dV's recomputed QK^T (D), dV (Dv), dP (Dv) and dK (D); dQ's QK^T (D), dP (Dv) and dQ (D)."""
    return {"forward": head_dim + head_dim_v, "backward_dkdv": 2 * (head_dim + head_dim_v),
            "backward_dq": 2 * head_dim + head_dim_v}.get(kind, 0)


@dataclasses.dataclass(frozen=True)
class LoopReport:
    start: int
    end: int
    size: int  # static body instructions
    out_of_line: int  # of which outside start .. end (slow paths placed elsewhere, e.g. an mbarrier retry)
    shortest_path: int
    longest_path: int
    innermost: bool
    hot: bool  # holds tensor-core ops and no loop inside it does
    census: dict[str, int]
    per_element: dict[str, float]  # FIGURES, static count
    per_element_paths: tuple[float, float]  # issue slots per element on the shortest and longest path
    mma_work: float | None  # tensor MACs issued per iteration / MACs one tile needs
    wgmma_waits: int  # WARPGROUP.DEPBAR: waits for the warpgroup's wgmma to finish, per iteration
    pipelining: sass.Pipelining

    @property
    def span(self) -> str:
        return f"{self.start:#06x}-{self.end:#06x}"

    def as_json(self) -> dict[str, Any]:
        fields = dataclasses.asdict(self)
        fields["pipelining"] = self.pipelining.as_json()
        return {"span": self.span, **fields}


@dataclasses.dataclass(frozen=True)
class KernelReport:
    name: str
    kind: str
    config: KernelConfig | None
    block_size: tuple[int, int] | None
    specialized: bool  # compiled from recorded launch arguments (False: from the signature alone)
    registers: int  # of the cubin Triton built (cuobjdump -res-usage), what a launch runs
    spills: int  # bytes stored + loaded, from ptxas -v
    shared_memory: int
    matmul: str  # "wgmma", "mma.sync", both or "none"
    tma_sass: bool  # UTMALDG / UBLKCP / ... in the SASS
    tma_ttgir: bool  # async_tma ops in Triton's GPU IR
    warp_specialized: bool
    ptxas_warnings: list[str]
    instructions: int
    loops: list[LoopReport]

    @property
    def hot_loops(self) -> list[LoopReport]:
        return [loop for loop in self.loops if loop.hot]

    @property
    def warning_codes(self) -> list[str]:
        return sorted({m[1] for line in self.ptxas_warnings for m in _WARNING_CODE.finditer(line)})

    def main_loop(self) -> LoopReport | None:
        """The hot loop with the most tensor-core ops (the yardstick has exactly one)."""
        return max(self.hot_loops, key=lambda loop: loop.census["tensor"], default=None)

    def as_json(self) -> dict[str, Any]:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields["config"] = None if self.config is None else dataclasses.asdict(self.config)
        fields["loops"] = [loop.as_json() for loop in self.loops]
        return fields | {"warning_codes": self.warning_codes}


def analyse(launch: Launch, result: Mapping[str, Any]) -> KernelReport:
    """The report of one compiled launch (`result`: the worker's answer for its job)."""
    functions = [f for f in sass.parse(result["sass"]) if f.instructions]
    if len(functions) != 1:
        raise ValueError(f"attnc: expected one function in the SASS of {launch.kernel}, found {len(functions)}")
    function = functions[0]
    config = launch.config
    loops = sass.find_loops(function)
    tensor_loops = [loop for loop in loops if loop.tensor_ops]
    reports = [_loop_report(launch, loop, hot=loop.tensor_ops > 0 and not any(
        loop.contains(inner) for inner in tensor_loops)) for loop in loops]
    registers = result.get("cubin_registers") or result["registers"]
    return KernelReport(
        name=launch.name, kind=launch.kind, config=config, block_size=launch.block_size,
        specialized=launch.signature is None, registers=registers, spills=result["spills"],
        shared_memory=result["shared_memory"], matmul=sass.matmul_kind(function.instructions),
        tma_sass=sass.uses_tma(function.instructions), tma_ttgir=result["tma"],
        warp_specialized=result["warp_specialized"], ptxas_warnings=list(result["ptxas_warnings"]),
        instructions=len(function.instructions), loops=reports)


def _loop_report(launch: Launch, loop: sass.Loop, *, hot: bool) -> LoopReport:
    counts = sass.census(loop.body)
    config = launch.config
    # a kernel without tiles (the block-map builder) gets per-iteration figures: factor 1
    scale = config.num_warps / (config.block_m * config.block_n) if config else 1.0
    per_element = {"issue": loop.size * scale} | {name: counts[name] * scale for name in FIGURES[1:]}
    mma_work = None
    depth = matmul_depth(launch.kind, *launch.head_dims())
    if config and depth and loop.tensor_ops:
        macs = sass.tensor_macs(loop.body, config.num_warps)
        mma_work = macs / (config.block_m * config.block_n * depth)
    waits = sum(1 for i in loop.body if i.mnemonic == "WARPGROUP" and "DEPBAR" in i.modifiers)
    return LoopReport(loop.start, loop.end, loop.size, loop.out_of_line, loop.shortest_path, loop.longest_path,
                      loop.innermost, hot, counts, per_element, (loop.shortest_path * scale, loop.longest_path * scale),
                      mma_work, waits, sass.pipelining(loop))


def compile_launches(launches: Sequence[Launch], capability: int, *, python: str | None = None,
                     processes: int = 1) -> list[KernelReport]:
    """Compile and analyse each launch, in `processes` child processes at once (each compile takes one
    core for a few seconds)."""
    jobs = [x.job(capability) for x in launches]
    stride = max(1, min(processes, len(jobs)))
    # job n goes to worker n % stride, and its answer comes back to place n
    chunks = [jobs[start::stride] for start in range(stride)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=stride) as pool:
        answers = list(pool.map(lambda chunk: aot.compile_kernels(chunk, python=python) if chunk else [], chunks))
    results: list[Any] = [None] * len(jobs)
    for start, answer in enumerate(answers):
        results[start::stride] = answer
    return [analyse(x, r) for x, r in zip(launches, results, strict=True)]


# -- against the yardstick ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One attnc kernel's hot loops against the yardstick's main loop of the same kind."""

    kernel: str
    yardstick: str
    loops: list[dict[str, Any]]  # per hot loop: span, weight, figures and their ratios
    headline_max: float | None  # issue slots per element, the dearest hot loop / the yardstick's
    headline_weighted: float | None  # ... weighted by the share of tiles each hot loop visits
    weights_from: str  # how the weights were found

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def compare(kernel: KernelReport, yardstick: KernelReport, tile_shares: Mapping[str, float] | None) -> Comparison:
    """Ratios of `kernel`'s hot-loop figures to `yardstick`'s main loop. `tile_shares`: the shares of
    "partial" and "full" tiles the kernel visits (from `Attention.tile_stats`), which weight two hot loops:
    the larger body is taken to be the loop over partial tiles (it evaluates the mask), the smaller the
    loop over full ones. One hot loop weighs 1; with three or more no weighted figure is given."""
    main = yardstick.main_loop()
    hot = kernel.hot_loops
    weights, weights_from = _weights(hot, tile_shares)
    rows = []
    for loop, weight in zip(hot, weights, strict=True):
        ratios = {name: _ratio(loop.per_element[name], main.per_element[name]) if main else None for name in FIGURES}
        rows.append({"span": loop.span, "weight": weight, "per_element": loop.per_element, "ratio": ratios,
                     "path_ratio": [_ratio(p, main.per_element["issue"]) if main else None
                                    for p in loop.per_element_paths]})
    issue = [row["ratio"]["issue"] for row in rows if row["ratio"]["issue"] is not None]
    weighted = None
    if issue and len(issue) == len(rows) and all(w is not None for w in weights):
        weighted = sum(w * r for w, r in zip(weights, issue, strict=True))
    return Comparison(kernel.name, yardstick.name, rows, max(issue, default=None), weighted, weights_from)


def _weights(hot: Sequence[LoopReport], shares: Mapping[str, float] | None) -> tuple[list[float | None], str]:
    if len(hot) == 1:
        return [1.0], "one hot loop"
    if len(hot) == 2 and shares is not None:
        larger = max(range(2), key=lambda n: hot[n].size)
        weights: list[float | None] = [shares["full"], shares["full"]]
        weights[larger] = shares["partial"]
        return weights, "tile_stats: the larger hot loop visits the partial tiles, the smaller the full ones"
    return [None] * len(hot), "no weights: " + ("no tile counts" if len(hot) == 2 else f"{len(hot)} hot loops")


def _ratio(value: float, reference: float) -> float | None:
    return value / reference if reference else None


def tile_shares(stats: Mapping[str, int]) -> dict[str, float] | None:
    """The shares of visited tiles (partial and full; empty tiles are skipped) in `tile_stats` counts."""
    visited = stats["partial"] + stats["full"]
    if not visited:
        return None
    return {"partial": stats["partial"] / visited, "full": stats["full"] / visited}


def tile_grid(launch: Launch) -> tuple[int, int] | None:
    """The tile grid the launch's tile classes are counted on: its BlockMask's blocks, else its own tiles."""
    if launch.block_size is not None:
        return launch.block_size
    config = launch.config
    return None if config is None else (config.block_m, config.block_n)
