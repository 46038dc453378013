"""A compiled attention variant: `Attention` traces the mods, optimises the IR, generates and caches the kernels,
plans the block maps a call needs and launches them, forward and backward (through autograd, or as the
custom ops of `attnc.runtime.graph_ops` under torch.compile).

The pipeline, in order (each step's name is also its label in `Attention.explain()`):

    trace      Python mods -> IR                      attnc.dsl.trace
    optimize   fold, simplify, canonicalise, hoist    attnc.ir.passes.PIPELINE
    generate   IR -> Triton source (forward)          attnc.codegen.forward
    cache      source -> file -> imported kernel      attnc.runtime.cache
    launch     validated arguments -> kernel          attnc.runtime.launch

The paths built on it (packed sequences and KV caches in `attnc.serving`, context parallelism in
`attnc.distributed`, the static reports of `attnc.perf`) import this module; `attnc.api`, the public face,
adds them to the `Attention` users get.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
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
from attnc.ir import DType, Op, Program, TensorSpec, const, load, node, var
from attnc.ir.divisors import DivisorCheck
from attnc.ir.passes import optimize
from attnc.ir.printer import format_program
from attnc.ir.reference import reference_attention, reference_gradients, reference_max_scores
from attnc.runtime import decode, graph_ops, launch, launch_backward, sparsity, tuning
from attnc.runtime.autograd import AttentionFunction, GradientPlan, needs_grad
from attnc.runtime.block_mask import BlockMask, as_batched, block_size_pair
from attnc.runtime.config import (
    KernelConfig,
)
from attnc.runtime.deterministic import captured_gradients
from attnc.runtime.interpreter import INTERPRETER_UNAVAILABLE, interpreter_active
from attnc.runtime.kernel_options import CallOptions, KernelOptions, check_kernel_options
from attnc.runtime.kernels import VariantKernels
from attnc.runtime.planner import BUILDERS, PLAN_BLOCK, BlockPlanner, evaluate_mask  # noqa: F401  (public here)

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
        self.kernels = VariantKernels(self.program)  # sources and imported kernels, each made on first use
        self.planner = BlockPlanner(self.program, self.kernels, self._divisors, self.mask_mod)  # block maps

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
        launch.check_kernel_dtype(query)
        bindings = self._bind() if bindings is None else bindings
        self._divisors.check((shapes.B, shapes.Hq, shapes.Q_LEN, shapes.KV_LEN), bindings.tensors, bindings.params,
                             bindings.version_key(), query.device)
        if query.device.type != "cuda" and not interpreter_active():
            raise RuntimeError(INTERPRETER_UNAVAILABLE)
        launch.check_captures(bindings.tensors, query.device)
        lists = decode.tile_lists(self.program, bindings.tensors, bindings.params, shapes, query.device)
        return decode.launch_decode(self.decode_kernel(), query, key, value, lists, shapes=shapes, scale=scale,
                                    tensors=bindings.tensors, params=bindings.params, num_splits=num_splits,
                                    interpret=query.device.type != "cuda", layout=layout)

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
        self._divisors.check((shapes.B, shapes.Hq, shapes.Q_LEN, shapes.KV_LEN), bindings.tensors, bindings.params,
                             bindings.version_key(), query.device)
        if choose_backend(options.backend, query) == "reference":
            return self._reference(query, key, value, options.scale, bindings, block_mask, shapes)
        plan = self._triton_plan(query, key, value, options.scale, bindings, block_mask, shapes, kernel_options,
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
            _check_transposed_lists(block_mask)
        if choose_backend(options.backend, query) == "reference":
            return _reference_backward(self, query, key, value, out, lse, dout, dlse, bindings, block_mask, options,
                                       wanted)
        plan = self._triton_plan(query, key, value, options.scale, bindings, block_mask, shapes,
                                 check_kernel_options(options.kernel_options), options.deterministic)
        return plan.backward(query, key, value, out, lse, dout, dlse, bindings.tensors, wanted)

    def _triton_plan(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float | None,
                     bindings: Any, block_mask: Any, shapes: launch.Shapes, kernel_options: KernelOptions,
                     deterministic: bool) -> GradientPlan:
        launch.check_kernel_dtype(query)
        interpret = query.device.type != "cuda"
        given = block_mask
        block_mask = self.planner.for_launch(query, bindings, shapes, block_mask)
        config = kernel_options.forward_config(self._launch_config("forward", shapes, query))
        if given is not None and needs_grad(query, key, value, *bindings.tensors):
            launch.check_block_mask(block_mask, shapes, query.device)
            _check_transposed_lists(block_mask)

        def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    tensors: Any) -> tuple[torch.Tensor, torch.Tensor]:
            return launch.launch_forward(
                self.kernel(), q, k, v, shapes=shapes, scale=scale, tensors=tensors, params=bindings.params,
                block_mask=block_mask, config=config, has_mask=self.program.mask is not None, interpret=interpret)

        def backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                     dout: torch.Tensor, dlse: torch.Tensor | None, tensors: Any, wanted: list[bool]) -> Any:
            slots = self.backward_source.grad_slots
            by_kernel = [wanted[slot] and not deterministic for slot in slots]
            configs = _backward_with_options(self._backward_launch_configs(shapes, q), kernel_options)
            dq, dk, dv, grads = self._launch_backward(q, k, v, out, lse, dout, dlse, tensors, bindings, shapes,
                                                      scale, block_mask, configs, by_kernel)
            ordered = [slot for slot in slots if wanted[slot] and deterministic]
            if ordered:
                program = self.program if block_mask is None else _with_block_sparsity(
                    self.program, list(tensors), block_mask)[0]
                all_tensors = list(tensors) if block_mask is None else [*tensors, block_mask.to_dense()]
                grads |= captured_gradients(
                    program, q, k, v, lse, launch_backward.delta_rows(out, dout, dlse), dout, tensors=all_tensors,
                    params=bindings.params, scale=_scale(scale, shapes), slots=ordered)
            return dq, dk, dv, grads

        return GradientPlan(shapes, forward, backward)

    def _launch_config(self, kind: str, shapes: launch.Shapes, query: torch.Tensor) -> KernelConfig:
        source = self.source.source if kind == "forward" else self.backward_source.source
        return tuning.launch_config(kind, shapes, source, query.dtype, query.device, attn=self)

    def _backward_launch_configs(self, shapes: launch.Shapes, query: torch.Tensor) -> launch_backward.BackwardConfigs:
        return launch_backward.BackwardConfigs(self._launch_config("backward_dkdv", shapes, query),
                                               self._launch_config("backward_dq", shapes, query))

    def _launch_backward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                         lse: torch.Tensor, dout: torch.Tensor, dlse: torch.Tensor | None, tensors: Any,
                         bindings: Any, shapes: launch.Shapes, scale: float | None, block_mask: Any,
                         configs: launch_backward.BackwardConfigs, grad_wanted: list[bool]) -> Any:
        dkdv, dq_kernel = self.backward_kernels()
        return launch_backward.launch_backward(
            dkdv, dq_kernel, q, k, v, out, lse, dout, dlse, shapes=shapes, scale=scale, tensors=tensors,
            params=bindings.params, grad_slots=self.backward_source.grad_slots, grad_wanted=grad_wanted,
            block_mask=block_mask, configs=configs, has_mask=self.program.mask is not None,
            interpret=q.device.type != "cuda")

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
        key, value = shared_kv_batch(query, key, value)
        arguments.check_attention_tensors(query, key, value)
        shapes = launch.check_inputs(query, key, value, enable_gqa=enable_gqa)
        launch.check_kernel_dtype(query)
        bindings = self._bind(values)
        if block_mask is not None:
            block_mask = as_batched(block_mask)
            launch.check_block_mask(block_mask, shapes, query.device)
        block_mask = self.planner.for_launch(query, bindings, shapes, block_mask)
        has_mask = self.program.mask is not None
        common = {"shapes": shapes, "dtype": query.dtype, "device": query.device, "timer": timer,
                  "configs": configs, "limit": limit, "progress": progress, "attn": self}

        def forward(config: KernelConfig) -> tuple[torch.Tensor, torch.Tensor]:
            return launch.launch_forward(self.kernel(), query, key, value, shapes=shapes, scale=scale,
                                         tensors=bindings.tensors, params=bindings.params, block_mask=block_mask,
                                         config=config, has_mask=has_mask, interpret=query.device.type != "cuda")

        chosen = {"forward": tuning.tune_kernel("forward", source=self.source.source, run=forward, **common)}
        if not backward:
            return chosen
        with torch.no_grad():
            out, lse = forward(chosen["forward"])
        dout = torch.randn_like(out)
        no_grads = [False] * len(self.backward_source.grad_slots)
        current = self._backward_launch_configs(shapes, query)

        def run_backward(configs: launch_backward.BackwardConfigs) -> None:
            self._launch_backward(query, key, value, out, lse, dout, None, bindings.tensors, bindings, shapes, scale,
                                  block_mask, configs, no_grads)

        source = self.backward_source.source
        chosen["backward_dkdv"] = tuning.tune_kernel(
            "backward_dkdv", source=source, run=lambda c: run_backward(dataclasses.replace(current, dkdv=c)), **common)
        current = dataclasses.replace(current, dkdv=chosen["backward_dkdv"])
        chosen["backward_dq"] = tuning.tune_kernel(
            "backward_dq", source=source, run=lambda c: run_backward(dataclasses.replace(current, dq=c)), **common)
        return chosen

    def _data_plan(self, bindings: Any, shapes: launch.Shapes, device: torch.device) -> BlockMask | None:
        """The block map attnc builds for a mask that reads data (`BlockPlanner.data_plan`); None otherwise."""
        return self.planner.data_plan(bindings, shapes, device)

    def tile_stats(self, B: int, H: int, Q_LEN: int, KV_LEN: int, *, BLOCK_M: int = 128,
                   BLOCK_N: int = 128, device: Any = "cpu", **values: Any) -> dict[str, int]:
        """How many (query tile, key tile) pairs the kernel skips ("empty"), masks ("partial") and
        attends without the mask ("full"), summed over B x H, for tiles of BLOCK_M x BLOCK_N. `values`: a
        text variant's tensors and parameters by name."""
        _check_sizes(B=B, H=H, Q_LEN=Q_LEN, KV_LEN=KV_LEN, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N)
        shapes = (B, H, -(-Q_LEN // BLOCK_M), -(-KV_LEN // BLOCK_N))
        if self.program.mask is None:
            return {"empty": 0, "partial": 0, "full": shapes[0] * shapes[1] * shapes[2] * shapes[3]}
        bindings = self._bind(values)
        if not sparsity.analysable(self.program.mask):
            return {"empty": 0, "partial": B * H * shapes[2] * shapes[3], "full": 0}
        classes = sparsity.classify_blocks(self.program, bindings.tensors, bindings.params, B=B, H=H,
                                           Q_LEN=Q_LEN, KV_LEN=KV_LEN, q_block=BLOCK_M, kv_block=BLOCK_N,
                                           device=torch.device(device))
        counts = torch.bincount(classes.flatten().long(), minlength=3).tolist()
        return {"empty": counts[0], "partial": counts[1], "full": counts[2]}

    def _reference(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float | None,
                   bindings: Any, block_mask: Any, shapes: launch.Shapes) -> tuple[torch.Tensor, torch.Tensor]:
        program, tensors = self.traced.program, list(bindings.tensors)
        if block_mask is not None:
            launch.check_block_mask(block_mask, shapes, query.device)
            program, tensors = _with_block_sparsity(program, tensors, block_mask)
        out, lse = reference_attention(program, query, key, value, tensors=tensors, params=bindings.params,
                                       scale=scale, float64=query.dtype == torch.float64)
        return launch.in_order_of(query, out), lse

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
        program, tensors = self.traced.program, list(bindings.tensors)
        if block_mask is not None:
            program, tensors = _with_block_sparsity(program, tensors, as_batched(block_mask))
        return reference_max_scores(program, query, key, tensors=tensors, params=bindings.params, scale=scale)

    def explain(self, *, backward: bool = False) -> str:
        """The traced IR, the IR after each optimisation step, where each generated value is computed
        (hoisted out of the key loop or not), and the generated Triton source; with `backward=True` also
        the backward kernels' source."""
        sections = [("traced", format_program(self.traced.program))]
        optimize(self.traced.program, on_step=lambda name, p: sections.append((name, format_program(p))))
        sections.append(("placement", self.source.describe_placement()))
        sections.append(("triton source", self.source.source))
        if backward:
            sections.append(("backward triton source", self.backward_source.source))
        return "\n\n".join(f"== {title} ==\n{body.rstrip()}" for title, body in sections)


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


def _reference_backward(attn: Attention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        out: torch.Tensor, lse: torch.Tensor, dout: torch.Tensor, dlse: torch.Tensor | None,
                        bindings: Any, block_mask: Any, options: CallOptions, wanted: list[bool]) -> Any:
    """The reference backend's gradients against the given output and lse (`reference_gradients`), for the
    backward custom op and the ring. A custom op runs below autograd (its dispatch keys are excluded on this
    thread), so the autograd this needs runs on a thread of its own, where they are not."""
    program, tensors = attn.traced.program, [t.detach().requires_grad_(want)
                                             for t, want in zip(bindings.tensors, wanted, strict=True)]
    if block_mask is not None:
        program, tensors = _with_block_sparsity(program, tensors, block_mask)

    def gradients() -> Any:
        return reference_gradients(program, query, key, value, out, lse, dout, dlse, tensors=tensors,
                                   params=bindings.params, scale=options.scale,
                                   float64=query.dtype == torch.float64)

    with concurrent.futures.ThreadPoolExecutor(1) as worker:
        dq, dk, dv, *captured = worker.submit(gradients).result()
    return dq, dk, dv, {slot: torch.zeros_like(bindings.tensors[slot]) if g is None else g
                        for slot, g in enumerate(captured[:len(wanted)]) if wanted[slot]}


def _check_sizes(*, optional: bool = False, **sizes: Any) -> None:
    """Lengths (`*_LEN`) in int32 range; batch, heads and blocks positive (B and H may be None if `optional`)."""
    for name, n in sizes.items():
        if name.endswith("_LEN"):
            arguments.check_length(name, n)
        else:
            arguments.check_count(name, n, optional=optional and name in ("B", "H"))


def _check_transposed_lists(block_mask: Any) -> None:
    if getattr(block_mask, "q_num_blocks", None) is None or getattr(block_mask, "q_indices", None) is None:
        raise ValueError("attnc: the backward needs the BlockMask's query-side lists (q_num_blocks, q_indices); "
                         "build it with attnc.create_block_mask")


def _scale(scale: float | None, shapes: launch.Shapes) -> float:
    return float(scale) if scale is not None else 1.0 / math.sqrt(shapes.D)


def _backward_with_options(configs: launch_backward.BackwardConfigs,
                           options: KernelOptions) -> launch_backward.BackwardConfigs:
    return launch_backward.BackwardConfigs(options.backward_config("dkdv", configs.dkdv),
                                           options.backward_config("dq", configs.dq))


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


def _with_block_sparsity(program: Program, tensors: list[torch.Tensor],
                         block_mask: Any) -> tuple[Program, list[torch.Tensor]]:
    """The program whose mask also requires the (q, kv) block to be listed in `block_mask`: the
    reference then means exactly what the kernel computes, which visits listed blocks only."""
    q_block, kv_block = block_size_pair(block_mask.BLOCK_SIZE)
    slot = len(tensors)
    index = (var("b"), var("h"), _div(var("q"), q_block), _div(var("kv"), kv_block))
    listed = node(Op.NE, DType.bool, load(slot, DType.int32, *index), _const_int(0))
    mask = listed if program.mask is None else node(Op.AND, DType.bool, program.mask, listed)
    spec = TensorSpec(DType.int32, 4)
    return program.replace(mask=mask, tensors=(*program.tensors, spec)), [*tensors, block_mask.to_dense()]


def _div(index: Any, block: int) -> Any:
    return node(Op.FLOORDIV, DType.int32, index, _const_int(block))


def _const_int(value: int) -> Any:
    return const(value, DType.int32)
