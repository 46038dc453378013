"""The reference backend: a call computed by the IR interpreter (`attnc.ir.reference`) instead of the kernels.

It runs the traced program, before any optimisation, so it is the meaning the generated kernels are tested
against; `backend="reference"` and `backend="auto"` on inputs the kernels do not take run it. A BlockMask
joins the mask as one more captured tensor (`sparsity.with_block_sparsity`): the reference then visits
exactly the blocks the kernels visit.
"""

from __future__ import annotations

import concurrent.futures
from typing import Any

import torch

from attnc.ir import Program
from attnc.ir.reference import reference_attention, reference_gradients, reference_max_scores
from attnc.runtime import launch
from attnc.runtime.sparsity import with_block_sparsity


class ReferenceBackend:
    """Runs one traced program's calls on the reference interpreter: forward, backward and row maxima."""

    def __init__(self, program: Program) -> None:
        self.program = program

    def _with_blocks(self, tensors: list[torch.Tensor], block_mask: Any) -> tuple[Program, list[torch.Tensor]]:
        if block_mask is None:
            return self.program, tensors
        return with_block_sparsity(self.program, tensors, block_mask)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float | None,
                bindings: Any, block_mask: Any, shapes: launch.Shapes) -> tuple[torch.Tensor, torch.Tensor]:
        """(out, lse), differentiable by autograd through the interpreter's torch ops."""
        if block_mask is not None:
            launch.check_block_mask(block_mask, shapes, query.device)
        program, tensors = self._with_blocks(list(bindings.tensors), block_mask)
        out, lse = reference_attention(program, query, key, value, tensors=tensors, params=bindings.params,
                                       scale=scale, float64=query.dtype == torch.float64)
        return launch.in_order_of(query, out), lse

    def backward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, out: torch.Tensor,
                 lse: torch.Tensor, dout: torch.Tensor, dlse: torch.Tensor | None, bindings: Any, block_mask: Any,
                 scale: float | None, wanted: list[bool]) -> Any:
        """(dq, dk, dv, {slot: gradient}) against the given output and lse (`reference_gradients`), for the
        backward custom op and the ring. A custom op runs below autograd (its dispatch keys are excluded on this
        thread), so the autograd this needs runs on a thread of its own, where they are not."""
        program, tensors = self._with_blocks([t.detach().requires_grad_(want)
                                              for t, want in zip(bindings.tensors, wanted, strict=True)], block_mask)

        def gradients() -> Any:
            return reference_gradients(program, query, key, value, out, lse, dout, dlse, tensors=tensors,
                                       params=bindings.params, scale=scale, float64=query.dtype == torch.float64)

        with concurrent.futures.ThreadPoolExecutor(1) as worker:
            dq, dk, dv, *captured = worker.submit(gradients).result()
        return dq, dk, dv, {slot: torch.zeros_like(bindings.tensors[slot]) if g is None else g
                            for slot, g in enumerate(captured[:len(wanted)]) if wanted[slot]}

    def max_scores(self, query: torch.Tensor, key: torch.Tensor, scale: float | None, bindings: Any,
                   block_mask: Any) -> torch.Tensor:
        """Each row's largest logit, evaluated again (for an lse that does not carry the kernels' maxima)."""
        program, tensors = self._with_blocks(list(bindings.tensors), block_mask)
        return reference_max_scores(program, query, key, tensors=tensors, params=bindings.params, scale=scale)
