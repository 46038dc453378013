"""`attnc check`: the generated kernels against the float64 reference on random inputs."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import warnings

import torch

from attnc.ir.reference import reference_attention

from .devices import DTYPES, describe, kernel_device
from .errors import CliError, Exit
from .target import Target, load_target

# Largest allowed relative error (a norm ratio, and the largest element error over the largest reference
# value, at least 1) per input dtype: float32 kernels land near 1e-6; half-precision operands and
# probabilities round to 2^-11 (float16) or 2^-8 (bfloat16) relative, and gradients sum many of those.
TOLERANCE = {torch.float32: 2e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}


@dataclasses.dataclass(frozen=True)
class Error:
    name: str
    max_abs: float
    rel: float  # ||kernel - reference|| / ||reference||
    scale: float  # the largest reference value (at least 1): max_abs is judged relative to it
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.rel <= self.tolerance and self.max_abs <= self.tolerance * self.scale  # False for NaN

    def line(self) -> str:
        verdict = "ok" if self.ok else "ABOVE TOLERANCE"
        return f"{self.name:<14} {self.max_abs:>12.3e} {self.rel:>12.3e} {self.tolerance:>10.1e}  {verdict}"


def measure(name: str, got: torch.Tensor, want: torch.Tensor, tolerance: float) -> Error:
    """Errors of `got` against `want`; equal infinities (lse -inf of rows with no allowed key) count as equal."""
    got, want = got.detach().double(), want.detach().double()
    same_inf = torch.isinf(want) & (got == want)
    diff = torch.where(same_inf, 0.0, got - want).abs()
    want = torch.where(same_inf, 0.0, want)
    if diff.numel() == 0:
        return Error(name, 0.0, 0.0, 1.0, tolerance)
    max_abs, norm = float(diff.max()), float(want.norm())
    rel = float(diff.norm()) / norm if norm > 0 else max_abs
    return Error(name, max_abs, rel, max(1.0, float(want.abs().max())), tolerance)


@dataclasses.dataclass(frozen=True)
class Inputs:
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    dout: torch.Tensor  # d(loss)/d(out), and d(loss)/d(lse)
    dlse: torch.Tensor


def make_inputs(args: argparse.Namespace, device: torch.device) -> Inputs:
    kv_heads = args.kv_heads or args.heads
    dtype = DTYPES[args.dtype]
    gen = torch.Generator(device=device).manual_seed(args.seed)

    def randn(*shape: int, as_dtype: torch.dtype = dtype) -> torch.Tensor:
        return torch.randn(shape, generator=gen, device=device).to(as_dtype)

    q = randn(args.batch, args.heads, args.seq, args.head_dim)
    k, v = (randn(args.batch, kv_heads, args.kv_seq or args.seq, args.head_dim) for _ in range(2))
    return Inputs(q, k, v, randn(*q.shape), randn(*q.shape[:3], as_dtype=torch.float32))


def run(args: argparse.Namespace) -> int:
    sizes = (args.seq, args.kv_seq or args.seq, args.batch, args.heads, args.kv_heads or args.heads, args.head_dim)
    if min(sizes) < 1:
        raise CliError("--seq, --kv-seq, --batch, --heads, --kv-heads and --head-dim must be positive")
    device = kernel_device()
    target = load_target(args, device=device)
    target.require_values("check")
    inputs = make_inputs(args, device)
    # A warning (e.g. the kernel cache directory cannot be written, so kernels stay in memory) is news, not a
    # failure: one line on stderr, and the check still decides the exit code.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        try:
            errors = compare(target, inputs, device, TOLERANCE[DTYPES[args.dtype]], backward=args.backward)
        except OSError as error:  # the environment failed, not the kernel: not the "check failed" exit code
            raise CliError(f"could not run the check: {error}") from error
    for warning in caught:
        print(f"attnc check: warning: {str(warning.message).removeprefix('attnc: ')}", file=sys.stderr)
    report(f"{target.label}: {shapes(inputs)} {args.dtype} seed={args.seed}", device, errors)
    return Exit.CHECK_FAILED if any(not e.ok for e in errors) else Exit.OK


def shapes(inputs: Inputs) -> str:
    (batch, heads, q_len, head_dim), (_, kv_heads, kv_len, _) = inputs.q.shape, inputs.k.shape
    return f"B={batch} Hq={heads} Hkv={kv_heads} Q_LEN={q_len} KV_LEN={kv_len} D={head_dim}"


def report(case: str, device: torch.device, errors: list[Error]) -> None:
    print(f"check {case}")
    print(f"kernel: backend=\"triton\", {describe(device)}; reference: the IR interpreter in float64")
    print(f"{'tensor':<14} {'max abs err':>12} {'rel err':>12} {'tolerance':>10}")
    for error in errors:
        print(error.line())
    failed = [e.name for e in errors if not e.ok]
    print(f"FAIL: {', '.join(failed)} above tolerance" if failed else "PASS")


def compare(target: Target, inputs: Inputs, device: torch.device, tolerance: float, *,
            backward: bool) -> list[Error]:
    values = target.values_on(device)
    bindings = target.bindings(values)
    captured = _differentiable(target, bindings.tensors) if backward else {}
    leaves = [t.requires_grad_(backward) for t in (inputs.q, inputs.k, inputs.v)]
    out, lse = target.attn(*leaves, return_lse=True, backend="triton", **values)
    golden = [t.detach().double().requires_grad_(backward) for t in leaves]
    want_out, want_lse = reference_attention(target.attn.traced.program, *golden, tensors=bindings.tensors,
                                             params=bindings.params, float64=True)
    errors = [measure("out", out, want_out, tolerance), measure("lse", lse, want_lse, tolerance)]
    if not backward:
        return errors
    dlse = torch.where(torch.isinf(want_lse), 0.0, inputs.dlse.double())  # rows with no allowed key
    got = _grads((out, lse), [*leaves, *captured.values()], (inputs.dout, dlse.float()))
    want = _grads((want_out, want_lse), [*golden, *captured.values()], (inputs.dout.double(), dlse))
    names = ["dq", "dk", "dv", *(f"grad {n}" for n in captured)]
    return errors + [measure(n, g, w, tolerance) for n, g, w in zip(names, got, want, strict=True)]


def _differentiable(target: Target, tensors: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
    """The captured floating tensors, by name (a text variant's declaration, else the slot t<i>), now
    requiring grad."""
    names = target.text.tensor_slots if target.text is not None else [f"t{i}" for i in range(len(tensors))]
    found = {n: t for n, t in zip(names, tensors, strict=True) if t.is_floating_point()}
    return {n: t.requires_grad_(True) for n, t in found.items()}


def _grads(outputs: tuple[torch.Tensor, ...], inputs: list[torch.Tensor],
           grads: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    found = torch.autograd.grad(outputs, inputs, grads, allow_unused=True)
    return [torch.zeros_like(i) if g is None else g for i, g in zip(inputs, found, strict=True)]
