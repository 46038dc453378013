"""Context-parallel attention: the plan, and time split into compute, communication and their overlap.

    torchrun --nproc-per-node 4 benchmarks/bench_context_parallel.py --seq 65536     # GPUs, NCCL
    python benchmarks/bench_context_parallel.py --spawn 2 --seq 512                    # CPU, gloo, small

Per layout (contiguous, zig-zag, striped) and rank: the ring's forward (and forward + backward) time; the
communication alone (the same ring of K/V transfers, no attention); the computation alone (the same
attention calls, no transfers); and the overlap, (communication + computation - ring) / communication:
1 when every transfer hides behind the computation, 0 when none does. The plan printed first says which
blocks each rank computes and what it sends, decided from the mask's structure.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import attnc.distributed as cp
from attnc.distributed import ring as ring_module
from attnc.distributed.layout import segments
from attnc.distributed.planning import Problem, ring_plan, stride, variant_for


def causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median milliseconds of `fn` over `repeats` runs, after one warm-up; ranks start together."""
    fn()
    samples = []
    for _ in range(repeats):
        dist.barrier()
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        samples.append((time.perf_counter() - start) * 1e3)
    return sorted(samples)[len(samples) // 2]


def measure(layout: str, args: argparse.Namespace, device: torch.device, backend: str) -> dict[str, float]:
    world, rank = dist.get_world_size(), dist.get_rank()
    local = args.seq // world
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    q, k, v = (torch.randn(args.batch, args.heads, local, args.head_dim, device=device, dtype=dtype)
               for _ in range(3))
    variant = variant_for(causal, None, stride(layout, world))
    ring = ring_module.Ring(variant, None, tuple(range(world)), rank,
                            ring_plan(variant, Problem(args.batch, args.heads, args.seq, world, layout, device)),
                            tuple(segments(layout, args.seq, world, r) for r in range(world)), None, False, backend,
                            True)

    def forward() -> object:
        return cp.attention(q, k, v, layout=layout, mask_mod=causal, backend=backend)

    def forward_backward() -> None:
        qg, kg, vg = (t.detach().requires_grad_(True) for t in (q, k, v))
        cp.attention(qg, kg, vg, layout=layout, mask_mod=causal, backend=backend).sum().backward()

    def communication() -> None:
        block = (k, v)
        for step in range(world):
            held = block if ring.plan.held(ring.block_at(step), step) else None
            works, block = ring_module.pass_blocks(ring, step, held, (k, v))
            for work in works:
                work.wait()

    def computation() -> None:
        for step in range(world):
            y = ring.block_at(step)
            if ring.plan.held(y, step):
                for qs, ks in ring.pairs(y):
                    ring.attend(qs, ks, q[:, :, qs.offset:qs.offset + qs.length], k[:, :, :ks.length],
                                v[:, :, :ks.length])

    figures = {name: timed(fn, device, args.repeats) for name, fn in
               (("forward_ms", forward), ("forward_backward_ms", forward_backward),
                ("communication_ms", communication), ("computation_ms", computation))}
    hidden = figures["communication_ms"] + figures["computation_ms"] - figures["forward_ms"]
    communication_ms = figures["communication_ms"]
    figures["overlap"] = max(0.0, min(1.0, hidden / communication_ms)) if communication_ms else 1.0
    return figures


def run(rank: int, world: int, init: str | None, args: argparse.Namespace) -> None:
    use_cuda = torch.cuda.is_available() and not args.cpu
    if init is None:
        dist.init_process_group("nccl" if use_cuda else "gloo")
    else:
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", rank % torch.cuda.device_count()) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    backend = "triton" if use_cuda else args.backend
    results = {}
    for layout in cp.LAYOUTS:
        if rank == 0:
            print(cp.plan(causal, args.seq, world, layout, B=args.batch, H=args.heads, head_dim=args.head_dim))
        figures = measure(layout, args, device, backend)
        gathered: list[dict[str, float] | None] = [None] * world
        dist.all_gather_object(gathered, figures)
        results[layout] = gathered
        if rank == 0:
            for r, f in enumerate(gathered):
                print(f"  rank {r}: " + ", ".join(f"{name} {value:.3f}" for name, value in f.items()))
    if rank == 0 and args.out:
        meta = {"device": torch.cuda.get_device_name(device) if use_cuda else "cpu", "torch": torch.__version__,
                "world_size": world, "seq": args.seq, "batch": args.batch, "heads": args.heads,
                "head_dim": args.head_dim, "backend": backend}
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=1)
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--spawn", type=int, default=0, help="start this many gloo processes on the CPU")
    parser.add_argument("--cpu", action="store_true", help="gloo on the CPU even where CUDA is available")
    parser.add_argument("--backend", default="reference", help="attnc backend on the CPU (reference or triton)")
    parser.add_argument("--out", default="", help="write the figures as JSON here (rank 0)")
    args = parser.parse_args()
    if args.spawn:
        args.cpu = True
        with tempfile.TemporaryDirectory() as tmp:
            mp.spawn(run, args=(args.spawn, f"file://{os.path.join(tmp, 'init')}", args), nprocs=args.spawn, join=True)
    else:
        run(0, 1, None, args)


if __name__ == "__main__":
    main()
