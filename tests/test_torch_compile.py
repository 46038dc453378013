"""attnc under torch.compile(fullgraph=True) and torch.export: one custom op forward and one backward, captured
tensors as graph inputs, no graph break, no retrace of the variant, results equal to eager."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch
from torch._dynamo.backends.common import aot_autograd
from torch._dynamo.testing import CompileCounterWithBackend

import attnc

warnings.filterwarnings("ignore", message="attnc: backend='auto'")

GEN = torch.Generator().manual_seed(0)
BIAS = torch.randn(12, generator=GEN)


def sliding(b, h, q_idx, kv_idx):
    return (q_idx >= kv_idx) & (q_idx - kv_idx < 5)


def biased(score, b, h, q_idx, kv_idx):
    return score + torch.tanh(BIAS)[kv_idx]


def qkv(Hq: int = 2, Hkv: int = 2, L: int = 12, D: int = 16) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(1)
    shapes = [(1, Hq, L, D), (1, Hkv, L, D), (1, Hkv, L, D)]
    return tuple(torch.randn(s, generator=gen, requires_grad=True) for s in shapes)


class AotGraphs:
    """A torch.compile backend that keeps AOTAutograd's forward and backward graphs (run as they are)."""

    def __init__(self) -> None:
        self.forward: list[torch.fx.GraphModule] = []
        self.backward: list[torch.fx.GraphModule] = []
        self.backend = aot_autograd(fw_compiler=self._keep(self.forward), bw_compiler=self._keep(self.backward))

    @staticmethod
    def _keep(into: list):
        def compiler(graph: torch.fx.GraphModule, example_inputs):
            into.append(graph)
            return graph

        return compiler

    @staticmethod
    def attnc_ops(graphs: list[torch.fx.GraphModule]) -> list[str]:
        return [str(n.target) for g in graphs for n in g.graph.nodes if "attnc" in str(n.target)]


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_flex_attention_compiles_in_one_graph_forward_and_backward(backend: str) -> None:
    def f(q, k, v):
        return attnc.flex_attention(q, k, v, score_mod=biased, mask_mod=sliding, backend=backend)

    graphs = AotGraphs()
    counter = CompileCounterWithBackend(graphs.backend)
    compiled = torch.compile(f, backend=counter, fullgraph=True)
    q, k, v = qkv()
    out, expected = compiled(q, k, v), f(q, k, v)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    torch.testing.assert_close(grads, torch.autograd.grad(expected, (q, k, v), dout), atol=1e-5, rtol=1e-5)
    assert counter.frame_count == 1
    assert graphs.attnc_ops(graphs.forward) == ["attnc.attention.default"]
    assert graphs.attnc_ops(graphs.backward) == ["attnc.attention_backward.default"]


def test_no_graph_break_by_dynamo_explain() -> None:
    def f(q, k, v):
        return attnc.flex_attention(q, k, v, score_mod=biased, mask_mod=sliding, backend="reference")

    explained = torch._dynamo.explain(f)(*qkv())
    assert explained.graph_break_count == 0 and explained.graph_count == 1


def test_captured_tensors_are_graph_inputs_and_follow_their_values() -> None:
    """A learned bias captured by the score mod: gradients reach it, in-place updates and a new tensor of the
    same shape need no recompilation, and the variant is not traced again."""
    bias = torch.zeros(12, requires_grad=True)

    def score_mod(score, b, h, q_idx, kv_idx):
        return score + bias[kv_idx] * 2

    attention = attnc.compile(sliding, score_mod)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(lambda q, k, v: attention(q, k, v, backend="triton"), backend=counter, fullgraph=True)
    q, k, v = qkv()
    traced = attention.traced
    for step in range(3):
        out = compiled(q, k, v)
        torch.testing.assert_close(out, attention(q, k, v, backend="reference"), atol=1e-5, rtol=1e-5)
        (grad,) = torch.autograd.grad(out.square().sum(), bias)
        (expected,) = torch.autograd.grad(attention(q, k, v, backend="reference").square().sum(), bias)
        torch.testing.assert_close(grad, expected, atol=1e-4, rtol=1e-4)
        with torch.no_grad():
            bias.add_(grad)  # an optimizer step
        if step == 1:
            bias = torch.randn(12, requires_grad=True)  # rebinding: same shape, another tensor
    assert counter.frame_count == 1
    assert attention.traced is traced


def test_a_closure_parameter_stops_recompiling_once_dynamic() -> None:
    """A captured Python int: Dynamo compiles once more when it first changes (its automatic dynamic shapes),
    then passes it as a graph input; results follow every value."""
    window = 3

    def mask_mod(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (q_idx - kv_idx < window)

    attention = attnc.compile(mask_mod)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(lambda q, k, v: attention(q, k, v, backend="reference"), backend=counter,
                             fullgraph=True)
    q, k, v = qkv()
    for window in (3, 5, 7, 2):  # noqa: B007  (read by the mod)
        torch.testing.assert_close(compiled(q, k, v), attention(q, k, v, backend="reference"))
    assert counter.frame_count <= 2


class Block(torch.nn.Module):
    """A module whose variant reads its attributes: a learned ALiBi slope per head and a window."""

    def __init__(self) -> None:
        super().__init__()
        self.slopes = torch.nn.Parameter(torch.tensor([0.5, 0.25]))
        self.window = 6
        self.attention = attnc.compile(self.mask, self.score)

    def mask(self, b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (q_idx - kv_idx < self.window)

    def score(self, score, b, h, q_idx, kv_idx):
        return score + self.slopes[h] * (kv_idx - q_idx)

    def forward(self, q, k, v):
        return self.attention(q, k, v, backend="triton")


def test_a_module_compiles_with_gradients_for_its_parameters() -> None:
    block = Block()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(block, backend=counter, fullgraph=True)
    q, k, v = qkv(Hq=2, Hkv=1)
    out = compiled(q, k, v)
    torch.testing.assert_close(out, block(q, k, v), atol=1e-5, rtol=1e-5)
    (grad,) = torch.autograd.grad(out.sum(), block.slopes)
    (expected,) = torch.autograd.grad(block(q, k, v).sum(), block.slopes)
    torch.testing.assert_close(grad, expected, atol=1e-4, rtol=1e-4)
    block.window = 3  # a module attribute: Dynamo specialises on it, attnc follows it
    torch.testing.assert_close(compiled(q, k, v), block(q, k, v), atol=1e-5, rtol=1e-5)


def test_block_masks_pass_through_the_graph() -> None:
    block_mask = attnc.create_block_mask(sliding, None, None, 40, 40, BLOCK_SIZE=16)

    def f(q, k, v):
        return attnc.flex_attention(q, k, v, block_mask=block_mask, backend="triton", return_lse=True)

    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(f, backend=counter, fullgraph=True)
    q, k, v = qkv(L=40)
    (out, lse), (expected, expected_lse) = compiled(q, k, v), f(q, k, v)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, expected_lse, atol=1e-5, rtol=1e-5)
    grads = torch.autograd.grad(out.sum() + lse.sum(), (q, k, v))
    torch.testing.assert_close(grads, torch.autograd.grad(expected.sum() + expected_lse.sum(), (q, k, v)),
                               atol=1e-4, rtol=1e-4)
    assert counter.frame_count == 1


def test_torch_export_of_a_module() -> None:
    block = Block()
    q, k, v = (t.detach() for t in qkv())
    exported = torch.export.export(block, (q, k, v))
    targets = [str(n.target) for n in exported.graph.nodes]
    assert "attnc.attention.default" in targets
    torch.testing.assert_close(exported.module()(q, k, v), block(q, k, v), atol=1e-5, rtol=1e-5)


def test_the_fake_implementation_reports_bad_arguments_while_compiling() -> None:
    def f(q, k, v):
        return attnc.flex_attention(q, k, v, mask_mod=sliding, backend="reference")

    q, k, v = qkv()
    with pytest.raises(Exception, match="value"):
        torch.compile(f, backend="aot_eager", fullgraph=True)(q, k, v[..., :8, :])


def test_the_docs_snippet_runs() -> None:
    text = (Path(__file__).resolve().parents[1] / "docs" / "torch_compile.md").read_text()
    for block in re.findall(r"```python\n(.*?)```", text, re.S):
        exec(compile(block, "docs/torch_compile.md", "exec"), {"__name__": "docs"})


def causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def test_packed_sequences_compile_and_follow_each_packing() -> None:
    """varlen_attention in a compiled function: a new packing is new graph inputs (the tables are computed in
    the graph), gradients reach q, k, v, and a bad packing fails when the graph runs."""
    def f(q, k, v, cu):
        return attnc.varlen_attention(q, k, v, cu, cu, mask_mod=causal, backend="triton")

    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(f, backend=counter, fullgraph=True)
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(20, 2, 16, generator=gen, requires_grad=True) for _ in range(3))
    for offsets in ([0, 7, 20], [0, 3, 11, 20], [0, 5, 9, 20]):
        cu = torch.tensor(offsets, dtype=torch.int32)
        out, expected = compiled(q, k, v, cu), f(q, k, v, cu)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.autograd.grad(out.sum(), (q, k, v)),
                               torch.autograd.grad(expected.sum(), (q, k, v)), atol=1e-4, rtol=1e-4)
    assert counter.frame_count <= 2  # one more when the number of sequences first changes (dynamic shapes)
    with pytest.raises(RuntimeError, match="must not decrease"):
        compiled(q, k, v, torch.tensor([0, 9, 7, 20], dtype=torch.int32))


def test_kv_cache_decoding_compiles_once_for_every_cache_length() -> None:
    def step(q, k_cache, v_cache, lengths):
        return attnc.kvcache_attention(q, k_cache, v_cache, lengths, mask_mod=causal, backend="triton")

    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(step, backend=counter, fullgraph=True)
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(2, 1, 4, 16, generator=gen)
    k_cache, v_cache = (torch.randn(2, 32, 2, 16, generator=gen) for _ in range(2))
    for lengths in ([5, 9], [6, 10], [31, 2]):
        lengths = torch.tensor(lengths, dtype=torch.int32)
        torch.testing.assert_close(compiled(q, k_cache, v_cache, lengths), step(q, k_cache, v_cache, lengths),
                                   atol=1e-5, rtol=1e-5)
    assert counter.frame_count == 1


@pytest.mark.parametrize("dynamic", [None, True])
def test_sequence_lengths_change_under_dynamic_shapes(dynamic) -> None:
    """New lengths each call: symbolic sizes reach the custom op (checked when it runs), forward and backward
    stay right, and with dynamic=True one graph serves every length."""
    slopes = torch.tensor([0.5, 0.25], requires_grad=True)

    def alibi(score, b, h, q_idx, kv_idx):
        return score + slopes[h] * (kv_idx - q_idx)

    def f(q, k, v):
        return attnc.flex_attention(q, k, v, score_mod=alibi, mask_mod=causal, backend="triton")

    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(f, backend=counter, fullgraph=True, dynamic=dynamic)
    gen = torch.Generator().manual_seed(5)
    for length in (12, 20, 33):
        q, k, v = (torch.randn(1, 2, length, 16, generator=gen, requires_grad=True) for _ in range(3))
        out, expected = compiled(q, k, v), f(q, k, v)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(torch.autograd.grad(out.sum(), (q, k, v, slopes)),
                                   torch.autograd.grad(expected.sum(), (q, k, v, slopes)), atol=1e-4, rtol=1e-4)
    assert counter.frame_count == (1 if dynamic else 2)


def test_a_zero_dim_tensor_parameter_never_recompiles() -> None:
    """A number held in a 0-d tensor is a graph input: any new value, no new graph."""
    window = torch.tensor(3)

    def mask_mod(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (q_idx - kv_idx < window)

    attention = attnc.compile(mask_mod)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(lambda q: attention(q, q, q, backend="reference"), backend=counter, fullgraph=True)
    q = qkv()[0].detach()
    for value in (3, 5, 7, 2):
        window.fill_(value)
        torch.testing.assert_close(compiled(q), attention(q, q, q, backend="reference"))
    assert counter.frame_count == 1


def test_a_closure_float_stops_recompiling_once_dynamic() -> None:
    """A captured Python float (a softcap): compiled once more when it first changes, then a graph input."""
    cap = 20.0

    def softcap(score, b, h, q_idx, kv_idx):
        return cap * torch.tanh(score / cap)

    attention = attnc.compile(score_mod=softcap)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(lambda q, k, v: attention(q, k, v, backend="triton"), backend=counter, fullgraph=True)
    q, k, v = qkv()
    for cap in (20.0, 3.5, 1.25, 0.75):  # noqa: B007  (read by the mod)
        out, expected = compiled(q, k, v), attention(q, k, v, backend="reference")
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert counter.frame_count <= 2


SOFTCAPPED_WINDOW = """
param window: int = 4
param cap: float
tensor bias: float32[L]
mask: (q >= kv) & (q - kv < window)
score: cap * tanh(score / cap) + bias[kv]
"""


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_a_text_variant_takes_its_values_by_name_as_graph_inputs(backend: str) -> None:
    """A text variant's tensors and numbers bound per call (or in compile) are graph inputs: new values run
    the same graph after Dynamo's one recompilation for numbers, with gradients for the bound tensor."""
    attention = attnc.compile(SOFTCAPPED_WINDOW, cap=20.0)

    def f(q, k, v, bias, window, cap):
        return attention(q, k, v, bias=bias, window=window, cap=cap, backend=backend)

    graphs = AotGraphs()
    counter = CompileCounterWithBackend(graphs.backend)
    compiled = torch.compile(f, backend=counter, fullgraph=True)
    q, k, v = qkv()
    for window, cap in [(4, 20.0), (5, 10.0), (7, 2.5), (2, 0.5)]:
        bias = torch.randn(12, requires_grad=True)
        out, expected = compiled(q, k, v, bias, window, cap), f(q, k, v, bias, window, cap)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(torch.autograd.grad(out.sum(), (q, k, v, bias)),
                                   torch.autograd.grad(expected.sum(), (q, k, v, bias)), atol=1e-4, rtol=1e-4)
    assert counter.frame_count <= 2
    assert set(graphs.attnc_ops(graphs.forward)) == {"attnc.attention.default"}
    always_dynamic = CompileCounterWithBackend("aot_eager")
    dynamic = torch.compile(f, backend=always_dynamic, fullgraph=True, dynamic=True)
    for window, cap in [(4, 20.0), (5, 10.0), (7, 2.5)]:
        torch.testing.assert_close(dynamic(q, k, v, bias, window, cap), f(q, k, v, bias, window, cap), atol=1e-5,
                                   rtol=1e-5)
    assert always_dynamic.frame_count == 1  # dynamic=True: numbers are symbolic from the first graph
    defaults = torch.compile(lambda q, k, v, bias: attention(q, k, v, bias=bias, backend=backend), fullgraph=True,
                             backend="aot_eager")  # window's default, cap from compile()
    torch.testing.assert_close(defaults(q, k, v, bias), f(q, k, v, bias, 4, 20.0), atol=1e-5, rtol=1e-5)


def test_a_text_variant_reports_missing_and_unknown_values_while_compiling() -> None:
    attention = attnc.compile(SOFTCAPPED_WINDOW)
    q, k, v = (t.detach() for t in qkv())
    bias = torch.zeros(12)
    missing = torch.compile(lambda q, k, v: attention(q, k, v, bias=bias, backend="reference"), fullgraph=True,
                            backend="aot_eager")
    with pytest.raises(Exception, match="no value for `param cap: float`"):
        missing(q, k, v)
    unknown = torch.compile(lambda q, k, v: attention(q, k, v, bias=bias, cap=1.0, windw=3, backend="reference"),
                            fullgraph=True, backend="aot_eager")
    with pytest.raises(Exception, match="unknown name `windw`"):
        unknown(q, k, v)
