"""Attention variants written the FlexAttention way, plus an independent dense evaluation of them.

`dense_attention` evaluates the mods directly on broadcast torch index tensors (no attnc code at all),
so it checks the tracer, the IR and the reference interpreter as well as the kernels.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch


@dataclasses.dataclass
class Case:
    name: str
    mask_mod: Callable | None = None
    score_mod: Callable | None = None
    Hq: int = 2
    Hkv: int = 2
    Q_LEN: int = 100
    KV_LEN: int = 100
    D: int = 32
    Dv: int | None = None
    B: int = 1


def causal(b, h, q, kv):
    return q >= kv


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # kernels run natively on a GPU, interpreted on CPU


def make_cases(seed: int = 0, device: str = DEVICE) -> list[Case]:
    g = torch.Generator().manual_seed(seed)
    window, prefix, cap = 24, 17, 20.0
    slopes = torch.exp2(-torch.arange(1, 5, dtype=torch.float32)).to(device)
    doc = torch.repeat_interleave(torch.arange(5, dtype=torch.int32), torch.tensor([30, 7, 50, 1, 62])).to(device)
    rel_table = torch.randn(4, 2 * 160, generator=g).to(device)
    buckets, max_exact, max_distance = 16, 8, 128
    t5_bias = torch.randn(buckets, 4, generator=g).to(device)
    doc_bias = torch.randn(4, 5, generator=g).to(torch.bfloat16).to(device)
    lengths = torch.tensor([90, 33], dtype=torch.int64).to(device)
    canvas_w, radius = 12, 2

    def sliding_window(b, h, q, kv):
        return (q - kv >= 0) & (q - kv < window)

    def prefix_lm(b, h, q, kv):
        return (kv < prefix) | (q >= kv)

    def alibi(score, b, h, q, kv):
        return score + slopes[h] * (kv - q)

    def softcap(score, b, h, q, kv):
        return cap * torch.tanh(score / cap)

    def document(b, h, q, kv):
        return doc[q] == doc[kv]

    def relative_bias(score, b, h, q, kv):
        return score + rel_table[h, q - kv + 160]

    def t5(score, b, h, q, kv):
        rel = torch.abs(kv - q)
        large = max_exact + (torch.log(rel.float() / max_exact + 1e-6) / math.log(max_distance / max_exact)
                             * (buckets - max_exact)).to(torch.int32)
        bucket = torch.where(rel < max_exact, rel, torch.clamp(large, max=buckets - 1))
        return score + t5_bias[bucket, h]

    def neighborhood_2d(b, h, q, kv):
        qy, qx, ky, kx = q // canvas_w, q % canvas_w, kv // canvas_w, kv % canvas_w
        return (torch.abs(qy - ky) <= radius) & (torch.abs(qx - kx) <= radius)

    def per_head_window(b, h, q, kv):
        return (q >= kv) & (q - kv < (h + 1) * 16)

    def late_rows(b, h, q, kv):  # rows q < 11 have no allowed key
        return (q >= 11) & (kv <= q - 11)

    def nested_bias(score, b, h, q, kv):
        return score + doc_bias[h, doc[q]]

    def dilated(b, h, q, kv):  # Python floor-mod on negative differences matters here
        return ((kv - q) % 3 == 0) & (q - kv < 40)

    def padding(b, h, q, kv):
        return kv < lengths[b]

    def rotary_like(score, b, h, q, kv):
        return score * torch.sigmoid(torch.cos((q - kv).float() * 0.1)) + torch.sin(kv.float()) * 0.5

    def floor_ops(score, b, h, q, kv):
        return score + ((q - kv) // 7).float() * 0.05 - torch.floor(score * 2) * 0.1

    return [
        Case("causal", causal),
        Case("sliding_window", sliding_window, Q_LEN=130, KV_LEN=130),
        Case("prefix_lm", prefix_lm),
        Case("alibi", causal, alibi, Hq=4, Hkv=4),
        Case("softcap", None, softcap, D=48, Dv=80),
        Case("document", document, Q_LEN=150, KV_LEN=150),
        Case("relative_bias", causal, relative_bias, Hq=4, Hkv=2, Q_LEN=140, KV_LEN=150),
        Case("t5_buckets", None, t5, Hq=4, Hkv=4),
        Case("gqa_causal", causal, Hq=4, Hkv=1, Q_LEN=77, KV_LEN=77),
        Case("cross_attention", None, None, Q_LEN=37, KV_LEN=150, D=16),
        Case("neighborhood_2d", neighborhood_2d, Q_LEN=144, KV_LEN=144),
        Case("per_head_window", per_head_window, Hq=4, Hkv=2),
        Case("fully_masked_rows", late_rows),
        Case("nested_bias", causal, nested_bias, Hq=4, Hkv=4, Q_LEN=150, KV_LEN=150),
        Case("dilated", dilated, Q_LEN=90, KV_LEN=110),
        Case("padding", padding, B=2, Q_LEN=96, KV_LEN=100),
        Case("rotary_like", causal, rotary_like, D=96),
        Case("floor_ops", None, floor_ops, Q_LEN=1, KV_LEN=70),
    ]


def index_grids(B: int, H: int, Q: int, KV: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    return tuple(torch.arange(n, device=device).view(shape)
                 for n, shape in ((B, (B, 1, 1, 1)), (H, (1, H, 1, 1)), (Q, (1, 1, Q, 1)), (KV, (1, 1, 1, KV))))


def dense_attention(case: Case, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 softmax attention with the mods evaluated directly on index tensors."""
    B, H, Q, _ = q.shape
    KV = k.shape[2]
    group = H // k.shape[1]
    q, k, v = q.double(), k.repeat_interleave(group, 1).double(), v.repeat_interleave(group, 1).double()
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = q @ k.transpose(-1, -2) * scale
    b, h, qi, ki = index_grids(B, H, Q, KV, q.device)
    if case.score_mod is not None:
        s = case.score_mod(s, b, h, qi, ki).double().expand(B, H, Q, KV)
    if case.mask_mod is not None:
        s = s.masked_fill(~case.mask_mod(b, h, qi, ki).expand(B, H, Q, KV), -math.inf)
    lse = torch.logsumexp(s, -1)
    p = torch.exp(s - torch.where(lse.isinf(), 0, lse)[..., None])
    return p @ v, lse
