"""Reads that do not index every dimension: chained indexing (`bias[b][h][q_idx]`) and small vectors reduced
in the mod (`torch.dot(q_pe[b, h, q_idx], k_pe[b, 0, kv_idx])`, `(u * w).sum()`, `.any()`, `.amax()`).

Forward and backward through the generated kernel and the reference, against torch applying the mods as
FlexAttention does (vmapped over b, h, q_idx, kv_idx): a float64 golden (captured tensors in float64 too),
a float32 eager computation, and attnc's error at most K times the eager one, for the output and the
gradients of q, k, v and of every captured tensor.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask as torch_create_block_mask

import attnc
from tests.test_pointwise_ops import assert_block_map_like_torch, mean_error

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

B, H, Q_LEN, KV_LEN, D, R = 2, 2, 21, 27, 16, 8
K_FORWARD, K_BACKWARD = 2.0, 3.0
FLOOR = 1e-7
_VMAP_DIMS = ((None, None, None, 0), (None, None, 0, None), (None, 0, None, None), (0, None, None, None))


def vmapped(mod: Callable, score: torch.Tensor | None) -> torch.Tensor:
    """`mod` applied at every (b, h, q_idx, kv_idx), one scalar at a time, as torch's FlexAttention does."""
    idx = [torch.arange(n, dtype=torch.int32) for n in (B, H, Q_LEN, KV_LEN)]
    fn = mod
    for dims in _VMAP_DIMS:
        fn = torch.func.vmap(fn, in_dims=(0, *dims) if score is not None else dims)
    return fn(score, *idx) if score is not None else fn(*idx)


def dense(q, k, v, score_mod, mask_mod, dtype):
    q, k, v = (x.to(dtype) for x in (q, k, v))
    s = q @ k.transpose(-1, -2) * (1.0 / math.sqrt(q.shape[-1]))
    if score_mod is not None:
        s = vmapped(score_mod, s).to(dtype)
    if mask_mod is not None:
        s = s.masked_fill(~vmapped(mask_mod, None), -math.inf)
    top = s.amax(-1, keepdim=True)
    p = torch.exp(s - torch.where(top.isinf(), 0.0, top))
    total = p.sum(-1, keepdim=True)
    return (p / torch.where(total == 0, 1.0, total)) @ v


def _run(fn: Callable[[], torch.Tensor], leaves: list[torch.Tensor]) -> list[torch.Tensor]:
    for t in leaves:
        t.grad = None
    out = fn()
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    (out.double() * weights).sum().backward()
    return [out.detach().double()] + [torch.zeros_like(t).double() if t.grad is None else t.grad.double()
                                      for t in leaves]


def assert_like_torch(make: Callable[..., tuple[Callable | None, Callable | None]],
                      captured: list[torch.Tensor]) -> None:
    """`make(*tensors)` returns (score_mod, mask_mod) closing over `tensors`: the golden gets float64 copies."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, n, D, generator=g).requires_grad_(True) for n in (Q_LEN, KV_LEN, KV_LEN))
    leaves = [q, k, v, *captured]
    wide = [t.double() if t.is_floating_point() else t for t in captured]
    golden = _run(lambda: dense(q, k, v, *make(*wide), torch.float64), leaves)
    eager = _run(lambda: dense(q, k, v, *make(*captured), torch.float32), leaves)
    score_mod, mask_mod = make(*captured)
    names = ["out", "dq", "dk", "dv", *(f"captured{i}" for i in range(len(captured)))]
    for backend in ("triton", "reference"):
        got = _run(lambda backend=backend: attnc.flex_attention(q, k, v, score_mod, mask_mod=mask_mod,
                                                                backend=backend), leaves)
        for i, name in enumerate(names):
            assert not got[i].isnan().any(), (backend, name)
            error, reference = mean_error(got[i], golden[i]), mean_error(eager[i], golden[i])
            bound = (K_FORWARD if i == 0 else K_BACKWARD) * max(reference, FLOOR * float(golden[i].abs().mean()))
            assert error <= bound, f"{backend} {name}: error {error:.3g} > {bound:.3g} (eager: {reference:.3g})"


def _randn(*shape: int, seed: int, grad: bool = True) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).requires_grad_(grad)


def test_decoupled_rope_dot_product_of_two_captured_vectors():
    """DeepSeek MLA: score + q_pe . k_pe, with k_pe shared by the heads; gradients reach both."""
    def make(q_pe, k_pe):
        return (lambda s, b, h, q, kv: s + torch.dot(q_pe[b, h, q], k_pe[b, 0, kv]) * 0.3), None

    assert_like_torch(make, [_randn(B, H, Q_LEN, R, seed=1), _randn(B, 1, KV_LEN, R, seed=2)])


def test_learned_per_feature_bias_sum_and_matmul():
    def make(u, w, k_feat):
        def score_mod(s, b, h, q, kv):
            return s + (u[b, h, q] * w * k_feat[b, kv]).sum() * 0.2 + (u[b, h, q] @ k_feat[b, kv]) * 0.1 \
                + k_feat[b, kv].mean() + torch.linalg.vecdot(w, k_feat[b, kv]) * 0.1

        return score_mod, None

    assert_like_torch(make, [_randn(B, H, Q_LEN, R, seed=3), _randn(R, seed=4), _randn(B, KV_LEN, R, seed=5)])


def test_sum_over_the_last_dimension_and_extremes():
    def make(q_pe, k_pe):
        def score_mod(s, b, h, q, kv):
            product = q_pe[b, h, q] * k_pe[b, 0, kv]
            return s + product.sum(-1) * 0.2 + k_pe[b, 0, kv].amax() * 0.5 - (q_pe[b, h, q] - k_pe[b, 0, kv]).min()

        return score_mod, None

    assert_like_torch(make, [_randn(B, H, Q_LEN, R, seed=6), _randn(B, 1, KV_LEN, R, seed=7)])


def test_chained_indexing_means_the_same_as_one_index():
    def make(bias, table):
        def score_mod(s, b, h, q, kv):
            return s + bias[b][h][kv] + table[h][q, kv] + table[h, q][kv]

        return score_mod, None

    assert_like_torch(make, [_randn(B, H, KV_LEN, seed=8), _randn(H, Q_LEN, KV_LEN, seed=9)])
    bias = torch.randn(B, H, Q_LEN)
    chained = attnc.compile(score_mod=lambda s, b, h, q, kv: s + bias[b][h][q]).program.score
    assert chained is attnc.compile(score_mod=lambda s, b, h, q, kv: s + bias[b, h, q]).program.score


FLAGS = torch.rand(B, KV_LEN, 4, generator=torch.Generator().manual_seed(10)) > 0.7


def test_any_and_all_in_a_mask_forward_backward_and_block_map():
    def mask_mod(b, h, q, kv):
        return (FLAGS[b, kv].any() & (q >= kv)) | FLAGS[b, q % KV_LEN].all()

    assert_like_torch(lambda: (None, mask_mod), [])
    # each element's per-block range is known, not how they co-occur: attnc may keep a block torch drops
    # (never the reverse), and the attention through its map is the same
    ours = attnc.create_block_mask(mask_mod, B, None, Q_LEN, KV_LEN, device="cpu", BLOCK_SIZE=16)
    theirs = torch_create_block_mask(mask_mod, B, None, Q_LEN, KV_LEN, device="cpu", BLOCK_SIZE=16)
    assert bool((ours.to_dense() >= theirs.to_dense()).all())
    q, k, v = (torch.randn(B, H, n, D) for n in (Q_LEN, KV_LEN, KV_LEN))
    torch.testing.assert_close(attnc.flex_attention(q, k, v, block_mask=ours, backend="triton"),
                               attnc.flex_attention(q, k, v, mask_mod=mask_mod, backend="reference"))
    assert_block_map_like_torch(lambda b, h, q, kv: FLAGS[b, kv].any() & (q >= kv), None, Q_LEN, KV_LEN, 16)


ERRORS = {
    "as_value": (lambda t: lambda s, b, h, q, kv: s + t[b, h, q], "a vector of 8 elements is used as a single value"),
    "too_long": (lambda t: lambda s, b, h, q, kv: s + torch.zeros(B, 300)[b].sum(),
                 "a vector of 300 elements is read; vectors of at most 256 are supported"),
    "two_left": (lambda t: lambda s, b, h, q, kv: s + t[b].sum(),
                 "this read of a tensor of shape [2, 2, 21, 8] leaves 3 dimensions unindexed"),
    "max_dim": (lambda t: lambda s, b, h, q, kv: s + t[b, h, q].max(-1),
                ".max(dim) returns values and indices, which mods do not have"),
    "lengths": (lambda t: lambda s, b, h, q, kv: s + torch.dot(t[b, h, q], t[b, h, q][:4]),
                "torch.dot of vectors of 8 and 4 elements"),
}


def test_a_mod_returning_a_vector_is_a_trace_error_at_the_mod():
    grid = torch.zeros(4, 8)
    with pytest.raises(attnc.TraceError, match="mask_mod returned a vector of 8 elements, not a value") as caught:
        attnc.compile(lambda b, h, q, kv: grid[h] > 0)
    assert caught.value.location is not None and caught.value.location.filename.endswith("test_vector_reads.py")


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_vector_misuse_is_a_trace_error_at_the_user_line(name):
    make, message = ERRORS[name]
    with pytest.raises(attnc.TraceError, match=re.escape(message)) as caught:
        attnc.compile(score_mod=make(torch.randn(B, H, Q_LEN, R)))
    assert "test_vector_reads.py" in str(caught.value)
