"""`attnc bench`: time a variant's kernels; on a GPU against torch's flex_attention and SDPA.

FLOPs count only the allowed pairs (evaluated exactly, in chunks): 4 * B * H * D per pair for the forward,
14 for forward + backward (the backward is five matmuls to the forward's two), as in
benchmarks/bench_attention.py, which covers the full grid of sizes and records results.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from attnc import api
from attnc.dsl.captures import Bindings
from attnc.ir.program import Program
from attnc.runtime import sparsity
from attnc.variants import causal

from .devices import DTYPES, describe, kernel_device, synchronize
from .errors import CliError, Exit
from .stand_ins import Extent
from .target import Target, load_target

Step = Callable[[], tuple[torch.Tensor, ...]]  # one timed call: (out,) or (out, dq, dk, dv)
FLOPS_PER_PAIR = {"fwd": 4, "fwd+bwd": 14}  # times B * H * D
TOKENS = 8 * 16 * 4096  # B * H * S on a GPU, the same at every length (as benchmarks/bench_attention.py)
# ||attnc - peer|| / ||peer|| above this is a mismatch (bf16 operands land between 1e-3 and 1e-2)
AGREEMENT = {torch.float32: 2e-3, torch.float16: 1e-2, torch.bfloat16: 2e-2}
PAIRS_PER_CHUNK = 1 << 26  # mask elements evaluated at once when counting allowed pairs
DENSE_MASK_SHARE = 0.25  # SDPA's dense mask may take this share of free GPU memory
CPU_NOTE = ("note: on the CPU attnc runs in the Triton interpreter: these times measure the interpreter, not "
            "performance. flex_attention and SDPA are timed only on a CUDA GPU.")


@dataclasses.dataclass(frozen=True)
class Case:
    """Inputs of one timed shape."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    grad: torch.Tensor | None  # d(loss)/d(out) for fwd+bwd

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return tuple(self.q.shape)  # type: ignore[return-value]

    def step(self, attention: Callable[[], torch.Tensor]) -> Step:
        if self.grad is None:
            return lambda: (attention(),)
        grad = self.grad

        def forward_backward() -> tuple[torch.Tensor, ...]:
            out = attention()
            return (out, *torch.autograd.grad(out, (self.q, self.k, self.v), grad))

        return forward_backward


def make_case(batch: int, heads: int, seq: int, head_dim: int, dtype: torch.dtype, backward: bool,
              device: torch.device) -> Case:
    gen = torch.Generator(device=device).manual_seed(seq)
    shape = (batch, heads, seq, head_dim)
    q, k, v = (torch.randn(shape, generator=gen, device=device).to(dtype).requires_grad_(backward)
               for _ in range(3))
    grad = torch.randn(shape, generator=gen, device=device).to(dtype) if backward else None
    return Case(q, k, v, grad)


@dataclasses.dataclass(frozen=True)
class Row:
    seq: int
    batch: int
    impl: str
    ms: float
    tflops: float


@dataclasses.dataclass(frozen=True)
class Sizes:
    seqs: list[int]
    head_dim: int
    heads: int
    dtype: torch.dtype

    @staticmethod
    def from_args(args: argparse.Namespace, gpu: bool) -> Sizes:
        sizes = Sizes(args.seq or ([4096] if gpu else [128]), args.head_dim or (128 if gpu else 32),
                      args.heads or (16 if gpu else 2), DTYPES[args.dtype or ("bfloat16" if gpu else "float32")])
        if min(*sizes.seqs, sizes.head_dim, sizes.heads, args.batch or 1) < 1:
            raise CliError("--seq, --head-dim, --heads and --batch must be positive")
        return sizes


def run(args: argparse.Namespace) -> int:
    device = kernel_device()
    gpu = device.type == "cuda"
    sizes = Sizes.from_args(args, gpu)
    longest = max(sizes.seqs)
    target = load_target(args, device=device, stand_ins=Extent(longest, longest, sizes.heads, args.batch or 1))
    target.require_values("bench")
    print(f"bench {target.label}: {args.pass_name}, {str(sizes.dtype).removeprefix('torch.')}, H={sizes.heads}, "
          f"D={sizes.head_dim}, {describe(device)}")
    rows: list[Row] = []
    notes: list[str] = list(target.notes)
    for seq in sizes.seqs:
        batch = args.batch or (max(1, TOKENS // (sizes.heads * seq)) if gpu else 1)
        case = make_case(batch, sizes.heads, seq, sizes.head_dim, sizes.dtype, args.pass_name == "fwd+bwd", device)
        rows += bench_case(target, case, args.pass_name, notes, peers=gpu)
    print_table(rows)
    for note in notes if gpu else [*notes, CPU_NOTE]:
        print(note if note.startswith("note:") else f"note: {note}")
    return Exit.CHECK_FAILED if any("MISMATCH" in n for n in notes) else Exit.OK


def bench_case(target: Target, case: Case, pass_name: str, notes: list[str], *, peers: bool) -> list[Row]:
    batch, heads, seq, head_dim = case.shape
    values = target.values_on(case.q.device)
    steps = {"attnc": case.step(lambda: target.attn(case.q, case.k, case.v, backend="triton", **values))}
    steps["attnc"]()  # generates and compiles; errors here are attnc's and end the command
    if peers:
        steps |= peer_steps(target, case, target.bindings(values), notes, compile_flex=True)
        notes += agreement(steps, case, seq)
    flops = FLOPS_PER_PAIR[pass_name] * batch * heads * head_dim * allowed_pairs(
        target.attn.program, target.bindings(values), batch, heads, seq, seq, case.q.device)
    rows = []
    for impl, step in steps.items():
        ms = time_ms(step, case.q.device)
        rows.append(Row(seq, batch, impl, ms, flops / (ms * 1e-3) / 1e12))
    return rows


# -- peers ---------------------------------------------------------------------------------------------------


def peer_steps(target: Target, case: Case, bindings: Bindings, notes: list[str], *,
               compile_flex: bool) -> dict[str, Step]:
    """torch's flex_attention and SDPA for this case, each run once (compiling it). One that cannot express
    the variant, or fails, gets a note instead: it must not hide attnc's numbers."""
    makers = {"flex": lambda: flex_step(target, case, compile_flex), "sdpa": lambda: sdpa_step(target, case, bindings)}
    steps = {}
    for impl, make in makers.items():
        label = f"S={case.shape[2]}: {impl}"
        try:
            made = make()
            if isinstance(made, str):
                notes.append(f"{label} skipped: {made}")
                continue
            made()
            steps[impl] = made
        except Exception as error:
            notes.append(f"{label} failed: {type(error).__name__}: {(str(error).splitlines() or [''])[0]}")
    return steps


def flex_step(target: Target, case: Case, compile_flex: bool) -> Step | str:
    if target.text is not None:
        return "a .attn variant has no Python mods to give torch's flex_attention"
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    flex = torch.compile(flex_attention, dynamic=False) if compile_flex else flex_attention
    mask_mod, score_mod = target.mods
    batch, heads, seq, _ = case.shape
    mask = target.attn.program.mask  # None also when the mask folded to "every pair"
    block_mask = None if mask_mod is None or mask is None else create_block_mask(
        mask_mod, batch if "b" in mask.deps else None, heads if "h" in mask.deps else None, seq, seq,
        device=case.q.device)
    return case.step(lambda: flex(case.q, case.k, case.v, score_mod=score_mod, block_mask=block_mask))


def sdpa_step(target: Target, case: Case, bindings: Bindings) -> Step | str:
    program = target.attn.program
    if program.score is not None:
        return "SDPA has no score mod"
    kwargs: dict[str, Any] = {}
    if program.mask is not None and program.mask == _causal_mask():
        kwargs["is_causal"] = True
    elif program.mask is not None:
        batch, heads, seq, _ = case.shape
        size = sparsity.broadcast_size(program.mask, "b", batch) * sparsity.broadcast_size(program.mask, "h", heads)
        free = torch.cuda.mem_get_info(case.q.device)[0] if case.q.device.type == "cuda" else 1 << 40
        if size * seq * seq > DENSE_MASK_SHARE * free:
            return f"its dense mask needs {size * seq * seq / 2**30:.1f} GiB"
        kwargs["attn_mask"] = dense_mask(program, bindings, batch, heads, seq, seq, case.q.device)
    return case.step(lambda: F.scaled_dot_product_attention(case.q, case.k, case.v, **kwargs))


@functools.cache
def _causal_mask() -> Any:
    return api.compile(causal()).program.mask


def agreement(steps: dict[str, Step], case: Case, seq: int) -> list[str]:
    """MISMATCH notes where a peer's output (or gradient) differs from attnc's beyond AGREEMENT."""
    ours, notes = steps["attnc"](), []
    tolerance = AGREEMENT[case.q.dtype]
    for impl in steps.keys() - {"attnc"}:
        for name, a, b in zip(("out", "dq", "dk", "dv"), ours, steps[impl](), strict=False):
            b = torch.nan_to_num(b.double(), nan=0.0)  # SDPA's rows with no allowed key are NaN, attnc's 0
            error = float((a.double() - b).norm() / b.norm().clamp_min(1e-30))
            if not error <= tolerance:
                notes.append(f"S={seq}: MISMATCH {name}: ||attnc - {impl}|| / ||{impl}|| = {error:.2e} > {tolerance}")
    return notes


# -- counting and timing ------------------------------------------------------------------------------------


def _grids(program: Program, batch: int, heads: int, kv_len: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    assert program.mask is not None
    b = torch.arange(sparsity.broadcast_size(program.mask, "b", batch), device=device, dtype=torch.int32)
    h = torch.arange(sparsity.broadcast_size(program.mask, "h", heads), device=device, dtype=torch.int32)
    kv = torch.arange(kv_len, device=device, dtype=torch.int32)
    return b.view(-1, 1, 1, 1), h.view(1, -1, 1, 1), kv.view(1, 1, 1, -1)


def dense_mask(program: Program, bindings: Bindings, batch: int, heads: int, q_len: int, kv_len: int,
               device: torch.device) -> torch.Tensor:
    """bool [B or 1, H or 1, Q_LEN, KV_LEN]: the mask, evaluated by the reference interpreter."""
    b, h, kv = _grids(program, batch, heads, kv_len, device)
    q = torch.arange(q_len, device=device, dtype=torch.int32).view(1, 1, -1, 1)
    allowed = api.evaluate_mask(program, b, h, q, kv, list(bindings.tensors), bindings.params)
    return allowed.expand(b.shape[0], h.shape[1], q_len, kv_len)


def allowed_pairs(program: Program, bindings: Bindings, batch: int, heads: int, q_len: int, kv_len: int,
                  device: torch.device) -> int:
    """The (b, h, q, kv) pairs the mask allows, evaluated in chunks of query rows."""
    if program.mask is None:
        return batch * heads * q_len * kv_len
    b, h, kv = _grids(program, batch, heads, kv_len, device)
    rows = max(1, PAIRS_PER_CHUNK // (b.shape[0] * h.shape[1] * kv_len))
    total = 0
    for start in range(0, q_len, rows):
        q = torch.arange(start, min(start + rows, q_len), device=device, dtype=torch.int32).view(1, 1, -1, 1)
        allowed = api.evaluate_mask(program, b, h, q, kv, list(bindings.tensors), bindings.params)
        total += int(allowed.expand(b.shape[0], h.shape[1], q.shape[2], kv_len).sum())
    return total * (batch // b.shape[0]) * (heads // h.shape[1])


def time_ms(step: Step, device: torch.device) -> float:
    """Median milliseconds of a (warm) step: triton's do_bench on a GPU, two host-clock calls on the CPU."""
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(step, warmup=25, rep=100, return_mode="median"))
    times = []
    for _ in range(2):
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def print_table(rows: list[Row]) -> None:
    header = f"{'S':>6} {'B':>4} {'impl':<6} {'ms':>10} {'TFLOP/s':>9} {'attnc speed-up':>15}"
    print(header)
    print("-" * len(header))
    for row in rows:
        ours = next(r for r in rows if r.seq == row.seq and r.impl == "attnc")
        ratio = "" if row.impl == "attnc" else f"{ours.tflops / row.tflops:.2f}x"
        print(f"{row.seq:>6} {row.batch:>4} {row.impl:<6} {row.ms:>10.3f} {row.tflops:>9.4g} {ratio:>15}")
