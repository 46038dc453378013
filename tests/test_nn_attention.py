"""attnc.nn: the Attention module, RoPE and the KV cache, against a dense implementation written here.

The dense side shares only the module's parameters: projections as matrix products, RMSNorm, RoPE as a rotation
of complex numbers, head repetition for GQA, the bias of each variant and softmax, all in this file.
"""

from __future__ import annotations

import copy
import io
import math
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import attnc
import attnc.nn
from attnc import variants as V
from attnc.nn import ALiBi, KVCache, RelativeBias, RotaryEmbedding, T5Bias

ROOT = Path(__file__).resolve().parents[1]
E, H, L, B = 32, 2, 11, 2  # head_dim 16


# -- the dense implementation -------------------------------------------------------------------------------


def dense_rope(x: torch.Tensor, positions: torch.Tensor, dim: int, base: float) -> torch.Tensor:
    """Rotate the pairs (x[i], x[i + dim/2]) of `x [B, L, H, D]` by position * base^(-2i/dim), as complex numbers."""
    half = dim // 2
    freqs = base ** (-torch.arange(half, dtype=torch.float64) * 2 / dim)
    angles = positions.to(torch.float64)[..., None] * freqs  # [L, half] or [B, L, half]
    turn = torch.polar(torch.ones_like(angles), angles).unsqueeze(-2)  # one per token and pair, for every head
    pairs = torch.complex(x[..., :half].double(), x[..., half:dim].double()) * turn
    return torch.cat((pairs.real, pairs.imag, x[..., dim:].double()), dim=-1).to(x.dtype)


def dense_rms(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def linear(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return x @ layer.weight.T + (layer.bias if layer.bias is not None else 0)


def dense_module(m: attnc.nn.Attention, x: torch.Tensor, *, causal: bool = False, bias: torch.Tensor | None = None,
                 rope_base: float | None = None, rope_dim: int | None = None) -> torch.Tensor:
    """What the module computes, written out: `bias [H, Q, K]` is added to the scaled scores."""
    Bx, Lx, _ = x.shape
    Hq, Hkv, D = m.num_heads, m.num_kv_heads, m.head_dim
    q = linear(m.q_proj, x).view(Bx, Lx, Hq, D)
    k = linear(m.k_proj, x).view(Bx, Lx, Hkv, D)
    v = linear(m.v_proj, x).view(Bx, Lx, Hkv, D)
    if m.q_norm is not None:
        q, k = dense_rms(q, m.q_norm.weight), dense_rms(k, m.k_norm.weight)
    if rope_base is not None:
        positions = torch.arange(Lx)
        q, k = (dense_rope(t, positions, rope_dim or D, rope_base) for t in (q, k))
    k, v = (t.repeat_interleave(Hq // Hkv, dim=2) for t in (k, v))
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(D)
    if bias is not None:
        scores = scores + bias
    if causal:
        scores = scores.masked_fill(~torch.ones(Lx, Lx, dtype=torch.bool).tril(), -math.inf)
    out = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v)
    return linear(m.out_proj, out.reshape(Bx, Lx, Hq * D))


def distance(n: int) -> torch.Tensor:
    """[n, n]: kv - q."""
    steps = torch.arange(n)
    return steps[None, :] - steps[:, None]


def alibi_bias(slopes: torch.Tensor, n: int) -> torch.Tensor:
    return slopes[:, None, None] * distance(n)


def relative_table_bias(table: torch.Tensor, n: int) -> torch.Tensor:
    limit = (table.shape[1] - 1) // 2
    return table[:, (-distance(n)).clamp(-limit, limit) + limit]


def t5_dense_bucket(rel: torch.Tensor, num_buckets: int, max_distance: int) -> torch.Tensor:
    """T5's bidirectional bucket of `rel = kv - q`, as Mesh TensorFlow writes it."""
    half = num_buckets // 2
    exact = half // 2
    offset = (rel > 0).long() * half
    d = rel.abs()
    large = exact + (torch.log(d.float().clamp(min=1) / exact) / math.log(max_distance / exact)
                     * (half - exact)).long()
    return offset + torch.where(d < exact, d, large.clamp(max=half - 1))


def check_close(got: torch.Tensor, want: torch.Tensor, tol: float = 2e-5) -> None:
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=tol, rtol=tol), (got - want).abs().max()


def check_gradients(m: torch.nn.Module, out: torch.Tensor, want: torch.Tensor, tol: float = 1e-4) -> None:
    params = [p for p in m.parameters() if p.requires_grad]
    probe = torch.randn_like(out)
    got = torch.autograd.grad((out * probe).sum(), params)
    expected = torch.autograd.grad((want * probe).sum(), params)
    for name_param, g, w in zip(m.named_parameters(), got, expected, strict=True):
        assert torch.allclose(g, w, atol=tol, rtol=tol), (name_param[0], (g - w).abs().max())


@pytest.fixture
def x() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(B, L, E)


# -- the module against the dense implementation --------------------------------------------------------------


@pytest.mark.parametrize(("variant", "num_kv_heads"), [(None, 2), ("causal", 1), (["causal", "alibi"], 2)])
def test_output_and_gradients_equal_dense_attention(x, variant, num_kv_heads):
    torch.manual_seed(1)
    m = attnc.nn.Attention(E, H, num_kv_heads, variant=variant, bias=True, backend="triton")
    out = m(x)
    bias = alibi_bias(m.alibi.slopes, L) if isinstance(variant, list) else None
    want = dense_module(m, x, causal=variant is not None, bias=bias)
    check_close(out, want)
    check_gradients(m, out, want)


def test_reference_backend_agrees(x):
    m = attnc.nn.Attention(E, H, variant="causal", backend="reference")
    check_close(m(x), dense_module(m, x, causal=True))


def test_rope_and_qk_norm_equal_dense(x):
    torch.manual_seed(2)
    m = attnc.nn.Attention(E, H, 1, variant="causal", rope=500.0, qk_norm=True, backend="triton")
    with torch.no_grad():  # RMSNorm weights start at one: make them count
        m.q_norm.weight.uniform_(0.5, 1.5)
        m.k_norm.weight.uniform_(0.5, 1.5)
    out = m(x)
    want = dense_module(m, x, causal=True, rope_base=500.0)
    check_close(out, want)
    check_gradients(m, out, want)


def test_rotary_embedding_equals_complex_rotation():
    torch.manual_seed(3)
    t = torch.randn(B, L, H, 16)
    positions = torch.arange(L)
    check_close(RotaryEmbedding(16)(t, positions), dense_rope(t, positions, 16, 10000.0), 1e-5)
    partial = RotaryEmbedding(8, base=100.0)
    check_close(partial(t, positions), dense_rope(t, positions, 8, 100.0), 1e-5)
    per_sequence = torch.stack((positions, positions + 7))  # [B, L]: each sequence its own offset
    check_close(RotaryEmbedding(16)(t, per_sequence), dense_rope(t, per_sequence, 16, 10000.0), 1e-5)
    # a rotation: norms kept, position 0 unchanged, relative angle only depends on the distance
    assert torch.allclose(RotaryEmbedding(16)(t, positions).norm(dim=-1), t.norm(dim=-1), atol=1e-5)
    assert torch.equal(RotaryEmbedding(16)(t, torch.zeros(L, dtype=torch.long)), t)


def test_rope_given_as_a_module_with_partial_dim(x):
    m = attnc.nn.Attention(E, H, variant="causal", rope=RotaryEmbedding(8, base=50.0), backend="triton")
    check_close(m(x), dense_module(m, x, causal=True, rope_base=50.0, rope_dim=8))
    assert "rope.inv_freq" not in m.state_dict()  # derived from dim and base


# -- learnable variant parts ----------------------------------------------------------------------------------


def test_learnable_alibi_slopes_are_a_parameter_with_their_gradient(x):
    m = attnc.nn.Attention(E, H, variant=["causal", ALiBi(learnable=True)], backend="triton")
    assert "alibi.slopes" in m.state_dict() and any(p is m.alibi.slopes for p in m.parameters())
    assert torch.allclose(m.alibi.slopes, torch.tensor(V.alibi_slopes(H)))
    with torch.no_grad():
        m.alibi.slopes.copy_(torch.tensor([0.7, -0.3]))
    out = m(x)
    want = dense_module(m, x, causal=True, bias=alibi_bias(m.alibi.slopes, L))
    check_close(out, want)
    check_gradients(m, out, want)


def test_fixed_alibi_slopes_are_a_buffer_in_the_state_dict():
    m = attnc.nn.Attention(E, H, variant="alibi")
    assert "alibi.slopes" in m.state_dict()
    assert all(p is not m.alibi.slopes for p in m.parameters())


@pytest.mark.parametrize("spec", [RelativeBias(max_distance=4), T5Bias(num_buckets=8, max_distance=6)])
def test_bias_tables_are_parameters_with_their_gradient(x, spec):
    torch.manual_seed(4)
    m = attnc.nn.Attention(E, H, variant=spec, backend="triton")
    name = spec.attribute
    table = getattr(m, name).table
    assert f"{name}.table" in m.state_dict() and any(p is table for p in m.parameters())
    assert not table.any()  # starts as plain attention
    with torch.no_grad():
        table.normal_()
    if isinstance(spec, RelativeBias):
        bias = relative_table_bias(table, L)
    else:
        bias = table[t5_dense_bucket(distance(L), spec.num_buckets, spec.max_distance)].permute(2, 0, 1)
    out = m(x)
    want = dense_module(m, x, bias=bias)
    check_close(out, want)
    check_gradients(m, out, want)


def test_an_optimizer_step_changes_the_output_as_the_parameters_say(x):
    torch.manual_seed(5)
    m = attnc.nn.Attention(E, H, variant=["causal", ALiBi(learnable=True), RelativeBias(max_distance=3)],
                           backend="triton")
    optimizer = torch.optim.SGD(m.parameters(), lr=0.5)
    before = m(x)
    (before ** 2).mean().backward()
    slopes, table = m.alibi.slopes.detach().clone(), m.relative_bias.table.detach().clone()
    optimizer.step()
    assert not torch.equal(m.alibi.slopes, slopes) and not torch.equal(m.relative_bias.table, table)
    after = m(x)
    bias = alibi_bias(m.alibi.slopes, L) + relative_table_bias(m.relative_bias.table, L)
    assert not torch.allclose(after, before)
    check_close(after, dense_module(m, x, causal=True, bias=bias))


def test_a_copy_reads_its_own_parameters(x):
    m = attnc.nn.Attention(E, H, variant=["causal", ALiBi(learnable=True)], backend="reference")
    twin = copy.deepcopy(m)
    with torch.no_grad():
        twin.alibi.slopes.mul_(-4.0)
    check_close(m(x), dense_module(m, x, causal=True, bias=alibi_bias(m.alibi.slopes, L)))
    check_close(twin(x), dense_module(twin, x, causal=True, bias=alibi_bias(twin.alibi.slopes, L)))
    restored = pickle.loads(pickle.dumps(twin))
    check_close(restored(x), twin(x))


def test_loaded_and_converted_tensors_are_read(x):
    m = attnc.nn.Attention(E, H, variant=["causal", "alibi"], backend="reference")
    m(x)  # traced with the float32 buffer
    m.double()  # a new buffer object
    x64 = x.double()
    check_close(m(x64), dense_module(m, x64, causal=True, bias=alibi_bias(m.alibi.slopes, L)), 1e-10)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    state["alibi.slopes"] = torch.tensor([0.25, 2.0], dtype=torch.float64)
    m.load_state_dict(state, assign=True)  # new tensor objects in place of the old ones
    check_close(m(x64), dense_module(m, x64, causal=True, bias=alibi_bias(state["alibi.slopes"], L)), 1e-10)


# -- composing the variant ------------------------------------------------------------------------------------


def test_library_mods_and_user_mods_compose(x):
    torch.manual_seed(6)
    table = torch.randn(H, L)

    def column_bias(score, b, h, q_idx, kv_idx):
        return score + table[h, kv_idx]

    m = attnc.nn.Attention(E, H, variant=[V.sliding_window(4), "alibi"], mask_mod=lambda b, h, q, kv: kv != 1,
                           score_mod=column_bias, backend="triton")
    steps = torch.arange(L)
    allowed = (distance(L) <= 0) & (distance(L) > -4) & (steps[None, :] != 1)
    bias = alibi_bias(m.alibi.slopes, L) + table[:, None, :]
    want = dense_module(m, x, bias=bias.masked_fill(~allowed, -math.inf))
    check_close(m(x), want)


def test_a_block_mask_gives_the_same_output(x):
    m = attnc.nn.Attention(E, H, variant="causal", backend="triton")
    block_mask = attnc.create_block_mask(m.mask_mod, None, None, L, L, device="cpu", BLOCK_SIZE=16)
    check_close(m(x, block_mask=block_mask), m(x), 1e-6)


# -- KV cache ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_incremental_decoding_equals_the_full_forward(x, backend):
    torch.manual_seed(7)
    m = attnc.nn.Attention(E, H, 1, variant=["causal", "alibi"], rope=True, qk_norm=True, backend=backend)
    with torch.no_grad():
        full = m(x)
        cache = m.new_kv_cache(B, 16)
        steps = [m(x[:, :6], kv_cache=cache)]
        steps += [m(x[:, i:i + 1], kv_cache=cache) for i in range(6, L)]
    check_close(torch.cat(steps, dim=1), full)
    assert cache.lengths.tolist() == [L, L]


def test_cache_errors_name_the_problem(x):
    m = attnc.nn.Attention(E, H, variant="causal")
    with pytest.raises(ValueError, match=r"attnc.nn.KVCache: appending 11 tokens .* exceeds max_seq_len=8"):
        m(x, kv_cache=m.new_kv_cache(B, 8))
    with pytest.raises(ValueError, match=r"the cache holds B=3, Hkv=2, D=16 but the layer's call has B=2"):
        m(x, kv_cache=KVCache(3, 16, 2, 16))
    with pytest.raises(ValueError, match="give block_mask or kv_cache, not both"):
        m(x, kv_cache=m.new_kv_cache(B, 16), block_mask=attnc.create_block_mask(m.mask_mod, None, None, L, L))
    with pytest.raises(TypeError, match=r"kv_cache must be an attnc\.nn\.KVCache"):
        m(x, kv_cache=(torch.zeros(1), torch.zeros(1)))
    with pytest.raises(ValueError, match="max_seq_len must be a positive int"):
        KVCache(1, 0, 1, 16)


# -- argument errors --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"embed_dim": 30, "num_heads": 4}, ValueError, r"embed_dim \(30\) must be divisible by num_heads \(4\)"),
    ({"num_kv_heads": 3, "num_heads": 4}, ValueError, r"num_heads \(4\) must be a multiple of num_kv_heads \(3\)"),
    ({"num_heads": 0}, ValueError, "num_heads must be a positive int"),
    ({"embed_dim": 32.0}, ValueError, "embed_dim must be a positive int"),
    ({"dropout": 0.1}, ValueError, "dropout=0.1: attnc's kernels do not drop attention probabilities"),
    ({"dropout": 1.5}, ValueError, r"dropout must be a number in \[0, 1\)"),
    ({"bias": "yes"}, TypeError, "bias must be True or False"),
    ({"scale": -1.0}, ValueError, "scale must be a positive number or None"),
    ({"backend": "cuda"}, ValueError, "backend must be one of"),
    ({"variant": "sliding_window"}, ValueError, r"variant 'sliding_window' needs arguments: pass "
                                                r"attnc.variants.sliding_window\(...\)"),
    ({"variant": "rotary"}, ValueError, "unknown variant 'rotary'"),
    ({"variant": lambda b, h, q, kv: q >= kv}, TypeError, "pass it as mask_mod= or score_mod="),
    ({"variant": 3}, TypeError, "variant must be a name, a library mod, a bias spec or a sequence"),
    ({"variant": ["alibi", ALiBi(learnable=True)]}, ValueError, "variant lists alibi twice"),
    ({"variant": RelativeBias(max_distance=0)}, ValueError, "RelativeBias: max_distance must be a positive int"),
    ({"variant": T5Bias(num_buckets=2)}, ValueError, "T5Bias: t5: need at least 2 buckets"),
    ({"mask_mod": V.alibi(2)}, TypeError, "mask_mod got the ScoreMod alibi"),
    ({"rope": "yes"}, TypeError, "rope must be None, True, a base"),
    ({"rope": RotaryEmbedding(32)}, ValueError, "rope rotates 32 features but a head has 16"),
    ({"rope": 0.5}, ValueError, "base must be a number above 1"),
])
def test_bad_arguments_are_named(kwargs, error, message):
    arguments = {"embed_dim": E, "num_heads": H, **kwargs}
    with pytest.raises(error, match="attnc.nn." + ".*" + message):
        attnc.nn.Attention(**arguments)


def test_bad_inputs_are_named():
    m = attnc.nn.Attention(E, H)
    with pytest.raises(ValueError, match=r"x must be \[B, L, embed_dim=32\] \(batch first\), got \(2, 11\)"):
        m(torch.randn(2, 11))
    with pytest.raises(ValueError, match=r"got \(2, 11, 16\)"):
        m(torch.randn(2, 11, 16))
    with pytest.raises(ValueError, match="dim must be a positive even int"):
        RotaryEmbedding(7)
    with pytest.raises(ValueError, match=r"positions must be \[L=11\] or \[B=2, L=11\]"):
        RotaryEmbedding(16)(torch.randn(2, 11, 2, 16), torch.arange(5))
    with pytest.raises(TypeError, match="positions must be an integer tensor"):
        RotaryEmbedding(16)(torch.randn(2, 11, 2, 16), torch.arange(11.0))


# -- the example and the docs ---------------------------------------------------------------------------------------


def test_training_example_lowers_the_loss():
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "train_transformer_block.py")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    first, last = (float(v) for v in re.search(r"loss fell from ([0-9.]+) to ([0-9.]+)", proc.stdout).groups())
    assert last < first


def test_docs_snippets_run():
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "nn.md").read_text(), re.S)
    assert blocks, "docs/nn.md has no python block"
    output = io.StringIO()
    namespace = {"__name__": "docs_nn", "print": lambda *a, **k: print(*a, **k, file=output)}
    for code in blocks:
        exec(compile(code, "docs/nn.md", "exec"), namespace)
