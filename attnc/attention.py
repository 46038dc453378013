"""A compiled attention variant: `Attention` traces the mods and optimises the IR once, binds the mods' current
values at each call, and hands the rest to runtime objects with one job each, built afresh whenever it traces:

    kernels     each source and imported kernel, made on first use   runtime.kernels.VariantKernels
    planner     the block maps of a call or of `create_block_mask`    runtime.planner.BlockPlanner
    launcher    launch checks, block map, configs and the launches    runtime.launcher.Launcher
    reference   the call on the reference interpreter instead         runtime.reference_backend.ReferenceBackend
    tuner       tuning the kernels on a call's real inputs            runtime.tuner.VariantTuner
    report      `explain` and `tile_stats`                            runtime.describe.VariantReport

`attend` / `attend_backward` are the one body of eager calls (through autograd), the custom ops of
`attnc.runtime.graph_ops` under torch.compile, and the ring's backward; `decode` runs split-KV decoding.

The pipeline, in order (each step's name is also its label in `Attention.explain()`):

    trace      Python mods -> IR                      attnc.dsl.trace
    optimize   fold, simplify, canonicalise, hoist    attnc.ir.passes.PIPELINE
    generate   IR -> Triton source (forward)          attnc.codegen.forward
    cache      source -> file -> imported kernel      attnc.runtime.cache
    launch     validated arguments -> kernel          attnc.runtime.launcher, attnc.runtime.launch

The paths built on it (packed sequences and KV caches in `attnc.serving`, context parallelism in
`attnc.distributed`, the static reports of `attnc.perf`) import this module and call through `Attention`;
`attnc.api`, the public face, adds them to the `Attention` users get.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch

from attnc import arguments
from attnc.arguments import shared_kv_batch
from attnc.codegen.backward import BackwardSource
from attnc.codegen.forward import KernelSource
from attnc.dsl.text import TextVariant
from attnc.dsl.trace import StaleTrace, Traced, trace
from attnc.ir import Program
from attnc.ir.divisors import DivisorCheck
from attnc.ir.passes import optimize
from attnc.runtime import decode, graph_ops, launch, tuning
from attnc.runtime.autograd import AttentionFunction, needs_grad
from attnc.runtime.block_mask import BlockMask, as_batched
from attnc.runtime.config import KernelConfig
from attnc.runtime.describe import VariantReport
from attnc.runtime.kernel_options import CallOptions, KernelOptions, check_kernel_options
from attnc.runtime.kernels import VariantKernels
from attnc.runtime.launcher import Launcher, check_transposed_lists
from attnc.runtime.planner import BUILDERS, PLAN_BLOCK, BlockPlanner, evaluate_mask  # noqa: F401  (public here)
from attnc.runtime.reference_backend import ReferenceBackend
from attnc.runtime.tuner import VariantTuner

BACKENDS = ("auto", "triton", "reference")
MaskMod = Callable[..., Any]
ScoreMod = Callable[..., Any]


class Attention:
    """A compiled attention variant. Kernels are generated lazily on first use and cached; changing a
    captured Python scalar between calls changes a runtime argument, never the kernel.

    A variant in the text syntax (`text`) has its tensors and parameter values bound by name: `defaults`
    here, overridden by keyword arguments of each call (`attn(q, k, v, slopes=t, window=128)`)."""

    def __init__(self, mask_mod: MaskMod | None = None, score_mod: ScoreMod | None = None, *,
                 text: TextVariant | None = None, defaults: Mapping[str, Any] | None = None) -> None:
        self.mask_mod = mask_mod
        self.score_mod = score_mod
        self.text = text
        self.defaults = dict(defaults or {})
        if text is not None:
            text.check(self.defaults)
        self._retrace()

    def _retrace(self) -> None:
        self.traced: Traced | TextVariant = trace(self.mask_mod, self.score_mod) if self.text is None else self.text
        self.program: Program = optimize(self.traced.program)
        self._divisors = DivisorCheck(self.traced.program)
        # one job each: the kernels, the block maps, the launches, the reference interpreter, tuning, reports
        self.kernels = VariantKernels(self.program)
        self.planner = BlockPlanner(self.program, self.kernels, self._divisors, self.mask_mod)
        self.launcher = Launcher(self.program, self.kernels, self.planner, self)
        self.reference = ReferenceBackend(self.traced.program)
        self.tuner = VariantTuner(self.launcher, self.kernels, self)
        self.report = VariantReport(self.traced.program, self.program, self.kernels)

    # the kernels (attnc.runtime.kernels), by the names the launchers, reports and tests use
    @property
    def source(self) -> KernelSource:
        return self.kernels.forward_source

    def kernel(self) -> Any:
        """The forward kernel, generated and imported on first use."""
        return self.kernels.forward()

    @property
    def backward_source(self) -> BackwardSource:
        """The generated backward kernels (dK/dV and dQ, one module)."""
        return self.kernels.backward_source

    def backward_kernels(self) -> tuple[Any, Any]:
        """(dK/dV kernel, dQ kernel), generated and imported on first use."""
        return self.kernels.backward()

    @property
    def decode_source(self) -> KernelSource:
        """The generated split-KV decode kernel (attnc.codegen.decode)."""
        return self.kernels.decode_source

    def decode_kernel(self) -> Any:
        return self.kernels.decode()

    @property
    def block_map_source(self) -> KernelSource:
        """The generated block-map builder (for masks whose structure leaves blocks open)."""
        return self.kernels.block_map_source

    def block_map_kernel(self) -> Any:
        return self.kernels.block_map()

    def decode(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float | None = None, *,
               num_splits: int = 0, layout: decode.KeyLayout | None = None,
               bindings: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(out, lse) of `query [B, Hq, Q_LEN, D]` over `key, value [B, Hkv, KV_LEN, D]` by split-KV decoding
        (attnc.runtime.decode): one pass over each kv head's live key tiles for all the query heads of its group,
        the keys spread over `num_splits` programs (0: chosen from the SM count and the tiles to read), merged
        exactly by lse. `layout`: per-sequence key lengths, page pools read through a block table (see
        `decode.KeyLayout`; the caller checks the table). Always the generated kernels (in the Triton interpreter
        on CPU tensors); no gradients."""
        layout = layout or decode.KeyLayout()
        shapes = decode.check_decode_inputs(query, key, value, layout)
        bindings = self._bind() if bindings is None else bindings
        self._check_divisors(shapes, bindings, query.device)
        return self.launcher.decode(query, key, value, scale, bindings, shapes, num_splits=num_splits, layout=layout)

    def block_mask(self, B: int | None, H: int | None, Q_LEN: int, KV_LEN: int, device: Any = None,
                   BLOCK_SIZE: int | tuple[int, int] = 128, *, builder: str = "auto", **values: Any) -> BlockMask:
        """The variant's block map as a BlockMask, built once and passed to every call (and layer) that
        shares the mask: `attn(q, k, v, block_mask=bm)`. `builder` (see BUILDERS): "auto" uses the
        structure when it decides every block's class without pair-by-pair work, else the generated kernel
        on a GPU and dense torch on the CPU. `values`: a text variant's tensors and parameters by name."""
        _check_sizes(B=B, H=H, Q_LEN=Q_LEN, KV_LEN=KV_LEN, optional=True)
        return self.planner.build(self._bind(values), B or 1, H or 1, Q_LEN, KV_LEN, device, BLOCK_SIZE, builder)

    def _bind(self, values: Mapping[str, Any] | None = None) -> Any:
        if self.text is not None:
            return self.text.bind({**self.defaults, **(values or {})})
        if values:
            raise ValueError(f"attnc: unexpected keyword arguments {sorted(values)}: binding tensors and parameters "
                             "by name is for variants in the text syntax; Python mods capture their own")
        return self.bind_mods(self.mask_mod, self.score_mod)

    def bind_mods(self, mask_mod: MaskMod | None, score_mod: ScoreMod | None) -> Any:
        """The current values of these mods' runtime data (the mods this variant was made from, or the same
        functions reached another way); traced again first if they no longer have the traced shape."""
        try:
            return self.traced.bind(mask_mod, score_mod)
        except StaleTrace:
            self._retrace()
            return self.traced.bind(mask_mod, score_mod)

    def __call__(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float | None = None,
                 return_lse: bool = False, *, block_mask: Any = None, enable_gqa: bool = True,
                 backend: str = "auto", kernel_options: dict[str, int] | None = None,
                 deterministic: bool = False, **values: Any) -> Any:
        """Attention of `query` over `key` / `value`. Differentiable (q, k, v and captured floating tensors).
        `deterministic=True` computes captured-tensor gradients without atomics, bitwise reproducibly (see
        `attnc.runtime.deterministic` for what it costs); q, k and v gradients are always deterministic.
        `values`: a text variant's tensors and parameters by name (`slopes=t, window=128`)."""
        options = CallOptions(scale, enable_gqa, backend, kernel_options, deterministic)
        if torch.compiler.is_compiling():  # torch.compile / torch.export: the kernels as custom ops
            if self.text is not None:  # the values by name: graph inputs
                out, lse = graph_ops.attend_text(self, {**self.defaults, **values}, query, key, value, block_mask,
                                                 options)
            else:
                if values:
                    self._bind(values)  # refused: Python mods capture their own values
                out, lse = graph_ops.attend(self, self.mask_mod, self.score_mod, query, key, value, block_mask,
                                            options)
        else:
            call = _checked_call(query, key, value, options)  # the arguments' errors come before the mods'
            out, lse = self._attend(call, self._bind(values), block_mask, options)
        return (out, lse) if return_lse else out

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bindings: Any, block_mask: Any,
               options: CallOptions) -> tuple[torch.Tensor, torch.Tensor]:
        """(out, lse) for bound values: differentiable through autograd.Function when called directly, and
        the body of the custom op under torch.compile (attnc.runtime.graph_ops), where autograd is off."""
        return self._attend(_checked_call(query, key, value, options), bindings, block_mask, options)

    def _attend(self, call: _CheckedCall, bindings: Any, block_mask: Any,
                options: CallOptions) -> tuple[torch.Tensor, torch.Tensor]:
        query, key, value, shapes, kernel_options = call
        block_mask = as_batched(block_mask) if block_mask is not None else None
        self._check_divisors(shapes, bindings, query.device)
        if choose_backend(options.backend, query) == "reference":
            return self.reference.forward(query, key, value, options.scale, bindings, block_mask, shapes)
        plan = self.launcher.plan(query, key, value, options.scale, bindings, block_mask, shapes, kernel_options,
                                  options.deterministic)
        if not needs_grad(query, key, value, *bindings.tensors):
            return plan.forward(query, key, value, bindings.tensors)
        return AttentionFunction.apply(plan, query, key, value, *bindings.tensors)

    def attend_backward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, out: torch.Tensor,
                        lse: torch.Tensor, dout: torch.Tensor, dlse: torch.Tensor | None, bindings: Any,
                        block_mask: Any, options: CallOptions, wanted: list[bool]) -> Any:
        """The gradients of `attend` (dq, dk, dv, {slot: gradient of the captured tensor}) without autograd:
        the backward custom op under torch.compile. The reference backend differentiates its own forward."""
        shapes = launch.check_inputs(query, key, value, enable_gqa=options.enable_gqa)
        block_mask = as_batched(block_mask) if block_mask is not None else None
        if block_mask is not None:
            launch.check_block_mask(block_mask, shapes, query.device)
            check_transposed_lists(block_mask)
        if choose_backend(options.backend, query) == "reference":
            return self.reference.backward(query, key, value, out, lse, dout, dlse, bindings, block_mask,
                                           options.scale, wanted)
        plan = self.launcher.plan(query, key, value, options.scale, bindings, block_mask, shapes,
                                  check_kernel_options(options.kernel_options), options.deterministic)
        return plan.backward(query, key, value, out, lse, dout, dlse, bindings.tensors, wanted)

    def _check_divisors(self, shapes: launch.Shapes, bindings: Any, device: torch.device) -> None:
        """The mods' divisions by values of this call (its lengths, parameters, captured tensors) divide by
        no zero (`DivisorCheck`), whichever backend runs."""
        self._divisors.check((shapes.B, shapes.Hq, shapes.Q_LEN, shapes.KV_LEN), bindings.tensors, bindings.params,
                             bindings.version_key(), device)

    def tune(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float | None = None, *,
             block_mask: Any = None, enable_gqa: bool = True, backward: bool = False,
             timer: Callable[[Callable[[], None]], float] | None = None,
             configs: Sequence[KernelConfig] | None = None, limit: int | None = None,
             progress: tuning.Progress | None = None, **values: Any) -> dict[str, KernelConfig]:
        """Tune this variant's kernels for these inputs' shape bucket on this GPU, and remember the choice in
        `tuning.json` beside the kernel cache: later calls (in any process) launch with it, without
        benchmarking. The kernels run on these inputs, with the variant's own block sparsity. With
        `backward=True` the dK/dV and dQ kernels are tuned too. `configs`: the candidates (default: the
        architecture's default and every candidate that fits, at most `limit` of them, then the Hopper options on
        the fastest).
        `timer(fn) -> ms` defaults to CUDA-event timing on a GPU; in the Triton interpreter one must be given.
        Returns the config chosen per kernel ("forward", "backward_dkdv", "backward_dq")."""
        query, key, value, shapes, _ = _checked_call(query, key, value, CallOptions(scale, enable_gqa))
        bindings = self._bind(values)
        return self.tuner.tune(query, key, value, shapes, scale, bindings, block_mask, backward=backward, timer=timer,
                               configs=configs, limit=limit, progress=progress)

    def _data_plan(self, bindings: Any, shapes: launch.Shapes, device: torch.device) -> BlockMask | None:
        """The block map attnc builds for a mask that reads data (`BlockPlanner.data_plan`); None otherwise."""
        return self.planner.data_plan(bindings, shapes, device)

    def tile_stats(self, B: int, H: int, Q_LEN: int, KV_LEN: int, *, BLOCK_M: int = 128,
                   BLOCK_N: int = 128, device: Any = "cpu", **values: Any) -> dict[str, int]:
        """How many (query tile, key tile) pairs the kernel skips ("empty"), masks ("partial") and
        attends without the mask ("full"), summed over B x H, for tiles of BLOCK_M x BLOCK_N. `values`: a
        text variant's tensors and parameters by name."""
        _check_sizes(B=B, H=H, Q_LEN=Q_LEN, KV_LEN=KV_LEN, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N)
        bindings = self._bind(values) if self.program.mask is not None else None
        return self.report.tile_stats(bindings, B, H, Q_LEN, KV_LEN, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N,
                                      device=device)

    def max_scores(self, query: torch.Tensor, key: torch.Tensor, lse: torch.Tensor, scale: float | None = None, *,
                   block_mask: Any = None, **values: Any) -> torch.Tensor:
        """float32 `[B, Hq, Q_LEN]`: each row's largest logit (after the score mod, over the keys it may
        attend to), -inf for a row without one. `lse` from a call on these inputs: a kernel's lse carries
        the maximum it kept; otherwise the logits are evaluated again."""
        written = launch.written_statistics(lse.detach())
        if written is not None:
            return torch.where(torch.isneginf(lse.detach()), -math.inf, written[1] * math.log(2.0))
        key, _ = shared_kv_batch(query, key, key)
        bindings = self._bind(values)
        block_mask = as_batched(block_mask) if block_mask is not None else None
        return self.reference.max_scores(query, key, scale, bindings, block_mask)

    def explain(self, *, backward: bool = False) -> str:
        """The traced IR, the IR after each optimisation step, where each generated value is computed
        (hoisted out of the key loop or not), and the generated Triton source; with `backward=True` also
        the backward kernels' source."""
        return self.report.explain(backward=backward)


class _CheckedCall(NamedTuple):
    """A call's tensors after the argument checks: key / value broadcast over the batch, the shapes, the
    kernel options (checked before anything launches)."""

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    shapes: launch.Shapes
    kernel_options: KernelOptions


def _checked_call(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, options: CallOptions) -> _CheckedCall:
    arguments.check_attention_tensors(query, key, value)
    key, value = shared_kv_batch(query, key, value)
    shapes = launch.check_inputs(query, key, value, enable_gqa=options.enable_gqa)
    return _CheckedCall(query, key, value, shapes, check_kernel_options(options.kernel_options))


def _check_sizes(*, optional: bool = False, **sizes: Any) -> None:
    """Lengths (`*_LEN`) in int32 range; batch, heads and blocks positive (B and H may be None if `optional`)."""
    for name, n in sizes.items():
        if name.endswith("_LEN"):
            arguments.check_length(name, n)
        else:
            arguments.check_count(name, n, optional=optional and name in ("B", "H"))


_WARNED: set[str] = set()


def choose_backend(backend: str, query: torch.Tensor) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"attnc: backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    if query.device.type == "cuda" and query.dtype in launch.KERNEL_DTYPES:
        return "triton"
    if query.device.type == "cuda":
        message = f"attnc: backend='auto' runs {query.dtype} inputs on the reference interpreter"
    else:
        message = (f"attnc: backend='auto' on {query.device.type} tensors runs the reference interpreter; pass "
                   "backend='triton' to run the generated kernel in the Triton interpreter")
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, stacklevel=3)
    return "reference"
