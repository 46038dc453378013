"""Attention throughput: attnc against FlexAttention (torch.compile) and SDPA, forward or forward + backward.

    python benchmarks/bench_attention.py                    # forward; S = 1024 .. 16384; D = 64 128
    python benchmarks/bench_attention.py --pass fwd+bwd     # forward + backward (dq, dk, dv)
    python benchmarks/bench_attention.py --quick            # S = 4096 only, shorter timing
    python benchmarks/bench_attention.py --seq 8192 --head-dim 128 --variant causal alibi --no-save
    python benchmarks/bench_attention.py --smoke            # no GPU: tiny sizes, every code path, nothing saved

Implementations: `attnc` (attnc.flex_attention with attnc's BlockMask, backend="triton"); `flex` (torch's
flex_attention under torch.compile(dynamic=False), with torch's create_block_mask); `sdpa`
(F.scaled_dot_product_attention: is_causal=True for causal, otherwise a dense bool mask or float bias when
it fits in a quarter of free memory, else skipped with a note).

Variants: `noop` (every pair, through each implementation's mask path); `causal`; `softcap` (causal with
Gemma 2's 30 * tanh(score / 30); SDPA cannot express it and is skipped); `sliding_window` (causal, the last
1024 keys); `prefix_lm` (the first S/4 tokens bidirectional, the rest causal); `alibi` (causal plus the ALiBi
score mod, per-head slopes 2^(-8 (h+1) / H) read from a captured tensor; SDPA gets the same terms as a float
bias); `document` (q and kv in the same document, bidirectional; a seeded split of the sequence into
documents of S/32 .. S/4 tokens, the same for every batch and head); `natten_2d` (13 x 13 neighborhoods,
clamped at the borders, on a canvas of S/64 rows of 64 tokens; attnc.variants.natten).

bf16, H = 16, B * H * S held constant. FLOPs count only the allowed (unmasked) pairs, computed exactly:
the forward is 4 * B * H * D per pair (QK^T and PV, a multiply and an add each); the backward is 2.5 times
the forward (five matmuls: QK^T again, dV, dP, dQ, dK), so `--pass fwd+bwd`, which times both, counts
3.5 * 4 = 14 * B * H * D per pair. The timed backward is torch.autograd.grad(out, (q, k, v), grad).

Before timing, attnc's output (and for fwd+bwd its dq, dk, dv) is compared with each other implementation's
on the same fresh random inputs: ||attnc - other|| / ||other|| above the tolerance is a MISMATCH note and
makes the exit status 1. Timing is triton.testing.do_bench's median (CUDA events, L2 flushed between runs).
Prints a table (ms, TFLOP/s, attnc's throughput relative to flex and SDPA) and merges the rows into
`benchmarks/results/<date>-<gpu>.json` (DESIGN.md §3), replacing rows of the cases this run measured.

`--smoke` runs without a GPU: S = 128, D = 32, B = 1, H = 2, float32, window 32, attnc through the Triton
interpreter, torch's flex_attention eager (its CPU version has no backward: skipped for fwd+bwd), SDPA; two
repetitions timed with time.perf_counter. It proves the code paths, not speed, and writes results only
where --out says. Without --smoke and without CUDA the script exits with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import itertools
import json
import os
import pathlib
import re
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

# Before triton is imported: where there is no GPU this switches the Triton interpreter on (--smoke).
import attnc  # noqa: E402

Tensor = torch.Tensor
Step = Callable[[], tuple[Tensor, ...]]  # one timed call: (out,) or (out, dq, dk, dv)

SEQ_LENS, HEAD_DIMS, HEADS, DTYPE = (1024, 2048, 4096, 8192, 16384), (64, 128), 16, torch.bfloat16
# B * H * S, kept near constant as attention-gym's benchmarks do: B = 16 at S = 2048, 8 at 4096, 4 at 8192,
# within BATCH_RANGE (so B = 16 at S = 1024 and 4 at S = 16384)
TOKENS = 16 * 16 * 2048
BATCH_RANGE = (4, 16)
WINDOW = 1024
SMOKE_SEQ, SMOKE_DIM, SMOKE_HEADS = 128, 32, 2
SMOKE_WINDOW = WINDOW * SMOKE_SEQ // 4096  # the window's share of a 4096-token sequence, kept
FLOPS_PER_PAIR = {"fwd": 4, "fwd+bwd": 14}  # times B * H * D; see the docstring
TENSORS = {"fwd": ("out",), "fwd+bwd": ("out", "dq", "dk", "dv")}
# ||a - b|| / ||b||: bf16 operands land between 1e-3 and 1e-2; float32 (tf32 dots on a GPU) near 3e-4.
TOLERANCE = {torch.bfloat16: 2e-2, torch.float32: 2e-3}
SDPA_MASK_SHARE = 0.25  # a dense SDPA mask or bias (and its temporaries) may take this share of free memory


def case_label(variant: str, seq_len: int, head_dim: int, pass_name: str) -> str:
    """How notes, checks and the results merge name one measured case."""
    return f"{variant} S={seq_len} D={head_dim} {pass_name}"


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything one run holds fixed."""

    device: torch.device
    dtype: torch.dtype
    heads: int
    tokens: int  # B * H * S
    window: int
    pass_name: str  # "fwd" | "fwd+bwd"
    quick: bool = False
    smoke: bool = False


@dataclasses.dataclass(frozen=True)
class Variant:
    """One attention variant at one sequence length, with everything each implementation needs."""

    name: str
    mask_mod: Callable
    score_mod: Callable | None
    allowed_pairs: int  # per (batch, head)
    sdpa_bytes: int  # the dense mask or bias SDPA needs, with the temporaries that build it (0: none)
    sdpa_kwargs: Callable[[], dict] | None  # built lazily: a dense mask may not fit; None: SDPA can't express it


@dataclasses.dataclass(frozen=True)
class Case:
    """A variant at one shape, with its inputs."""

    variant: Variant
    qkv: tuple[Tensor, Tensor, Tensor]
    grad: Tensor | None  # d(loss)/d(out) for fwd+bwd

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return tuple(self.qkv[0].shape)  # B, H, S, D

    @property
    def pass_name(self) -> str:
        return "fwd" if self.grad is None else "fwd+bwd"

    @property
    def label(self) -> str:
        _, _, seq_len, head_dim = self.shape
        return case_label(self.variant.name, seq_len, head_dim, self.pass_name)


@dataclasses.dataclass(frozen=True)
class Row:
    variant: str
    impl: str
    pass_name: str
    B: int
    H: int
    S: int
    D: int
    dtype: str
    ms: float
    tflops: float

    def as_json(self) -> dict:
        return {"variant": self.variant, "impl": self.impl, "pass": self.pass_name, "B": self.B, "H": self.H,
                "S": self.S, "D": self.D, "dtype": self.dtype, "ms": round(self.ms, 4),
                "tflops": round(self.tflops, 2)}


# -- variants ------------------------------------------------------------------------------------------


def causal_mask(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def causal_pairs(seq_len: int) -> int:
    return seq_len * (seq_len + 1) // 2


def window_pairs(seq_len: int, window: int) -> int:
    """Query q sees keys max(0, q - window + 1) .. q: q + 1 of them while q < window, then `window`."""
    if seq_len <= window:
        return causal_pairs(seq_len)
    return causal_pairs(window) + (seq_len - window) * window


def dense_mask(mask_mod: Callable, seq_len: int, device: torch.device) -> Tensor:
    """The [S, S] bool mask of one (batch, head), evaluated pair by pair with plain torch."""
    pos = torch.arange(seq_len, device=device, dtype=torch.int32)
    return mask_mod(0, 0, pos[:, None], pos[None, :])


def dense_mask_kwargs(mask_mod: Callable, seq_len: int, device: torch.device) -> Callable[[], dict]:
    return lambda: {"attn_mask": dense_mask(mask_mod, seq_len, device)[None, None]}


def dense_mask_bytes(seq_len: int) -> int:
    return 8 * seq_len * seq_len  # int32 index temporaries, the bool mask, the bias SDPA derives from it


def causal_variant(seq_len: int, settings: Settings) -> Variant:
    return Variant("causal", causal_mask, None, causal_pairs(seq_len), 0, lambda: {"is_causal": True})


def sliding_window_variant(seq_len: int, settings: Settings) -> Variant:
    window = settings.window

    def sliding_window(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (q_idx - kv_idx < window)

    return Variant("sliding_window", sliding_window, None, window_pairs(seq_len, window), dense_mask_bytes(seq_len),
                   dense_mask_kwargs(sliding_window, seq_len, settings.device))


def alibi_slopes(heads: int, device: torch.device) -> Tensor:
    return torch.exp2(-8.0 * torch.arange(1, heads + 1, dtype=torch.float32) / heads).to(device)


def alibi_bias(slopes: Tensor, seq_len: int, dtype: torch.dtype) -> Tensor:
    """[1, H, S, S]: the ALiBi term where causal attention allows the pair, -inf elsewhere. One head at a
    time, so the float32 temporaries stay [S, S]."""
    pos = torch.arange(seq_len, device=slopes.device, dtype=torch.float32)
    distance = pos[None, :] - pos[:, None]  # kv_idx - q_idx
    bias = torch.empty(1, len(slopes), seq_len, seq_len, device=slopes.device, dtype=dtype)
    for h, slope in enumerate(slopes.tolist()):
        bias[0, h] = (slope * distance).masked_fill_(distance > 0, float("-inf"))
    return bias


def alibi_variant(seq_len: int, settings: Settings) -> Variant:
    slopes = alibi_slopes(settings.heads, settings.device)

    def alibi(score, b, h, q_idx, kv_idx):
        return score + slopes[h] * (kv_idx - q_idx)

    bias_bytes = settings.heads * seq_len * seq_len * settings.dtype.itemsize + 8 * seq_len * seq_len
    return Variant("alibi", causal_mask, alibi, causal_pairs(seq_len), bias_bytes,
                   lambda: {"attn_mask": alibi_bias(slopes, seq_len, settings.dtype)})


def document_lengths(seq_len: int) -> list[int]:
    """Uneven documents of S/32 .. S/4 tokens covering the sequence; seeded, so every run sees the same."""
    gen = torch.Generator().manual_seed(seq_len)
    lengths: list[int] = []
    while sum(lengths) < seq_len:
        lengths.append(int(torch.randint(seq_len // 32, seq_len // 4 + 1, (), generator=gen)))
    lengths[-1] -= sum(lengths) - seq_len
    return lengths


def document_variant(seq_len: int, settings: Settings) -> Variant:
    lengths = document_lengths(seq_len)
    doc = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    doc = doc.to(settings.device, torch.int32)

    def document(b, h, q_idx, kv_idx):
        return doc[q_idx] == doc[kv_idx]

    return Variant("document", document, None, sum(n * n for n in lengths), dense_mask_bytes(seq_len),
                   dense_mask_kwargs(document, seq_len, settings.device))


def noop_variant(seq_len: int, settings: Settings) -> Variant:
    def everything(b, h, q_idx, kv_idx):  # every pair: dense attention through each implementation's mask path
        return (q_idx >= 0) & (kv_idx >= 0)

    return Variant("noop", everything, None, seq_len * seq_len, 0, lambda: {})


SOFTCAP = 30.0


def softcap_variant(seq_len: int, settings: Settings) -> Variant:
    """Causal with Gemma 2's logit softcap: SDPA has no way to say it (skipped)."""

    def softcap(score, b, h, q_idx, kv_idx):
        return SOFTCAP * torch.tanh(score / SOFTCAP)

    return Variant("softcap", causal_mask, softcap, causal_pairs(seq_len), 0, None)


def prefix_lm_variant(seq_len: int, settings: Settings) -> Variant:
    """The first quarter of the sequence is a bidirectional prefix, the rest causal."""
    prefix = seq_len // 4

    def prefix_lm(b, h, q_idx, kv_idx):
        return (kv_idx < prefix) | (q_idx >= kv_idx)

    # query q sees max(q + 1, prefix) keys
    pairs = prefix * prefix + causal_pairs(seq_len) - causal_pairs(prefix)
    return Variant("prefix_lm", prefix_lm, None, pairs, dense_mask_bytes(seq_len),
                   dense_mask_kwargs(prefix_lm, seq_len, settings.device))


def natten_shape(seq_len: int, smoke: bool) -> tuple[tuple[int, int], tuple[int, int]]:
    """(canvas, kernel per axis) of the 2-D neighborhood variant: rows of 64 tokens (16 in --smoke; fewer when
    S is not a multiple) and a 13 x 13 window (5 x 5 in --smoke), narrowed to a canvas smaller than it."""
    width, kernel = (16, 5) if smoke else (64, 13)
    while seq_len % width:
        width //= 2
    rows = seq_len // width
    return (rows, width), (min(kernel, rows), min(kernel, width))


def natten_variant(seq_len: int, settings: Settings) -> Variant:
    """2-D neighborhood attention (NATTEN) on a canvas of S / 64 rows of 64 tokens."""
    from attnc import variants

    canvas, kernel = natten_shape(seq_len, settings.smoke)
    mask = variants.natten(canvas, kernel)
    # windows are clamped at the borders, so every query sees exactly kernel[0] x kernel[1] keys
    return Variant("natten_2d", mask, None, seq_len * kernel[0] * kernel[1], dense_mask_bytes(seq_len),
                   dense_mask_kwargs(mask, seq_len, settings.device))


VARIANTS = {"noop": noop_variant, "causal": causal_variant, "softcap": softcap_variant,
            "sliding_window": sliding_window_variant, "prefix_lm": prefix_lm_variant, "alibi": alibi_variant,
            "document": document_variant, "natten_2d": natten_variant}


# -- implementations: each returns a zero-argument callable computing the output, or why it can't run ----


def make_attnc(variant: Variant, q: Tensor, k: Tensor, v: Tensor, settings: Settings) -> Callable[[], Tensor]:
    seq_len = q.shape[2]
    block_mask = attnc.create_block_mask(variant.mask_mod, None, None, seq_len, seq_len, device=q.device)
    return lambda: attnc.flex_attention(q, k, v, score_mod=variant.score_mod, block_mask=block_mask,
                                        backend="triton")


@functools.cache
def compiled_flex() -> Callable:
    from torch.nn.attention.flex_attention import flex_attention

    # Every (variant, shape) is a new graph; keep them all instead of falling back to eager.
    torch._dynamo.config.cache_size_limit = 256
    return torch.compile(flex_attention, dynamic=False)


def make_flex(variant: Variant, q: Tensor, k: Tensor, v: Tensor, settings: Settings) -> Callable[[], Tensor] | str:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    if q.device.type == "cpu" and settings.pass_name == "fwd+bwd":
        return "torch's flex_attention has no backward on CPU"
    # Eager in --smoke: compiling on a CPU takes minutes, and eager computes the same function.
    flex = flex_attention if settings.smoke else compiled_flex()
    seq_len = q.shape[2]
    block_mask = create_block_mask(variant.mask_mod, None, None, seq_len, seq_len, device=q.device)
    return lambda: flex(q, k, v, score_mod=variant.score_mod, block_mask=block_mask)


def make_sdpa(variant: Variant, q: Tensor, k: Tensor, v: Tensor, settings: Settings) -> Callable[[], Tensor] | str:
    if variant.sdpa_kwargs is None:
        return "SDPA cannot express this score mod"
    free = free_memory(q.device)
    if variant.sdpa_bytes > SDPA_MASK_SHARE * free:
        return (f"its dense mask or bias needs {variant.sdpa_bytes / 2**30:.1f} GiB, over "
                f"{SDPA_MASK_SHARE:.0%} of the {free / 2**30:.1f} GiB free")
    kwargs = variant.sdpa_kwargs()
    return lambda: F.scaled_dot_product_attention(q, k, v, **kwargs)


IMPLS = {"attnc": make_attnc, "flex": make_flex, "sdpa": make_sdpa}


# -- devices -------------------------------------------------------------------------------------------


def free_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def smoke_device() -> torch.device:
    """The CPU through the Triton interpreter; the GPU where one switched the interpreter off."""
    from attnc.runtime.interpreter import interpreter_active

    return torch.device("cpu" if interpreter_active() else "cuda")


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (Triton interpreter)"


# -- measuring -----------------------------------------------------------------------------------------


def make_case(variant: str, seq_len: int, head_dim: int, settings: Settings) -> Case:
    """Fresh unit-normal inputs (never zeros) for one case; seeded by the shape, so runs are comparable."""
    batch = max(1, settings.tokens // (settings.heads * seq_len))
    if settings.device.type == "cuda":
        batch = min(max(batch, BATCH_RANGE[0]), BATCH_RANGE[1])
    gen = torch.Generator(device=settings.device).manual_seed(seq_len * 1000 + head_dim)
    shape = (batch, settings.heads, seq_len, head_dim)
    backward = settings.pass_name == "fwd+bwd"
    qkv = tuple(torch.randn(shape, device=settings.device, dtype=settings.dtype, generator=gen)
                .requires_grad_(backward) for _ in range(3))
    grad = torch.randn(shape, device=settings.device, dtype=settings.dtype, generator=gen) if backward else None
    return Case(VARIANTS[variant](seq_len, settings), qkv, grad)


def as_step(attention: Callable[[], Tensor], case: Case) -> Step:
    if case.grad is None:
        return lambda: (attention(),)

    def forward_backward() -> tuple[Tensor, ...]:
        out = attention()
        return (out, *torch.autograd.grad(out, case.qkv, case.grad))

    return forward_backward


def build(impl: str, case: Case, settings: Settings, notes: list[str]) -> Step | None:
    """The impl's step, run once (compiling it); None, with a note, when it cannot run this case."""
    try:
        made = IMPLS[impl](case.variant, *case.qkv, settings)
        if isinstance(made, str):
            notes.append(f"{case.label}: {impl} skipped: {made}")
            return None
        step = as_step(made, case)
        step()
        synchronize(settings.device)
        return step
    except Exception as error:  # one failing implementation must not hide the others' numbers
        traceback.print_exc()
        first_line = (str(error).splitlines() or [""])[0]
        notes.append(f"{case.label}: {impl} failed: {type(error).__name__}: {first_line}")
        release(settings.device)
        return None


def compare(case: Case, other: str, ours: tuple[Tensor, ...], theirs: tuple[Tensor, ...]) -> list[dict]:
    _, _, seq_len, head_dim = case.shape
    checks = []
    for name, a, b in zip(TENSORS[case.pass_name], ours, theirs, strict=True):
        a, b = a.detach().double(), b.detach().double()
        checks.append({"variant": case.variant.name, "S": seq_len, "D": head_dim, "pass": case.pass_name,
                       "against": other, "tensor": name, "max_abs_diff": (a - b).abs().max().item(),
                       "rel_err": ((a - b).norm() / b.norm()).item()})
    return checks


def compare_outputs(steps: dict[str, Step], case: Case, settings: Settings, notes: list[str]) -> list[dict]:
    """attnc's output (and gradients) against each other implementation's, before anything is timed."""
    if "attnc" not in steps:
        return []
    ours = steps["attnc"]()
    checks = []
    for other in ("flex", "sdpa"):
        if other in steps:
            checks += compare(case, other, ours, steps[other]())
    tolerance = TOLERANCE[settings.dtype]
    for c in checks:
        if not c["rel_err"] <= tolerance:  # also catches NaN
            notes.append(f"{case.label}: MISMATCH {c['tensor']}: ||attnc - {c['against']}|| / ||{c['against']}|| "
                         f"= {c['rel_err']:.3e} > {tolerance}")
    return checks


def wall_ms(step: Step, device: torch.device, reps: int) -> float:
    """Median host-clock time of `reps` calls, each synchronized."""
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def time_ms(step: Step, settings: Settings) -> float:
    if settings.smoke:
        return wall_ms(step, settings.device, reps=2)
    import triton.testing

    # do_bench's budgets are milliseconds; stretch them so that even the slowest case repeats many times.
    warmup, rep, min_reps = (10, 30, 10) if settings.quick else (25, 100, 30)
    estimate = wall_ms(step, settings.device, reps=1)
    return float(triton.testing.do_bench(step, warmup=max(warmup, 3 * estimate), rep=max(rep, min_reps * estimate),
                                         return_mode="median"))


def run_case(case: Case, settings: Settings, notes: list[str], checks: list[dict]) -> list[Row]:
    steps = {impl: build(impl, case, settings, notes) for impl in IMPLS}
    steps = {impl: step for impl, step in steps.items() if step is not None}
    checks.extend(compare_outputs(steps, case, settings, notes))
    batch, heads, seq_len, head_dim = case.shape
    flops = FLOPS_PER_PAIR[settings.pass_name] * batch * heads * head_dim * case.variant.allowed_pairs
    dtype = str(settings.dtype).removeprefix("torch.")
    rows = []
    for impl, step in steps.items():
        ms = time_ms(step, settings)
        rows.append(Row(case.variant.name, impl, settings.pass_name, batch, heads, seq_len, head_dim, dtype, ms,
                        flops / (ms * 1e-3) / 1e12))
    return rows


def run_all(variants: list[str], seq_lens: list[int], head_dims: list[int], settings: Settings,
            notes: list[str], checks: list[dict]) -> list[Row]:
    rows = []
    for variant, seq_len, head_dim in itertools.product(variants, seq_lens, head_dims):
        case = make_case(variant, seq_len, head_dim, settings)
        rows += run_case(case, settings, notes, checks)
        del case  # free the inputs (and everything the steps captured) before the next shape
        release(settings.device)
    return rows


# -- reporting -----------------------------------------------------------------------------------------


def row_key(row: Row) -> tuple:
    return (row.variant, row.pass_name, row.S, row.D)


def ratio(rows: list[Row], row: Row, other: str) -> str:
    match = [r for r in rows if row_key(r) == row_key(row) and r.impl == other]
    return f"{row.tflops / match[0].tflops:.2f}x" if match and row.impl == "attnc" else ""


def print_checks(checks: list[dict]) -> None:
    """One line per case: the largest relative difference from each other implementation (all are in the JSON)."""
    worst: dict[str, dict[str, dict]] = {}
    for c in checks:
        by_other = worst.setdefault(case_label(c["variant"], c["S"], c["D"], c["pass"]), {})
        if c["against"] not in by_other or not c["rel_err"] <= by_other[c["against"]]["rel_err"]:
            by_other[c["against"]] = c
    for label, by_other in worst.items():
        parts = [f"vs {other} {c['rel_err']:.1e} ({c['tensor']})" for other, c in by_other.items()]
        print(f"check {label}: max ||attnc - other|| / ||other||: {', '.join(parts)}")


def print_table(rows: list[Row]) -> None:
    header = (f"{'variant':<14} {'pass':<7} {'S':>6} {'D':>4} {'B':>3} {'H':>3} {'impl':<6} {'ms':>9} "
              f"{'TFLOP/s':>9} {'attnc/flex':>10} {'attnc/sdpa':>10}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r.variant:<14} {r.pass_name:<7} {r.S:>6} {r.D:>4} {r.B:>3} {r.H:>3} {r.impl:<6} {r.ms:>9.3f} "
              f"{r.tflops:>9.4g} {ratio(rows, r, 'flex'):>10} {ratio(rows, r, 'sdpa'):>10}")


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def merged(old: dict, rows: list[Row], checks: list[dict], notes: list[str]) -> dict:
    """Today's earlier results with every case this run measured replaced (a full grid may not fit one run).
    Rows and checks name their case in fields, notes in their prefix up to the first colon."""
    measured = {case_label(r.variant, r.S, r.D, r.pass_name) for r in rows} | {n.split(":")[0] for n in notes}

    def kept(entry: dict) -> bool:
        return case_label(entry["variant"], entry["S"], entry["D"], entry["pass"]) not in measured

    return {"rows": [r for r in old.get("rows", []) if kept(r)] + [r.as_json() for r in rows],
            "checks": [c for c in old.get("checks", []) if kept(c)] + checks,
            "notes": [n for n in old.get("notes", []) if n.split(":")[0] not in measured] + notes}


def write_results(rows: list[Row], checks: list[dict], notes: list[str], device: torch.device,
                  out_dir: pathlib.Path) -> pathlib.Path:
    import triton

    out_dir.mkdir(parents=True, exist_ok=True)
    name = device_name(device)
    path = out_dir / f"{datetime.date.today().isoformat()}-{slug(name)}.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    report = {"device": name, "torch": torch.__version__, "triton": triton.__version__,
              **merged(old, rows, checks, notes)}
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


# -- command line --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pass", dest="pass_name", choices=tuple(FLOPS_PER_PAIR), default="fwd",
                        help="time the forward, or forward + backward (default: fwd)")
    parser.add_argument("--seq", type=int, nargs="+", help="sequence lengths (default: 1024 2048 4096 8192 16384)")
    parser.add_argument("--head-dim", type=int, nargs="+", help="head dimensions (default: 64 128)")
    parser.add_argument("--variant", nargs="+", choices=tuple(VARIANTS), default=list(VARIANTS),
                        help="variants (default: all)")
    parser.add_argument("--quick", action="store_true", help="S = 4096 only, shorter timing")
    parser.add_argument("--smoke", action="store_true", help="no GPU needed: tiny float32 sizes, every code path")
    parser.add_argument("--out", type=pathlib.Path, help="directory for the JSON results "
                        "(default: benchmarks/results; with --smoke nothing is written unless given)")
    parser.add_argument("--no-save", action="store_true", help="print the table only")
    return parser.parse_args(argv)


def settings_for(args: argparse.Namespace) -> Settings:
    if args.smoke:
        return Settings(smoke_device(), torch.float32, SMOKE_HEADS, SMOKE_HEADS * SMOKE_SEQ, SMOKE_WINDOW,
                        args.pass_name, quick=args.quick, smoke=True)
    return Settings(torch.device("cuda"), DTYPE, HEADS, TOKENS, WINDOW, args.pass_name, quick=args.quick)


def sizes(args: argparse.Namespace) -> tuple[list[int], list[int]]:
    default_seq = [SMOKE_SEQ] if args.smoke else [4096] if args.quick else list(SEQ_LENS)
    default_dims = [SMOKE_DIM] if args.smoke else list(HEAD_DIMS)
    return args.seq or default_seq, args.head_dim or default_dims


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        print("bench_attention: needs a CUDA GPU (torch.cuda.is_available() is False); nothing measured. "
              "--smoke checks the script on the CPU.", file=sys.stderr)
        return 2
    settings = settings_for(args)
    checks: list[dict] = []
    notes: list[str] = []
    with warnings.catch_warnings():
        # --smoke calls flex_attention eagerly on purpose; torch warns that it is unfused.
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        rows = run_all(args.variant, *sizes(args), settings, notes, checks)
    # The table last but for the notes: a long run's output is often read from its end.
    print_checks(checks)
    print_table(rows)
    for note in notes:
        print(f"note: {note}")
    out = args.out or (None if args.smoke else ROOT / "benchmarks" / "results")
    if out is not None and not args.no_save:
        print(f"wrote {write_results(rows, checks, notes, settings.device, out)}")
    return 1 if any("MISMATCH" in note for note in notes) else 0


if __name__ == "__main__":
    sys.exit(main())
