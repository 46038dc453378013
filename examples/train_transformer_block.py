"""Train a tiny decoder block built on `attnc.nn.Attention` for a few steps (on the CPU: the Triton interpreter).

The block is pre-norm: x + attention(norm(x)), then x + MLP(norm(x)). Its attention is causal, with grouped
query heads (2 query heads share 1 key/value head), RoPE, QK-norm and ALiBi slopes the optimiser learns. The
toy task: each sequence repeats a random 4-token pattern, so from the second period on the next token is the
one four positions back. A few steps on one fixed batch are enough to see the loss fall and the slopes move;
this shows the module training, not a model worth keeping.

    python examples/train_transformer_block.py
"""

from __future__ import annotations

import torch
from torch import nn

import attnc.nn

torch.manual_seed(0)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKEND = "triton"  # the generated kernels; in the Triton interpreter on a CPU
VOCAB, WIDTH, HEADS, KV_HEADS, PERIOD, LENGTH, BATCH, STEPS = 16, 32, 2, 1, 4, 16, 2, 6


class Block(nn.Module):
    """Embedding, one pre-norm transformer block, and a head predicting the next token."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.attention_norm, self.mlp_norm = nn.RMSNorm(WIDTH), nn.RMSNorm(WIDTH)
        self.attention = attnc.nn.Attention(WIDTH, HEADS, KV_HEADS, variant=["causal", attnc.nn.ALiBi(learnable=True)],
                                            rope=True, qk_norm=True, backend=BACKEND)
        self.mlp = nn.Sequential(nn.Linear(WIDTH, 4 * WIDTH), nn.GELU(), nn.Linear(4 * WIDTH, WIDTH))
        self.head = nn.Linear(WIDTH, VOCAB)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        x = x + self.attention(self.attention_norm(x))
        x = x + self.mlp(self.mlp_norm(x))
        return self.head(x)


def batch() -> torch.Tensor:
    """Sequences of a random pattern repeated."""
    patterns = torch.randint(0, VOCAB, (BATCH, PERIOD))
    return patterns.repeat(1, LENGTH // PERIOD + 1)[:, : LENGTH + 1].to(DEVICE)


def main() -> None:
    model = Block().to(DEVICE)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    tokens = batch()
    losses = []
    for step in range(STEPS):
        logits = model(tokens[:, :-1])
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        slopes = ", ".join(f"{s:.3f}" for s in model.attention.alibi.slopes.tolist())
        print(f"step {step}: loss {loss.item():.3f}, ALiBi slopes [{slopes}]")
    assert losses[-1] < losses[0], "the loss should fall"
    print(f"loss fell from {losses[0]:.3f} to {losses[-1]:.3f}")


if __name__ == "__main__":
    main()
