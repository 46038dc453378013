"""What a compiled variant is and what its kernels will do, in words and counts: `Attention.explain` (the IR
through each step of the pipeline, then the generated source) and `Attention.tile_stats` (how many tiles the
kernels skip, mask and attend without the mask).

Nothing here launches a kernel: both read the program and the mask's structure. The static reports of
compiled kernels (registers, spills, SASS) are `attnc.perf`'s.
"""

from __future__ import annotations

from typing import Any

import torch

from attnc.ir import Program
from attnc.ir.passes import optimize
from attnc.ir.printer import format_program
from attnc.runtime import sparsity
from attnc.runtime.kernels import VariantKernels


class VariantReport:
    """Describes one variant: its traced program, the optimised one and their kernels."""

    def __init__(self, traced: Program, program: Program, kernels: VariantKernels) -> None:
        self.traced = traced
        self.program = program
        self.kernels = kernels

    def explain(self, *, backward: bool = False) -> str:
        """The traced IR, the IR after each optimisation step, where each generated value is computed and the
        generated Triton source (and with `backward`, the backward kernels' source), as titled sections."""
        sections = [("traced", format_program(self.traced))]
        optimize(self.traced, on_step=lambda name, p: sections.append((name, format_program(p))))
        sections.append(("placement", self.kernels.forward_source.describe_placement()))
        sections.append(("triton source", self.kernels.forward_source.source))
        if backward:
            sections.append(("backward triton source", self.kernels.backward_source.source))
        return "\n\n".join(f"== {title} ==\n{body.rstrip()}" for title, body in sections)

    def tile_stats(self, bindings: Any, B: int, H: int, Q_LEN: int, KV_LEN: int, *, BLOCK_M: int, BLOCK_N: int,
                   device: Any) -> dict[str, int]:
        """{"empty", "partial", "full"} tile counts summed over B x H, from the mask's structure; `bindings`
        (the mask's values) may be None for a variant without a mask."""
        grid = (B, H, -(-Q_LEN // BLOCK_M), -(-KV_LEN // BLOCK_N))
        tiles = grid[0] * grid[1] * grid[2] * grid[3]
        if self.program.mask is None:
            return {"empty": 0, "partial": 0, "full": tiles}
        if not sparsity.analysable(self.program.mask):  # the kernels evaluate such a mask on every tile
            return {"empty": 0, "partial": tiles, "full": 0}
        classes = sparsity.classify_blocks(self.program, bindings.tensors, bindings.params, B=B, H=H,
                                           Q_LEN=Q_LEN, KV_LEN=KV_LEN, q_block=BLOCK_M, kv_block=BLOCK_N,
                                           device=torch.device(device))
        counts = torch.bincount(classes.flatten().long(), minlength=3).tolist()
        return {"empty": counts[0], "partial": counts[1], "full": counts[2]}
