"""The kernels a launch runs, recorded with exactly the arguments it passes, as ahead-of-time compile jobs.

Triton specialises every launch on its arguments (an int equal to 1 becomes a constant; 16-byte aligned
pointers and multiples of 16 get divisibility hints that let loads vectorise), so a kernel compiled from its
signature alone is not the kernel a GPU runs: its loads stay scalar. Here attnc's own launchers
(`launch.launch_forward`, `launch_backward.launch_backward`) and the yardstick's run on CPU tensors of the
benchmark shape with a `Recorder` in place of each kernel; the recorded values become jobs that
`attnc.runtime.aot_worker` specialises the way the JIT does. Nothing is computed but the backward's O(rows)
delta, which the launcher takes from torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from attnc.codegen.backward import DKDV_KERNEL, DQ_KERNEL
from attnc.runtime import aot, launch, launch_backward, sparsity
from attnc.runtime import cache as kernel_files
from attnc.runtime.block_mask import block_size_pair
from attnc.runtime.config import KernelConfig

# Keyword arguments of a launch that are options of the compile, not kernel arguments.
LAUNCH_OPTIONS = ("num_warps", "num_stages")
# Triton's names for the element types of tensors passed to a kernel.
_ELEMENT = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.float64: "fp64",
            torch.int8: "i8", torch.int16: "i16", torch.int32: "i32", torch.int64: "i64", torch.uint8: "u8",
            torch.bool: "u1"}


class Recorder:
    """Stands in for a `@triton.jit` kernel: `recorder[grid](*args, **kwargs)` records the call."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def __getitem__(self, grid: Any) -> Any:
        def launch(*args: Any, **kwargs: Any) -> None:
            self.calls.append((args, kwargs))

        return launch

    def only_call(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if len(self.calls) != 1:
            raise RuntimeError(f"attnc: expected one launch of the kernel, recorded {len(self.calls)}")
        return self.calls[0]


def describe(value: Any) -> list[Any]:
    """A launch argument as the worker reads it: ["tensor", element type, 16-byte aligned], ["int", n],
    ["float", x], ["bool", b], ["str", s] or ["none"]."""
    if isinstance(value, torch.Tensor):
        return ["tensor", _ELEMENT[value.dtype], value.data_ptr() % 16 == 0]
    if isinstance(value, bool):
        return ["bool", value]
    for kind, types in (("int", int), ("float", float), ("str", str)):
        if isinstance(value, types):
            return [kind, value]
    if value is None:
        return ["none"]
    raise TypeError(f"attnc: cannot describe a launch argument of type {type(value).__name__}")


@dataclasses.dataclass(frozen=True)
class Shape:
    """The problem the kernels are launched for (the benchmark's, by default): dense [B, H, S, D] inputs."""

    batch: int = 2
    heads: int = 16
    seq_len: int = 4096
    head_dim: int = 128
    head_dim_v: int | None = None
    dtype: torch.dtype = torch.bfloat16

    @property
    def dv(self) -> int:
        return self.head_dim if self.head_dim_v is None else self.head_dim_v

    def inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Uninitialised q, k, v of this shape on the CPU (a recorded launch reads only their layout)."""
        q, k, v = (torch.empty(self.batch, self.heads, self.seq_len, d, dtype=self.dtype)
                   for d in (self.head_dim, self.head_dim, self.dv))
        return q, k, v

    def outputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Uninitialised out and lse, as the forward returns them."""
        return (torch.empty(self.batch, self.heads, self.seq_len, self.dv, dtype=self.dtype),
                torch.empty(self.batch, self.heads, self.seq_len, dtype=torch.float32))

    def shapes(self) -> launch.Shapes:
        return launch.Shapes(self.batch, self.heads, self.heads, self.seq_len, self.seq_len, self.head_dim, self.dv)

    def as_json(self) -> dict[str, Any]:
        return {"B": self.batch, "H": self.heads, "S": self.seq_len, "D": self.head_dim, "Dv": self.dv,
                "dtype": str(self.dtype).removeprefix("torch.")}


@dataclasses.dataclass(frozen=True)
class Launch:
    """One kernel launch: which kernel (a source file and a name), how it is used, what it was passed."""

    name: str  # "forward", "forward_block_mask", "backward_dkdv", ... (as `Attention.resources` names them)
    kind: str  # "forward", "backward_dkdv", "backward_dq", "block_map", "decode", "decode_combine"
    path: str
    kernel: str
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]
    block_size: tuple[int, int] | None = None  # the BlockMask's, when the kernel walks one
    # argument types when the launch is known only by the kernel's signature (no values: unspecialised)
    signature: Mapping[str, str] | None = None

    @property
    def config(self) -> KernelConfig | None:
        """The tile config of the launch, read back from what it passed (after any fitting to blocks)."""
        kw = self.kwargs
        if "BLOCK_M" not in kw:
            return None
        return KernelConfig(kw["BLOCK_M"], kw["BLOCK_N"], kw["num_warps"], kw["num_stages"],
                            tma=bool(kw.get("USE_TMA", False)), warp_specialize=bool(kw.get("WARP_SPECIALIZE", False)))

    def head_dims(self) -> tuple[int, int]:
        """The head dims the kernel's matmuls run at (padded to a power of two where the kernel pads)."""
        kw = self.kwargs
        return kw.get("D_PAD", kw.get("HEAD_D", 0)), kw.get("DV_PAD", kw.get("HEAD_DV", 0))

    def job(self, capability: int, *, disassemble: bool = True) -> dict[str, Any]:
        """The compile job for `aot.compile_kernels` (with the SASS and ptxas's messages when `disassemble`)."""
        options = {k: self.kwargs[k] for k in LAUNCH_OPTIONS}
        common = {"path": self.path, "kernel": self.kernel, **options, "capability": capability,
                  "disassemble": disassemble}
        if self.signature is not None:
            consts = {k: v for k, v in self.kwargs.items() if k not in LAUNCH_OPTIONS}
            return common | {"types": dict(self.signature), "constexprs": consts}
        kwargs = {k: describe(v) for k, v in self.kwargs.items() if k not in LAUNCH_OPTIONS}
        return common | {"launch_args": [describe(a) for a in self.args], "launch_kwargs": kwargs}


def _recorded(name: str, kind: str, path: Path, kernel: str, recorder: Recorder,
              block_size: tuple[int, int] | None = None) -> Launch:
    args, kwargs = recorder.only_call()
    return Launch(name, kind, str(path), kernel, args, kwargs, block_size)


# -- attnc ------------------------------------------------------------------------------------------------


def attnc_launches(attn: Any, shape: Shape, *, backward: bool, config: KernelConfig | None = None,
                   backward_configs: launch_backward.BackwardConfigs | None = None,
                   values: Mapping[str, Any] | None = None,
                   untuned: Callable[..., KernelConfig] | None = None) -> dict[str, Launch]:
    """The kernels a GPU call of `attn` launches at `shape` with the untuned default configs (or those
    given): "forward" as `attn(q, k, v)` runs it (closed-form tile loops; attnc's own block map for masks
    that read data), "forward_block_mask" as `flex_attention(..., block_mask=create_block_mask(mask_mod,
    None, None, S, S))` runs it (the benchmark's path), and with `backward` the dK/dV and dQ kernels of both
    (gradients of q, k, v only, as the benchmark asks). A mask whose blocks only pair-by-pair evaluation can
    classify also gets its block-map builder ("block_map"; compiled from its signature, unspecialised).
    `untuned(kind, block_mask=...)` gives the configs not given, per loop (`tuning.untuned_configs`: what an
    untuned launch picks for the loop it runs)."""
    bindings = attn._bind(values)
    cpu = torch.device("cpu")

    def aligned(default: KernelConfig, side: str, slots: tuple[int, ...]) -> KernelConfig:
        # as `Launcher.config` narrows an untuned launch's tile (`launch.aligned_block`)
        block = launch.aligned_block(getattr(default, side), bindings.params, slots)
        return dataclasses.replace(default, **{side: block})

    # the block map `attn(q, k, v)` builds itself (None for closed-form masks), and the benchmark's
    plans = {"": attn._data_plan(bindings, shape.shapes(), cpu),
             "_block_mask": attn.block_mask(None, None, shape.seq_len, shape.seq_len, device=cpu, **(values or {}))}
    common = {"shapes": shape.shapes(), "scale": None, "tensors": bindings.tensors, "params": bindings.params,
              "has_mask": attn.program.mask is not None, "interpret": False}
    if untuned is None and (config is None or (backward and backward_configs is None)):
        raise ValueError("attnc_launches: give the configs, or untuned(kind) to choose the ones not given")
    # each loop its own untuned config, as a launch picks it for the loop it runs (`Launcher.config`)
    configs = {suffix: config or aligned(untuned("forward", block_mask=plan is not None), "block_n",
                                         attn.source.tile_divisors) for suffix, plan in plans.items()}
    launches = _forward_launches(attn, plans, shape, configs, common)
    if attn.program.mask is not None and not sparsity.analysable(attn.program.mask):
        launches["block_map"] = _builder(attn)
    if backward:
        source = attn.backward_source
        pairs = {suffix: backward_configs or launch_backward.BackwardConfigs(
                     aligned(untuned("backward_dkdv", block_mask=plan is not None), "block_m",
                             source.dkdv_tile_divisors),
                     aligned(untuned("backward_dq", block_mask=plan is not None), "block_n",
                             source.dq_tile_divisors))
                 for suffix, plan in plans.items()}
        launches |= _backward_launches(attn, plans, shape, pairs, common)
    return launches


def _forward_launches(attn: Any, plans: Mapping[str, Any], shape: Shape, configs: Mapping[str, KernelConfig],
                      common: Mapping[str, Any]) -> dict[str, Launch]:
    path = kernel_files.kernel_cache().ensure_file(attn.source.source)
    launches = {}
    for suffix, plan in plans.items():
        recorder = Recorder()
        launch.launch_forward(recorder, *shape.inputs(), block_mask=plan, config=configs[suffix],
                              divisor_slots=attn.source.tile_divisors, factor_slot=attn.source.score_factor,
                              **common)
        launches["forward" + suffix] = _recorded("forward" + suffix, "forward", path, attn.source.kernel_name,
                                                 recorder, _block_size(plan))
    return launches


def _backward_launches(attn: Any, plans: Mapping[str, Any], shape: Shape,
                       configs: Mapping[str, launch_backward.BackwardConfigs],
                       common: Mapping[str, Any]) -> dict[str, Launch]:
    path = kernel_files.kernel_cache().ensure_file(attn.backward_source.source)
    out, lse = shape.outputs()
    slots = attn.backward_source.grad_slots
    launches = {}
    for suffix, plan in plans.items():
        dkdv, dq = Recorder(), Recorder()
        launch_backward.launch_backward(dkdv, dq, *shape.inputs(), out, lse, torch.empty_like(out), None,
                                        block_mask=plan, grad_slots=slots, grad_wanted=[False] * len(slots),
                                        configs=configs[suffix],
                                        divisor_slots=(attn.backward_source.dkdv_tile_divisors,
                                                                        attn.backward_source.dq_tile_divisors),
                                        factor_slot=attn.backward_source.score_factor,
                                        **common)
        for kind, kernel, recorder in (("backward_dkdv", DKDV_KERNEL, dkdv), ("backward_dq", DQ_KERNEL, dq)):
            launches[kind + suffix] = _recorded(kind + suffix, kind, path, kernel, recorder, _block_size(plan))
    return launches


def _block_size(plan: Any) -> tuple[int, int] | None:
    if plan is None:
        return None
    return block_size_pair(plan.BLOCK_SIZE)


def _builder(attn: Any) -> Launch:
    """The block-map builder's job from its signature (`aot.block_map_job`), as `Attention.resources`
    compiles it; it runs once per block map, outside the attention kernels."""
    path = kernel_files.kernel_cache().ensure_file(attn.block_map_source.source)
    return _from_job("block_map", "block_map", aot.block_map_job(path, attn.program, 0))


def decode_launches(attn: Any, shape: Shape, *, group: int = 8, query_rows: int = 1,
                    page_size: int = 64) -> dict[str, Launch]:
    """The split-KV decode kernels `kvcache_attention` launches for a GQA group of `group` query heads and
    `query_rows` new tokens (`aot.decode_job`): over a contiguous cache ("decode"), over pages of `page_size`
    read through a block table ("decode_paged"), and the combine of the splits ("decode_combine"); compiled
    from their signatures. One program covers a whole group, so each K/V tile its loop loads serves every
    query head of the group."""
    path = kernel_files.kernel_cache().ensure_file(attn.decode_source.source)
    jobs = {"decode": aot.decode_job(path, attn.program, shape.dtype, shape.head_dim, group, query_rows, 0),
            "decode_paged": aot.decode_job(path, attn.program, shape.dtype, shape.head_dim, group, query_rows, 0,
                                           page_size=page_size),
            "decode_combine": aot.combine_job(shape.dtype, shape.dv, 0)}
    return {name: _from_job(name, "decode_combine" if name == "decode_combine" else "decode", job)
            for name, job in jobs.items()}


def _from_job(name: str, kind: str, job: Mapping[str, Any]) -> Launch:
    kwargs = {**job["constexprs"], "num_warps": job["num_warps"], "num_stages": job["num_stages"]}
    return Launch(name, kind, str(job["path"]), job["kernel"], (), kwargs, signature=job["types"])


# -- the yardstick -----------------------------------------------------------------------------------------


def yardstick_launches(shape: Shape, *, backward: bool, use_tma: bool = True,
                       tiles: Mapping[str, tuple[int, int, int, int]] | None = None) -> dict[str, Launch]:
    """The yardstick's forward (and dK/dV, dQ) launches at `shape`, with its sm_90 tiles unless `tiles`
    gives others."""
    from attnc.perf import yardstick

    path = Path(yardstick.__file__)
    kinds = ("forward", "backward_dkdv", "backward_dq") if backward else ("forward",)
    tiles = {kind: (tiles or {}).get(kind) or yardstick.sm90_tiles(kind, shape.head_dim, shape.dv) for kind in kinds}
    recorders = {kind: Recorder() for kind in yardstick.KERNELS}
    q, k, v = shape.inputs()
    yardstick.forward(q, k, v, tiles=tiles["forward"], use_tma=use_tma, kernels=recorders)
    if backward:
        out, lse = shape.outputs()
        yardstick.backward(q, k, v, out, lse, torch.empty_like(out), tiles=tiles, use_tma=use_tma, kernels=recorders)
    return {kind: _recorded(kind, kind, path, yardstick.KERNELS[kind], recorders[kind]) for kind in kinds}
