"""attnc demo: compile several attention variants, run the generated kernels, check each against the
reference interpreter, and print a table.

On a machine without a GPU the kernels run in the Triton interpreter (small shapes); with a CUDA GPU they
run natively at larger shapes.
"""

from __future__ import annotations

import math
import time

import torch

import attnc


def causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def main() -> None:
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    B, H, L, D = (2, 8, 2048, 128) if cuda else (1, 4, 192, 64)
    block = 128 if cuda else 32  # BlockMask granularity: small on CPU so the short sequence shows sparsity
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, L, D, device=device, dtype=dtype) for _ in range(3))

    window = 48
    slopes = torch.exp2(-8.0 * torch.arange(1, H + 1, device=device) / H)
    doc_ids = torch.arange(L, device=device) * 5 // L  # five documents of equal length
    cap = 30.0
    rel_bias = torch.randn(H, 2 * L, device=device) * 0.5

    def sliding_window(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (q_idx - kv_idx < window)

    def alibi(score, b, h, q_idx, kv_idx):
        return score + slopes[h] * (kv_idx - q_idx)

    def document(b, h, q_idx, kv_idx):
        return doc_ids[q_idx] == doc_ids[kv_idx]

    def softcap(score, b, h, q_idx, kv_idx):
        return cap * torch.tanh(score / cap)

    def relative(score, b, h, q_idx, kv_idx):
        return score + rel_bias[h, q_idx - kv_idx + L]

    variants = [
        ("causal", causal, None),
        (f"sliding window {window}", sliding_window, None),
        ("causal + ALiBi", causal, alibi),
        ("document mask", attnc.and_masks(causal, document), None),
        ("softcap 30", None, softcap),
        ("relative bias", causal, relative),
    ]
    print(f"attnc demo on {device} ({'GPU' if cuda else 'Triton interpreter'}), B={B} H={H} L={L} D={D} {dtype}")
    print(f"{'variant':<20} {'block mask':>10} {'ms':>10} {'max |err|':>10} {'lse err':>9}  ok")
    failures = 0
    for name, mask_mod, score_mod in variants:
        block_mask = (attnc.create_block_mask(mask_mod, None, None, L, L, device=device, BLOCK_SIZE=block)
                      if mask_mod else None)
        args = dict(score_mod=score_mod, block_mask=block_mask, return_lse=True)
        start = time.perf_counter()
        out, lse = attnc.flex_attention(q, k, v, backend="triton", **args)
        if cuda:
            torch.cuda.synchronize()
        elapsed = (time.perf_counter() - start) * 1e3
        ref_out, ref_lse = attnc.flex_attention(q.float(), k.float(), v.float(), backend="reference", **args)
        err = (out.float() - ref_out).abs().max().item()
        finite = ref_lse.isfinite()
        lse_err = (lse[finite] - ref_lse[finite]).abs().max().item()
        ok = err < (2e-2 if dtype == torch.bfloat16 else 1e-4) and math.isfinite(lse_err)
        failures += not ok
        sparsity = f"{block_mask.sparsity():.0f}% skip" if block_mask is not None else "-"
        print(f"{name:<20} {sparsity:>10} {elapsed:>10.1f} {err:>10.2e} {lse_err:>9.1e}  {'yes' if ok else 'NO'}")
    print("all variants match the reference" if not failures else f"{failures} variant(s) disagree")
    raise SystemExit(1 if failures else 0)


if __name__ == "__main__":
    main()
