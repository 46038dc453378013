"""Autograd through the generated kernels: the forward saves q, k, v, out and the lse (O(rows) statistics,
never the score matrix); the backward runs the dK/dV and dQ kernels and returns gradients for q, k, v and
for every captured floating tensor that requires one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch

from attnc.runtime.launch import Shapes

# forward(query, key, value, tensors) -> (out, lse)
ForwardFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Sequence[torch.Tensor]],
                     tuple[torch.Tensor, torch.Tensor]]


@dataclasses.dataclass(frozen=True)
class GradientPlan:
    """What one differentiable call needs to run its backward."""

    shapes: Shapes
    forward: ForwardFn
    # backward(query, key, value, out, lse, dout, dlse, tensors, wanted) -> (dq, dk, dv, {slot: gradient})
    backward: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[int, torch.Tensor]]]


class AttentionFunction(torch.autograd.Function):
    """apply(plan, query, key, value, *captured_tensors) -> (out, lse)."""

    @staticmethod
    def forward(ctx: Any, plan: GradientPlan, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                *tensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, lse = plan.forward(query, key, value, tensors)
        ctx.plan = plan
        ctx.set_materialize_grads(False)  # an unused output's gradient arrives as None, not zeros
        ctx.save_for_backward(query, key, value, out, lse, *tensors)
        return out, lse

    @staticmethod
    def backward(ctx: Any, dout: torch.Tensor | None, dlse: torch.Tensor | None) -> tuple[Any, ...]:
        query, key, value, out, lse, *tensors = ctx.saved_tensors
        if dout is None:
            dout = torch.zeros_like(out)
        wanted = [need and t.is_floating_point() for need, t in zip(ctx.needs_input_grad[4:], tensors, strict=True)]
        dq, dk, dv, captured = ctx.plan.backward(query, key, value, out, lse, dout, dlse, tensors, wanted)
        grads: list[torch.Tensor | None] = []
        for slot, (want, t) in enumerate(zip(wanted, tensors, strict=True)):
            if not want:
                grads.append(None)
            elif slot in captured:
                grads.append(captured[slot].to(t.dtype))
            else:  # read only where it cannot change the output (a mask, a comparison): zero gradient
                grads.append(torch.zeros_like(t))
        needs = ctx.needs_input_grad
        return (None, dq if needs[1] else None, dk if needs[2] else None, dv if needs[3] else None, *grads)


def needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
