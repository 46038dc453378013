"""A tiny decoder loop with a paged KV cache, on the CPU.

Two prompts of different lengths are prefilled together as one packed batch (`attnc.varlen_attention`),
their keys and values written into a shared pool of 16-token pages; then each step appends one token per
sequence (a new page when the last one is full) and attends over the cache through its block table
(`attnc.kvcache_attention`). Every step's output is checked against attention over the whole sequence
recomputed from scratch.

    python examples/decode_paged_cache.py
"""

from __future__ import annotations

import torch

import attnc

HEADS, KV_HEADS, DIM, PAGE, POOL_PAGES, STEPS = 4, 2, 16, 16, 12, 6
BACKEND = "triton"  # the generated kernels; in the Triton interpreter on a CPU


def causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


class PagedCache:
    """A pool of pages shared by every sequence; each sequence's block table lists its pages in order."""

    def __init__(self, batch: int) -> None:
        self.k = torch.zeros(POOL_PAGES, PAGE, KV_HEADS, DIM)
        self.v = torch.zeros(POOL_PAGES, PAGE, KV_HEADS, DIM)
        self.free = list(range(POOL_PAGES - 1, -1, -1))  # hand pages out from the end: any order works
        self.pages: list[list[int]] = [[] for _ in range(batch)]
        self.lengths = [0] * batch

    def append(self, b: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write `k, v [n, KV_HEADS, DIM]` after sequence b's cached tokens."""
        for i in range(k.shape[0]):
            slot = self.lengths[b] % PAGE
            if slot == 0:
                self.pages[b].append(self.free.pop())
            self.k[self.pages[b][-1], slot] = k[i]
            self.v[self.pages[b][-1], slot] = v[i]
            self.lengths[b] += 1

    def block_table(self) -> torch.Tensor:
        width = max(len(p) for p in self.pages)
        return torch.tensor([p + [0] * (width - len(p)) for p in self.pages], dtype=torch.int32)

    def seqlens(self) -> torch.Tensor:
        return torch.tensor(self.lengths, dtype=torch.int32)


def main() -> None:
    g = torch.Generator().manual_seed(0)
    prompts = [21, 9]
    total = sum(prompts) + len(prompts) * STEPS
    # every token's q, k, v, as a model layer would produce them (random here)
    q_all = [torch.randn(n + STEPS, HEADS, DIM, generator=g) for n in prompts]
    k_all = [torch.randn(n + STEPS, KV_HEADS, DIM, generator=g) for n in prompts]
    v_all = [torch.randn(n + STEPS, KV_HEADS, DIM, generator=g) for n in prompts]
    cache = PagedCache(len(prompts))

    # prefill: both prompts packed, no padding
    cu = torch.tensor([0, prompts[0], sum(prompts)], dtype=torch.int32)
    packed = [torch.cat([t[:n] for t, n in zip(ts, prompts, strict=True)]) for ts in (q_all, k_all, v_all)]
    attnc.varlen_attention(*packed, cu, cu, mask_mod=causal, backend=BACKEND)
    for b, n in enumerate(prompts):
        cache.append(b, k_all[b][:n], v_all[b][:n])

    worst = 0.0
    for step in range(STEPS):
        for b, n in enumerate(prompts):
            cache.append(b, k_all[b][n + step:n + step + 1], v_all[b][n + step:n + step + 1])
        q = torch.stack([q_all[b][n + step] for b, n in enumerate(prompts)]).unsqueeze(1)  # [B, 1, H, D]
        out = attnc.kvcache_attention(q, cache.k, cache.v, cache.seqlens(), block_table=cache.block_table(),
                                      mask_mod=causal, backend=BACKEND)
        for b, n in enumerate(prompts):
            length = n + step + 1
            q_full, k_full, v_full = (t[b][:length].unsqueeze(0).transpose(1, 2) for t in (q_all, k_all, v_all))
            full = attnc.flex_attention(q_full, k_full, v_full, mask_mod=causal, enable_gqa=True,
                                        backend="reference")
            worst = max(worst, (out[b, 0] - full[0, :, -1]).abs().max().item())
    print(f"decoded {STEPS} tokens for {len(prompts)} sequences ({total} tokens in "
          f"{POOL_PAGES - len(cache.free)} pages of {PAGE})")
    print(f"max |decode - full recomputation| = {worst:.2e}")


if __name__ == "__main__":
    main()
