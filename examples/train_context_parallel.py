"""Train a tiny causal language model with its sequence split across two CPU processes (gloo).

Each process holds a zig-zag shard of every sequence; attention runs as a ring over the two ranks
(`attnc.distributed.attention`) with a causal mask and an ALiBi bias whose slopes are learned. Parameter
gradients are summed over the ranks as DDP would (so the attention's captured gradients are asked for as
each rank's share, `captured_grads="local"`), and both ranks take the same optimizer step.

    python examples/train_context_parallel.py
"""

from __future__ import annotations

import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import attnc.distributed as cp

VOCAB, WIDTH, HEADS, LENGTH, STEPS = 16, 32, 2, 32, 10


class TinyModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.qkv = nn.Linear(WIDTH, 3 * WIDTH)
        self.out = nn.Linear(WIDTH, VOCAB)
        self.slopes = nn.Parameter(torch.full((HEADS,), 0.1))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        slopes = self.slopes

        def causal(b, h, q_idx, kv_idx):
            return q_idx >= kv_idx

        def alibi(score, b, h, q_idx, kv_idx):
            return score + slopes[h] * (kv_idx - q_idx)

        x = self.embed(tokens)  # [B, S_local, WIDTH]
        q, k, v = (t.unflatten(-1, (HEADS, -1)).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=-1))
        y = cp.attention(q, k, v, layout="zigzag", mask_mod=causal, score_mod=alibi, backend="reference",
                         captured_grads="local")
        return self.out(x + y.transpose(1, 2).flatten(-2))


def sequences(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Counting sequences modulo VOCAB from random starts: the next token follows from the previous one."""
    starts = torch.randint(0, VOCAB, (batch, 1), generator=torch.Generator().manual_seed(0))
    tokens = (starts + torch.arange(LENGTH + 1)) % VOCAB
    return tokens[:, :-1], tokens[:, 1:]


def train(rank: int, world: int, init_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)  # the same initial weights on every rank
    model = TinyModel()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
    tokens, targets = sequences(4)
    local_tokens = cp.shard(tokens, layout="zigzag", dim=-1)
    local_targets = cp.shard(targets, layout="zigzag", dim=-1)
    losses = []
    for _ in range(STEPS):
        logits = model(local_tokens)
        # each rank's share of the mean over every token of every sequence
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), local_targets.flatten(), reduction="sum")
        loss = loss / targets.numel()
        optimizer.zero_grad()
        loss.backward()
        for p in model.parameters():
            dist.all_reduce(p.grad)
        optimizer.step()
        total = loss.detach().clone()
        dist.all_reduce(total)
        losses.append(total.item())
    if rank == 0:
        print(f"slopes learned: {[round(s, 3) for s in model.slopes.tolist()]}")
        print(f"loss fell from {losses[0]:.4f} to {losses[-1]:.4f}")
    dist.destroy_process_group()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(train, args=(2, os.path.join(tmp, "init")), nprocs=2, join=True)


if __name__ == "__main__":
    main()
