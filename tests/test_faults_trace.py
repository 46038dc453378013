"""Faults of the front end and of argument checking, so none of them comes back: values frozen at trace time,
deep expressions, integer division by zero, degenerate arguments, hostile text."""

from __future__ import annotations

import math
import types
import warnings

import pytest
import torch

import attnc
from attnc.dsl.errors import TraceError
from attnc.dsl.trace import trace

warnings.filterwarnings("ignore", message="attnc: backend='auto'")


def qkv(B: int = 1, H: int = 2, L: int = 8, D: int = 16, *, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, H, L, D, generator=gen) for _ in range(3))


def dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, logits_of) -> torch.Tensor:
    """Plain torch attention: `logits_of(scaled scores [B, H, Q, KV])` -> logits."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    return torch.softmax(logits_of(scores), dim=-1) @ v


def line_of(fn) -> int:
    return fn.__code__.co_firstlineno + 1  # the body of a one-statement mod


# -- 1. torch operations on captured tensors are recomputed at every call ---------------------------------


class Learned(torch.nn.Module):
    """A learned per-head temperature and a learned bias, read through torch operations in the mod."""

    def __init__(self) -> None:
        super().__init__()
        self.temperature = torch.nn.Parameter(torch.tensor([0.3, -0.2]))
        self.bias = torch.nn.Parameter(torch.linspace(-1.0, 1.0, 16).view(2, 8))

    def mod(self):
        temperature, bias = self.temperature, self.bias

        def score_mod(score, b, h, q_idx, kv_idx):
            return score * temperature.exp()[h] + torch.sigmoid(bias)[h, kv_idx] * 2

        return score_mod

    def logits(self, scores: torch.Tensor) -> torch.Tensor:
        return scores * self.temperature.exp()[None, :, None, None] + torch.sigmoid(self.bias)[None, :, None] * 2


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_learned_temperature_and_bias_train_like_the_dense_reference(backend):
    model = Learned()
    attn = attnc.compile(score_mod=model.mod())
    twin = Learned()  # trained through plain torch, step by step beside it
    q, k, v = qkv()
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.5) for m in (model, twin)]
    for _ in range(3):
        out = attn(q, k, v, backend=backend)
        expected = dense(q, k, v, twin.logits)
        torch.testing.assert_close(out, expected, atol=2e-5, rtol=2e-5)
        (out * v.flip(-1)).sum().backward()
        (expected * v.flip(-1)).sum().backward()
        for mine, theirs in zip(model.parameters(), twin.parameters(), strict=True):
            torch.testing.assert_close(mine.grad, theirs.grad, atol=2e-5, rtol=2e-5)
        for opt in optimizers:
            opt.step()
            opt.zero_grad()
    assert not torch.equal(model.temperature, Learned().temperature)  # the steps did change it


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_load_state_dict_and_in_place_edits_take_effect(backend):
    model = Learned()
    attn = attnc.compile(score_mod=model.mod())
    q, k, v = qkv()
    with torch.no_grad():
        attn(q, k, v, backend=backend)
        model.load_state_dict({"temperature": torch.tensor([1.0, 0.5]), "bias": torch.zeros(2, 8)})
        torch.testing.assert_close(attn(q, k, v, backend=backend), dense(q, k, v, model.logits))
        model.bias[1, 3:] += 4.0
        torch.testing.assert_close(attn(q, k, v, backend=backend), dense(q, k, v, model.logits))


def derived_cases() -> dict[str, tuple]:
    """case -> (the captured tensors, a score mod computing with them, the same logits in plain torch)."""
    table, scale = torch.tensor([[0.5, -1.0], [2.0, 0.25]]), torch.tensor(0.5)
    holder = types.SimpleNamespace(bias=torch.tensor([1.0, -1.0]))
    return {
        "index": ([table], lambda s, b, h, q, kv: s + table[0][h], lambda s: s + table[0][:, None, None]),
        "slice": ([table], lambda s, b, h, q, kv: s + table[:, 1:][h, 0], lambda s: s + table[:, 1, None, None]),
        "scalar": ([scale], lambda s, b, h, q, kv: s * (scale * 2), lambda s: s * scale * 2),
        "attribute": ([holder.bias], lambda s, b, h, q, kv: s + holder.bias.exp()[h],
                      lambda s: s + holder.bias.exp()[:, None, None]),
    }


@pytest.mark.parametrize("case", ["index", "slice", "scalar", "attribute"])
def test_derived_values_follow_in_place_changes(case):
    tensors, mod, logits = derived_cases()[case]
    attn = attnc.compile(score_mod=mod)
    q, k, v = qkv()
    for _ in range(2):
        torch.testing.assert_close(attn(q, k, v, backend="reference"), dense(q, k, v, logits))
        for t in tensors:
            t.mul_(-1.5)


SCALE = torch.tensor(0.5)


def test_derived_values_are_reused_until_a_captured_tensor_changes():
    table = torch.tensor([1.0, 2.0])

    def mod(s, b, h, q, kv):
        return s + table.exp()[h]

    traced = trace(None, mod)
    first, again = traced.bind(None, mod).tensors[0], traced.bind(None, mod).tensors[0]
    assert again is first
    table.add_(1.0)
    changed = traced.bind(None, mod).tensors[0]
    assert changed is not first and torch.equal(changed, table.exp())


def test_derived_values_with_gradients_are_recomputed_at_every_call():
    weight = torch.tensor([1.0, 2.0], requires_grad=True)

    def mod(s, b, h, q, kv):
        return s * weight.sigmoid()[h]

    traced = trace(None, mod)
    first, second = traced.bind(None, mod).tensors[0], traced.bind(None, mod).tensors[0]
    assert first is not second and first.grad_fn is not None and second.grad_fn is not first.grad_fn


def trace_error(score_mod) -> TraceError:
    with pytest.raises(TraceError) as info:
        trace(None, score_mod)
    return info.value


@pytest.mark.parametrize("case", ["item", "float", "if"])
def test_reading_a_captured_value_into_python_is_refused_at_its_line(case):
    mods = {
        "item": lambda s, b, h, q, kv: s + SCALE.item(),
        "float": lambda s, b, h, q, kv: s + float(SCALE),
        "if": lambda s, b, h, q, kv: s + (1.0 if SCALE > 0 else 2.0),
    }
    error = trace_error(mods[case])
    assert error.location.filename == __file__ and error.location.lineno == mods[case].__code__.co_firstlineno
    assert "reads the value of a captured tensor into Python while the mod is traced; that value would be " \
           "frozen, but the tensor may change between calls" in error.problem


def test_in_place_change_of_a_captured_tensor_in_a_mod_is_refused():
    table = torch.zeros(2, 2)

    def mod(s, b, h, q, kv):
        return s + table.add_(1.0)[h, 0]

    error = trace_error(mod)
    assert error.location.lineno == line_of(mod)
    assert error.problem == "torch.Tensor.add_ changes a captured tensor (or writes one into another) in place " \
                            "inside a mod"
    assert not table.any()  # the mod did not change it


def test_tables_built_in_the_mod_from_constants_stay_constants():
    def mod(s, b, h, q, kv):
        return s * torch.tensor(2.0) + torch.arange(4.0)[h]

    traced = trace(None, mod)
    assert len(traced.program.tensors) == 1  # the arange table; the 2.0 is folded in
    assert "const(2.0" in repr(traced.program.score)
