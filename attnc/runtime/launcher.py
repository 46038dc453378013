"""Running one variant's kernels for a call: the checks every launch makes first, the block map its kernels
walk, each kernel's config, and the launches (forward, backward, split-KV decode).

Every path that runs the generated kernels comes through here: `Attention.attend` / `attend_backward` (eager
calls, the custom ops of `attnc.runtime.graph_ops`, the ring's backward), `Attention.decode` (the inference
paths) and tuning (`attnc.runtime.tuner`), so the checks, the block map and the config choice are made one way.

    prepare   a way to run kernels, kernel dtype, captures on the inputs' device; the block map (the caller's,
              else the one `BlockPlanner.data_plan` builds for a mask that reads data)
    config    the tuned config, else the spill-free default (`attnc.runtime.tuning.launch_config`)
    plan      the forward and backward of one differentiable call (`GradientPlan`), over the two above
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

from attnc.ir import Program
from attnc.runtime import decode, launch, launch_backward, tuning
from attnc.runtime.autograd import GradientPlan, needs_grad
from attnc.runtime.config import KernelConfig
from attnc.runtime.deterministic import captured_gradients
from attnc.runtime.interpreter import INTERPRETER_UNAVAILABLE, interpreter_active
from attnc.runtime.kernel_options import KernelOptions
from attnc.runtime.kernels import VariantKernels
from attnc.runtime.planner import BlockPlanner
from attnc.runtime.sparsity import with_block_sparsity


class Launcher:
    """Launches the kernels of one optimised program. `variant` is the compiled variant the kernels belong
    to: an untuned launch compiles its launches ahead of time to find a spill-free config
    (`tuning.spill_free_default`)."""

    def __init__(self, program: Program, kernels: VariantKernels, planner: BlockPlanner, variant: Any) -> None:
        self.program = program
        self.kernels = kernels
        self.planner = planner
        self.variant = variant

    def runnable(self, query: torch.Tensor, bindings: Any) -> None:
        """A way to run kernels on the inputs' device (a GPU, or the Triton interpreter), and the captured
        tensors there."""
        if query.device.type != "cuda" and not interpreter_active():
            raise RuntimeError(INTERPRETER_UNAVAILABLE)
        launch.check_captures(bindings.tensors, query.device)

    def prepare(self, query: torch.Tensor, bindings: Any, shapes: launch.Shapes, block_mask: Any) -> Any:
        """What every forward and backward launch checks first, and the block map its kernels walk: the
        caller's, else the one built for a mask that reads data (None: the kernels find their tiles)."""
        launch.check_kernel_dtype(query)
        self.runnable(query, bindings)
        return self.planner.data_plan(bindings, shapes, query.device) if block_mask is None else block_mask

    def config(self, kind: str, shapes: launch.Shapes, query: torch.Tensor, params: Sequence[int | float] = (),
               block_mask: bool | None = None) -> KernelConfig:
        """The config a launch of `kind` ("forward", "backward_dkdv", "backward_dq") uses on these inputs, in the
        loop it runs (`block_mask`: a BlockMask's, or the closed-form one; None: either): the tuned or default
        one, its tile narrowed where that aligns the tile index's divisions (`launch.aligned_block`)."""
        source = self.kernels.forward_source.source if kind == "forward" else self.kernels.backward_source.source
        config = tuning.launch_config(kind, shapes, source, query.dtype, query.device, attn=self.variant,
                                      block_mask=block_mask)
        if kind == "forward":
            block_n = launch.aligned_block(config.block_n, params, self.kernels.forward_source.tile_divisors)
            return dataclasses.replace(config, block_n=block_n)
        backward = self.kernels.backward_source
        if kind == "backward_dkdv":
            return dataclasses.replace(config, block_m=launch.aligned_block(config.block_m, params,
                                                                            backward.dkdv_tile_divisors))
        return dataclasses.replace(config, block_n=launch.aligned_block(config.block_n, params,
                                                                        backward.dq_tile_divisors))

    def backward_configs(self, shapes: launch.Shapes, query: torch.Tensor, params: Sequence[int | float] = (),
                         block_mask: bool | None = None) -> launch_backward.BackwardConfigs:
        return launch_backward.BackwardConfigs(self.config("backward_dkdv", shapes, query, params, block_mask),
                                               self.config("backward_dq", shapes, query, params, block_mask))

    def plan(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float | None, bindings: Any,
             block_mask: Any, shapes: launch.Shapes, kernel_options: KernelOptions,
             deterministic: bool) -> GradientPlan:
        """The forward and backward of one call on checked arguments. A caller's BlockMask that the backward
        may walk must carry its query-side lists; that is checked here, before the forward runs."""
        given = block_mask
        block_mask = self.prepare(query, bindings, shapes, block_mask)
        config = kernel_options.forward_config(self.config("forward", shapes, query, bindings.params,
                                                           block_mask is not None))
        if given is not None and needs_grad(query, key, value, *bindings.tensors):
            launch.check_block_mask(block_mask, shapes, query.device)
            check_transposed_lists(block_mask)

        def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    tensors: Any) -> tuple[torch.Tensor, torch.Tensor]:
            return self.forward(q, k, v, tensors, bindings.params, shapes=shapes, scale=scale,
                                block_mask=block_mask, config=config)

        def backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                     dout: torch.Tensor, dlse: torch.Tensor | None, tensors: Any, wanted: list[bool]) -> Any:
            slots = self.kernels.backward_source.grad_slots
            # with `deterministic`, captured gradients come from the ordered pass below, not the kernels' atomics
            by_kernel = [wanted[slot] and not deterministic for slot in slots]
            configs = _with_options(self.backward_configs(shapes, q, bindings.params, block_mask is not None),
                                    kernel_options)
            dq, dk, dv, grads = self.backward(q, k, v, out, lse, dout, dlse, tensors, bindings.params,
                                              shapes=shapes, scale=scale, block_mask=block_mask, configs=configs,
                                              grad_wanted=by_kernel)
            ordered = [slot for slot in slots if wanted[slot] and deterministic]
            if ordered:
                program, all_tensors = self.program, list(tensors)
                if block_mask is not None:
                    program, all_tensors = with_block_sparsity(program, all_tensors, block_mask)
                grads |= captured_gradients(
                    program, q, k, v, lse, launch_backward.delta_rows(out, dout, dlse), dout, tensors=all_tensors,
                    params=bindings.params, scale=launch.default_scale(shapes) if scale is None else float(scale),
                    slots=ordered)
            return dq, dk, dv, grads

        return GradientPlan(shapes, forward, backward)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tensors: Any, params: Any, *,
                shapes: launch.Shapes, scale: float | None, block_mask: Any,
                config: KernelConfig) -> tuple[torch.Tensor, torch.Tensor]:
        """(out, lse) from the forward kernel, on a prepared block map (`prepare`)."""
        return launch.launch_forward(
            self.kernels.forward(), q, k, v, shapes=shapes, scale=scale, tensors=tensors, params=params,
            block_mask=block_mask, config=config, has_mask=self.program.mask is not None,
            interpret=q.device.type != "cuda", divisor_slots=self.kernels.forward_source.tile_divisors,
            factor_slot=self.kernels.forward_source.score_factor)

    def backward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                 dout: torch.Tensor, dlse: torch.Tensor | None, tensors: Any, params: Any, *, shapes: launch.Shapes,
                 scale: float | None, block_mask: Any, configs: launch_backward.BackwardConfigs,
                 grad_wanted: list[bool]) -> Any:
        """(dq, dk, dv, {slot: gradient}) from the dK/dV and dQ kernels; `grad_wanted` per gradient slot of
        the backward source."""
        dkdv, dq_kernel = self.kernels.backward(params)
        source = self.kernels.backward_source_for(params)
        return launch_backward.launch_backward(
            dkdv, dq_kernel, q, k, v, out, lse, dout, dlse, shapes=shapes, scale=scale, tensors=tensors,
            params=params, grad_slots=self.kernels.backward_source.grad_slots, grad_wanted=grad_wanted,
            block_mask=block_mask, configs=configs, has_mask=self.program.mask is not None,
            interpret=q.device.type != "cuda",
            divisor_slots=(source.dkdv_tile_divisors, source.dq_tile_divisors), factor_slot=source.score_factor)

    def decode(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float | None,
               bindings: Any, shapes: launch.Shapes, *, num_splits: int,
               layout: decode.KeyLayout) -> tuple[torch.Tensor, torch.Tensor]:
        """(out, lse) by split-KV decoding over the key tiles the mask keeps (`decode.tile_lists`)."""
        self.runnable(query, bindings)
        lists = decode.tile_lists(self.program, bindings.tensors, bindings.params, shapes, query.device)
        return decode.launch_decode(self.kernels.decode(), query, key, value, lists, shapes=shapes, scale=scale,
                                    tensors=bindings.tensors, params=bindings.params, num_splits=num_splits,
                                    interpret=query.device.type != "cuda", layout=layout,
                                    factor_slot=self.kernels.decode_source.score_factor)


def check_transposed_lists(block_mask: Any) -> None:
    """The backward's kernels that own keys walk a BlockMask's query-side lists."""
    if getattr(block_mask, "q_num_blocks", None) is None or getattr(block_mask, "q_indices", None) is None:
        raise ValueError("attnc: the backward needs the BlockMask's query-side lists (q_num_blocks, q_indices); "
                         "build it with attnc.create_block_mask")


def _with_options(configs: launch_backward.BackwardConfigs,
                  options: KernelOptions) -> launch_backward.BackwardConfigs:
    return launch_backward.BackwardConfigs(options.backward_config("dkdv", configs.dkdv),
                                           options.backward_config("dq", configs.dq))
