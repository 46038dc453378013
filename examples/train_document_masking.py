"""Train a small transformer block for a few steps on packed documents.

Several short documents are packed into one sequence; a token may attend only to earlier tokens of its
own document (causal & document mask), and the attention scores get a learned relative-position bias whose
gradient attnc computes from the score mod's IR. The toy task: each document repeats a random pattern, so
the next token is predictable from the same document only.

    python examples/train_document_masking.py
"""

from __future__ import annotations

import torch
from torch import nn

import attnc
from attnc import variants as V

torch.manual_seed(0)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
VOCAB, WIDTH, HEADS, MAX_DISTANCE = 32, 32, 2, 16
LENGTHS = torch.tensor([40, 25, 31, 24])  # documents packed into one sequence of 120 tokens
STEPS = 6


class Block(nn.Module):
    """Pre-norm attention + MLP, with attention from attnc."""

    def __init__(self, doc_ids: torch.Tensor) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.norm1, self.norm2 = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
        self.qkv = nn.Linear(WIDTH, 3 * WIDTH)
        self.proj = nn.Linear(WIDTH, WIDTH)
        self.mlp = nn.Sequential(nn.Linear(WIDTH, 4 * WIDTH), nn.GELU(), nn.Linear(4 * WIDTH, WIDTH))
        self.head = nn.Linear(WIDTH, VOCAB)
        self.bias_table = nn.Parameter(torch.zeros(HEADS, 2 * MAX_DISTANCE + 1))
        self.attn = attnc.compile(mask_mod=V.causal() & V.document(doc_ids),
                                  score_mod=V.relative_bias(self.bias_table))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        q, k, v = self.qkv(self.norm1(x)).unflatten(-1, (3, HEADS, WIDTH // HEADS)).permute(2, 0, 3, 1, 4)
        attended = self.attn(q, k, v, backend="triton").transpose(1, 2).flatten(2)
        x = x + self.proj(attended)
        x = x + self.mlp(self.norm2(x))
        return self.head(x)


def packed_batch() -> torch.Tensor:
    """One sequence of documents, each repeating its own random 5-token pattern."""
    docs = [torch.randint(0, VOCAB, (5,)).repeat(int(n) // 5 + 1)[: int(n)] for n in LENGTHS]
    return torch.cat(docs)[None].to(DEVICE)


def main() -> None:
    model = Block(V.document_ids(LENGTHS).to(DEVICE)).to(DEVICE)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
    tokens = packed_batch()
    losses = []
    for step in range(STEPS):
        logits = model(tokens[:, :-1])
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        print(f"step {step}: loss {loss.item():.3f}, |grad of the bias table| {model.bias_table.grad.norm():.3e}")
    assert losses[-1] < losses[0], "the loss should fall"
    print(f"loss fell from {losses[0]:.3f} to {losses[-1]:.3f}")


if __name__ == "__main__":
    main()
