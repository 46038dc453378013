"""The backward recomputes exactly what the forward computed: with ill-conditioned score mods (1 / score,
cubes, exponentials of the score) the kernel's gradients are as close to a float64 golden as the float32
reference's are, the FlexAttention test pattern (error of the kernel <= k x error of the eager reference)."""

from __future__ import annotations

import pytest
import torch

import attnc
from attnc.ir.reference import reference_attention


def causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


MODS = {
    "reciprocal": lambda s, b, h, q, kv: 1.0 / s,
    "cube": lambda s, b, h, q, kv: s * s * s,
    "exp": lambda s, b, h, q, kv: torch.exp(s) - 2.0,
    "scaled": lambda s, b, h, q, kv: s * 40.0 + (q - kv) * 0.01,
}


def error(got: tuple[torch.Tensor, ...], golden: tuple[torch.Tensor, ...]) -> list[float]:
    return [(a.double() - b).abs().max().item() for a, b in zip(got, golden, strict=True)]


@pytest.mark.parametrize("name", sorted(MODS))
@pytest.mark.parametrize("seed", [0, 1])
def test_kernel_gradients_are_as_accurate_as_the_reference(name: str, seed: int) -> None:
    attn = attnc.compile(causal, MODS[name])
    g = torch.Generator().manual_seed(seed)
    q, k, v, dout = (torch.randn(1, 2, 40, 16, generator=g) for _ in range(4))
    results = {}
    for run in ("triton", "reference", "golden"):
        inputs = [t.clone().double() if run == "golden" else t.clone() for t in (q, k, v)]
        inputs = [t.requires_grad_(True) for t in inputs]
        if run == "golden":
            out, _ = reference_attention(attn.program, *inputs, float64=True)
        else:
            out = attn(*inputs, backend=run)
        results[run] = (out.detach(), *torch.autograd.grad(out, inputs, dout.to(out.dtype)))
    kernel, eager = error(results["triton"], results["golden"]), error(results["reference"], results["golden"])
    for what, k_err, e_err in zip(("out", "dq", "dk", "dv"), kernel, eager, strict=True):
        assert k_err <= 2 * e_err + 1e-4, f"{name}: {what} error {k_err:.2e} against the reference's {e_err:.2e}"
