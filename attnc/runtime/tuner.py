"""Tuning one variant's kernels on a call's real inputs (`Attention.tune`, `attnc tune`).

The candidates run through the variant's `Launcher`, with the block map a call of these inputs walks (the
given BlockMask, else the one built for a mask that reads data, else the closed-form ranges), so the tiles
are timed on the variant's own sparsity; `attnc.runtime.tuning` times them and stores the choice.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch

from attnc.runtime import launch, launch_backward, tuning
from attnc.runtime.block_mask import as_batched
from attnc.runtime.config import KernelConfig
from attnc.runtime.kernels import VariantKernels
from attnc.runtime.launcher import Launcher


class VariantTuner:
    """Tunes the forward (and backward) kernels of one variant. `variant`: the compiled variant, whose
    kernels an ahead-of-time compile inspects before the Hopper options are tried (`tuning.tune_kernel`)."""

    def __init__(self, launcher: Launcher, kernels: VariantKernels, variant: Any) -> None:
        self.launcher = launcher
        self.kernels = kernels
        self.variant = variant

    def tune(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, shapes: launch.Shapes,
             scale: float | None, bindings: Any, block_mask: Any, *, backward: bool,
             timer: Callable[[Callable[[], None]], float] | None, configs: Sequence[KernelConfig] | None,
             limit: int | None, progress: tuning.Progress | None) -> dict[str, KernelConfig]:
        """The config chosen per kernel ("forward", and with `backward` "backward_dkdv", "backward_dq") for
        checked inputs and bound values; see `Attention.tune`."""
        if block_mask is not None:
            block_mask = as_batched(block_mask)
            launch.check_block_mask(block_mask, shapes, query.device)
        block_mask = self.launcher.prepare(query, bindings, shapes, block_mask)
        common = {"shapes": shapes, "dtype": query.dtype, "device": query.device, "timer": timer,
                  "configs": configs, "limit": limit, "progress": progress, "attn": self.variant}

        def forward(config: KernelConfig) -> tuple[torch.Tensor, torch.Tensor]:
            return self.launcher.forward(query, key, value, bindings.tensors, bindings.params, shapes=shapes,
                                         scale=scale, block_mask=block_mask, config=config)

        chosen = {"forward": tuning.tune_kernel("forward", source=self.kernels.forward_source.source, run=forward,
                                                **common)}
        if not backward:
            return chosen
        with torch.no_grad():
            out, lse = forward(chosen["forward"])
        dout = torch.randn_like(out)
        no_grads = [False] * len(self.kernels.backward_source.grad_slots)
        current = self.launcher.backward_configs(shapes, query)

        def run_backward(pair: launch_backward.BackwardConfigs) -> None:
            self.launcher.backward(query, key, value, out, lse, dout, None, bindings.tensors, bindings.params,
                                   shapes=shapes, scale=scale, block_mask=block_mask, configs=pair,
                                   grad_wanted=no_grads)

        source = self.kernels.backward_source.source
        # dK/dV first, timed with the default dQ; then dQ, timed with the dK/dV just chosen
        chosen["backward_dkdv"] = tuning.tune_kernel(
            "backward_dkdv", source=source, run=lambda c: run_backward(dataclasses.replace(current, dkdv=c)), **common)
        current = dataclasses.replace(current, dkdv=chosen["backward_dkdv"])
        chosen["backward_dq"] = tuning.tune_kernel(
            "backward_dq", source=source, run=lambda c: run_backward(dataclasses.replace(current, dq=c)), **common)
        return chosen
