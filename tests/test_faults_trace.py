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
from attnc.dsl.trace import StaleTrace, trace

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


def test_a_block_map_from_derived_document_ids_follows_their_changes():
    ids = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2], dtype=torch.int32)

    def same_document(b, h, q_idx, kv_idx):
        doc = ids * 2  # recomputed from ids at every call
        return doc[q_idx] == doc[kv_idx]

    attn = attnc.compile(same_document)
    q, k, v = qkv(H=1)
    for _ in range(2):
        allowed = ids[:, None] == ids[None, :]
        expected = dense(q, k, v, lambda s, allowed=allowed: s.masked_fill(~allowed, -math.inf))
        torch.testing.assert_close(attn(q, k, v, backend="triton"), expected)
        ids[2:] = torch.tensor([1, 1, 2, 2, 3, 3], dtype=torch.int32)


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


def test_a_tensor_a_mod_indexes_by_traced_values_is_pinned_data():
    def mod(s, b, h, q, kv):
        return s + torch.arange(4.0)[h]

    traced = trace(None, mod)
    assert len(traced.program.tensors) == 1 and torch.equal(traced.bind(None, mod).tensors[0], torch.arange(4.0))


def test_an_infinitely_recursive_mod_is_reported_at_its_own_line():
    def recursive(b, h, q_idx, kv_idx):
        return recursive(b, h, q_idx, kv_idx)

    with pytest.raises(TraceError) as info:
        trace(recursive, None)
    assert info.value.location.filename == __file__ and info.value.location.lineno == line_of(recursive)
    assert "raised RecursionError" in info.value.problem


# -- 8. deep expressions: no RecursionError, anywhere ------------------------------------------------------


def chained_masks(n: int):
    from attnc.variants.base import MaskMod

    mods = [MaskMod.wrap(lambda b, h, q, kv, i=i: q - kv != i + 100) for i in range(n)]
    combined = mods[0]
    for mod in mods[1:]:
        combined = combined & mod  # nested n deep: ((m0 & m1) & m2) & ...
    return combined


def many_conditions(b, h, q_idx, kv_idx):
    allowed = q_idx >= kv_idx
    for i in range(300):
        allowed = allowed & ((q_idx // 7 != i) | (kv_idx % 5 != i % 5))
    return allowed


def inverted_1000_times(b, h, q_idx, kv_idx):
    allowed = q_idx >= kv_idx
    for _ in range(1000):
        allowed = ~allowed
    return allowed


def long_sum(score, b, h, q_idx, kv_idx):
    total = score
    for i in range(2000):
        total = total + (q_idx - kv_idx + i % 3) * 1e-4
    return total


def xor_chain(b, h, q_idx, kv_idx):
    allowed = q_idx >= kv_idx
    for i in range(40):
        allowed = allowed ^ (kv_idx == i)
    return allowed


DEEP = {
    "chained": (lambda: chained_masks(150), None, lambda q, kv: (q >= 0) & ~((q - kv >= 100) & (q - kv < 250))),
    "conditions": (lambda: many_conditions, None, None),
    "inverted": (lambda: inverted_1000_times, None, lambda q, kv: q >= kv),
    "sum": (lambda: None, long_sum, None),
    "xor": (lambda: xor_chain, None, None),
}


@pytest.mark.parametrize("case", sorted(DEEP))
def test_deep_expressions_compile_and_agree(case):
    make_mask, score_mod, dense_mask = DEEP[case]
    attn = attnc.compile(make_mask(), score_mod)
    repr(attn.program.mask or attn.program.score)
    attn.explain()
    q, k, v = qkv(L=12)
    out = attn(q, k, v, backend="triton")
    torch.testing.assert_close(out, attn(q, k, v, backend="reference"), atol=2e-5, rtol=2e-5)
    if dense_mask is not None:
        positions = torch.arange(12)
        allowed = dense_mask(positions[:, None], positions[None, :])
        torch.testing.assert_close(out, dense(q, k, v, lambda s: s.masked_fill(~allowed, -math.inf)))


def test_ir_walks_of_a_3000_deep_chain_do_not_recurse():
    from attnc.ir import DType, Op, from_repr, node, var
    from attnc.ir.passes import optimize
    from attnc.ir.printer import format_node
    from attnc.ir.program import Program

    chain = var("q")
    for i in range(3000):
        chain = node(Op.ADD if i % 2 else Op.MUL, DType.int32, chain, var("kv"))
    mask = node(Op.GE, DType.bool, chain, var("kv"))
    assert mask.depth() == 3002
    assert repr(mask).count("node(") == 3001 and len(format_node(mask).splitlines()) == 3004
    optimize(Program(mask=mask), check=True)
    shallow = node(Op.GE, DType.bool, node(Op.ADD, DType.int32, var("q"), var("kv")), var("kv"))
    assert from_repr(repr(shallow)) is shallow


def test_deep_masks_keep_the_tile_analysis_sound_and_linear():
    from attnc.ir.tiles import beyond_analysis, kv_full_range, kv_ranges, tile_test

    mask = attnc.compile(xor_chain).program.mask
    assert beyond_analysis(mask)
    assert kv_ranges(mask) == [(None, None)] and kv_full_range(mask) is None
    assert tile_test(mask).may_true.arg is True and tile_test(mask).may_false.arg is True


@pytest.mark.parametrize("case", ["inverted", "conditions"])
def test_deep_text_expressions_build_the_python_trace(case):
    text, python = {
        "inverted": ("mask: " + "~" * 1000 + "(q >= kv)", inverted_1000_times),
        "conditions": ("mask: (q >= kv)" + "".join(f" & ((q // 7 != {i}) | (kv % 5 != {i % 5}))" for i in range(300)),
                       many_conditions),
    }[case]
    assert attnc.parse(text).program.mask is trace(python, None).program.mask


def test_attnc_show_prints_a_deep_text_mask(capsys, tmp_path):
    from attnc.cli import main

    path = tmp_path / "deep.attn"
    path.write_text("mask: " + " & ".join(f"(q - kv != {i})" for i in range(300)) + "\n")
    assert main(["show", str(path), "--ir", "--tiles", "--source", "--seq", "256"]) == 0
    assert "partial" in capsys.readouterr().out


# -- 4. integer division by zero is an error on every backend ------------------------------------------------

ZERO_DIVISION = "As in PyTorch, an integer divisor must not be 0 anywhere, even where the quotient is not used"


@pytest.mark.parametrize("case", ["floordiv", "mod", "div_floor", "remainder"])
def test_a_constant_zero_divisor_is_refused_when_traced(case):
    mods = {
        "floordiv": lambda b, h, q_idx, kv_idx: q_idx // 0 == kv_idx,
        "mod": lambda b, h, q_idx, kv_idx: q_idx % 0 == kv_idx,
        "div_floor": lambda b, h, q_idx, kv_idx: torch.div(q_idx, 0, rounding_mode="floor") == kv_idx,
        "remainder": lambda b, h, q_idx, kv_idx: torch.remainder(q_idx, 0) == kv_idx,
    }
    with pytest.raises(TraceError) as info:
        trace(mods[case], None)
    assert info.value.location.lineno == mods[case].__code__.co_firstlineno
    assert info.value.problem == f"integer {'modulo' if case in ('mod', 'remainder') else 'division'} by zero"


def width_mask(width: int):
    return lambda b, h, q_idx, kv_idx: q_idx // width == kv_idx // width


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_zero_divisors_at_run_time_raise_the_same_error_on_both_backends(backend):
    chunks = torch.tensor([2, 0], dtype=torch.int32)
    cases = [
        (width_mask(0), "the divisor (reading parameter 'width') is 0."),
        (lambda b, h, q_idx, kv_idx: q_idx % chunks[h] == 0, "the divisor (reading captured tensor t0) is 0 at h=1."),
        (lambda b, h, q_idx, kv_idx: q_idx % (kv_idx - 3) == 0, "the divisor is 0 at kv_idx=3."),
    ]
    q, k, v = qkv()
    for mod, where in cases:
        with pytest.raises(ZeroDivisionError) as info:
            attnc.compile(mod)(q, k, v, backend=backend)
        assert str(info.value).startswith(f"attnc: integer {'division' if 'width' in where else 'modulo'} by zero "
                                          f"in the mask mod: {where} {ZERO_DIVISION}")


def test_a_zero_divisor_in_an_unselected_branch_is_still_an_error():
    def score_mod(score, b, h, q_idx, kv_idx):
        return torch.where(kv_idx != 3, score + q_idx // (kv_idx - 3), score)

    with pytest.raises(ZeroDivisionError, match="in the score mod: the divisor is 0 at kv_idx=3"):
        attnc.compile(score_mod=score_mod)(*qkv(), backend="reference")


def test_a_parameter_that_becomes_zero_is_caught_before_the_launch():
    attn = attnc.compile(width_mask(4))
    q, k, v = qkv()
    expected = attn(q, k, v, backend="triton")
    attn.mask_mod = width_mask(0)
    with pytest.raises(ZeroDivisionError, match="reading parameter 'width'"):
        attn(q, k, v, backend="triton")
    with pytest.raises(ZeroDivisionError, match="reading parameter 'width'"):
        attn.block_mask(1, 1, 8, 8, BLOCK_SIZE=4)
    attn.mask_mod = width_mask(4)
    torch.testing.assert_close(attn(q, k, v, backend="triton"), expected)


def test_create_block_mask_checks_tensor_divisors():
    chunks = torch.tensor([0], dtype=torch.int32)
    with pytest.raises(ZeroDivisionError, match="reading captured tensor t0"):
        attnc.create_block_mask(lambda b, h, q_idx, kv_idx: q_idx // chunks[0] == kv_idx, 1, 1, 8, 8)


# -- 9. errors at trace time or at the call, naming the argument ----------------------------------------------


@pytest.mark.parametrize(("case", "problem"), [
    ("traced", "integer ** needs a constant exponent (kernels compute integer powers by multiplication)"),
    ("large", "integer ** 100: integer exponents up to 8 are supported"),
    ("torch_pow", "integer ** needs a constant exponent (kernels compute integer powers by multiplication)"),
])
def test_integer_powers_are_checked_when_traced(case, problem):
    mods = {
        "traced": lambda b, h, q_idx, kv_idx: q_idx ** kv_idx > 0,
        "large": lambda b, h, q_idx, kv_idx: q_idx ** 100 > 0,
        "torch_pow": lambda b, h, q_idx, kv_idx: torch.pow(q_idx, kv_idx) > 0,
    }
    with pytest.raises(TraceError) as info:
        trace(mods[case], None)
    assert info.value.problem == problem and info.value.location.lineno == mods[case].__code__.co_firstlineno


def test_a_closure_exponent_becomes_a_constant():
    def power(k: int):
        return lambda b, h, q_idx, kv_idx: q_idx ** k >= kv_idx

    assert "const(3, DType.int32)" in repr(trace(power(3), None).program.mask)
    with pytest.raises(TraceError, match=r"integer \*\* 9: integer exponents up to 8"):
        trace(power(9), None)


@pytest.mark.parametrize(("shapes", "message"), [
    (((1, 0, 8, 16), (1, 0, 8, 16), (1, 0, 8, 16)), "attnc: query has no heads (shape (1, 0, 8, 16)); H must be at "
                                                    "least 1"),
    (((1, 1, 8, 0), (1, 1, 8, 0), (1, 1, 8, 4)), "attnc: query has head dim 0 (shape (1, 1, 8, 0)); D must be at "
                                                 "least 1"),
])
def test_empty_heads_and_head_dims_are_named(shapes, message):
    q, k, v = (torch.zeros(s) for s in shapes)
    with pytest.raises(ValueError) as info:
        attnc.compile(lambda b, h, q_idx, kv_idx: q_idx >= kv_idx)(q, k, v, backend="reference")
    assert str(info.value) == message


def test_lengths_beyond_int32_are_named():
    huge = torch.zeros(1, 1, 1, 16).expand(1, 1, 2**31, 16)  # a view: nothing is allocated
    q = torch.zeros(1, 1, 8, 16)
    attn = attnc.compile(lambda b, h, q_idx, kv_idx: q_idx >= kv_idx)
    with pytest.raises(ValueError, match=r"^attnc: key length \(dim 2\) = 2147483648 is out of range: positions are "
                                         r"int32, so lengths go from 0 to 2147418112"):
        attn(q, huge, huge, backend="reference")
    with pytest.raises(ValueError, match=r"^attnc: KV_LEN = 2147483648 is out of range"):
        attnc.create_block_mask(lambda b, h, q_idx, kv_idx: q_idx >= kv_idx, 1, 1, 8, 2**31)
    with pytest.raises(ValueError, match=r"^attnc: Q_LEN = -1 is out of range"):
        attn.tile_stats(1, 1, -1, 8)
    with pytest.raises(ValueError, match=r"^attnc: H = 0 must be at least 1"):
        attn.block_mask(1, 0, 8, 8)


def test_meta_tensors_are_named():
    q = torch.zeros(1, 1, 8, 16, device="meta")
    with pytest.raises(ValueError, match=r"^attnc: query is a meta tensor \(shape \(1, 1, 8, 16\)\)"):
        attnc.compile(lambda b, h, q_idx, kv_idx: q_idx >= kv_idx)(q, q, q, backend="triton")


def test_attnc_show_names_a_length_beyond_int32(capsys):
    from attnc.cli import main

    assert main(["show", "causal", "--seq", "3000000000"]) != 0
    assert "--seq, --kv-seq and --block must be at most 2147418112" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["\ufefflet d = q - kv\nmask: d >= 0", "let d = q - kv\rmask: d >= 0",
                                  "let d = q - kv\r\nmask: d >= 0\r\n"])
def test_text_with_a_byte_order_mark_or_cr_line_ends(text):
    assert attnc.parse(text).program.mask is attnc.parse("let d = q - kv\nmask: d >= 0").program.mask


def test_text_reports_an_oversized_constant_at_its_line_and_column():
    with pytest.raises(attnc.TextError) as info:
        attnc.parse("let d = q - kv\nmask: d < 99999999999")
    assert str(info.value).startswith("<text>:2:11: the constant 99999999999 does not fit in int32")


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize(("Q", "KV"), [(0, 8), (8, 0)])
def test_empty_sequences_with_a_mask_that_reads_data(backend, Q, KV):
    ids = torch.zeros(8, dtype=torch.int32)
    attn = attnc.compile(lambda b, h, q_idx, kv_idx: ids[q_idx] == ids[kv_idx])
    q, k, v = torch.randn(1, 1, Q, 16, requires_grad=True), torch.randn(1, 1, KV, 16), torch.randn(1, 1, KV, 16)
    out, lse = attn(q, k, v, backend=backend, return_lse=True)
    out.sum().backward()
    assert out.shape == (1, 1, Q, 16) and lse.shape == (1, 1, Q) and not out.any()
    assert attnc.create_block_mask(attn.mask_mod, 1, 1, Q, KV).to_dense().numel() == 0


class _Holder:
    """An object a mod reads a tensor through."""


_GLOBAL_HOLDER = _Holder()


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("where", ["closure", "global", "module"])
def test_an_attribute_reassigned_to_another_tensor_is_read_again(backend: str, where: str) -> None:
    """`o.t = new_tensor` between calls: the trace held the old tensor, so the mod is traced again."""
    holder = {"closure": _Holder(), "global": _GLOBAL_HOLDER, "module": torch.nn.Module()}[where]
    if where == "global":
        def score_mod(score, b, h, q_idx, kv_idx):
            return score + _GLOBAL_HOLDER.t[kv_idx]
    else:
        def score_mod(score, b, h, q_idx, kv_idx):
            return score + holder.t[kv_idx]
    q = torch.randn(1, 2, 8, 16, generator=torch.Generator().manual_seed(0))
    for values in (torch.zeros(8), torch.arange(8.0) * 3, torch.linspace(2.0, -2.0, 8)):
        if where == "module":
            holder.t = torch.nn.Parameter(values)
        else:
            holder.t = values
        got = attnc.flex_attention(q, q, q, score_mod=score_mod, backend=backend)
        bias = values.view(1, 1, 1, 8).expand(1, 2, 8, 8)
        expected = torch.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=bias)
        torch.testing.assert_close(got.detach(), expected, atol=2e-5, rtol=2e-5)


# -- 1. a tensor's shape read into Python is a constant of the trace: a new shape means a new trace ---------


_SHAPE_READS = {
    "shape": lambda t: t.shape[0],
    "len": lambda t: len(t),
    "size": lambda t: t.size(0),
    "numel": lambda t: t.numel(),
    "derived": lambda t: (t[1:] * 2).shape[0] + 1,
}


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("read", sorted(_SHAPE_READS))
def test_a_shape_read_in_the_mod_follows_the_captured_tensor(backend: str, read: str) -> None:
    """`kv_idx < lengths.shape[0]`: rebinding `lengths` to a tensor of another length, or resizing it in
    place, gives the mask of the new length, not the one traced."""
    size_of = _SHAPE_READS[read]
    lengths = torch.zeros(3)

    def mask_mod(b, h, q_idx, kv_idx):
        return kv_idx < size_of(lengths) + 1

    q, k, v = qkv(L=12)
    attention = attnc.Attention(mask_mod)
    for n in (3, 6, 2):
        if n == 2:
            lengths.resize_(n)  # in place: the same tensor object, another shape
        else:
            lengths = torch.zeros(n)
        got = attention(q, k, v, backend=backend)
        allowed = torch.arange(12) < size_of(lengths) + 1
        expected = dense(q, k, v, lambda s, a=allowed: s.masked_fill(~a, -math.inf))
        torch.testing.assert_close(got, expected, atol=2e-5, rtol=2e-5)


def test_a_vector_read_follows_the_length_of_its_tensor() -> None:
    """A vector's length is a shape read too (MLA's decoupled RoPE term with another rope width)."""
    gen = torch.Generator().manual_seed(3)
    q, k, v = qkv(L=8)
    q_pe = torch.randn(1, 2, 8, 4, generator=gen)

    def score_mod(score, b, h, q_idx, kv_idx):
        return score + torch.dot(q_pe[b, h, q_idx], q_pe[b, h, kv_idx])

    attention = attnc.Attention(score_mod=score_mod)
    for width in (4, 6):
        q_pe = torch.randn(1, 2, 8, width, generator=gen)
        got = attention(q, k, v, backend="reference")
        expected = dense(q, k, v, lambda s, p=q_pe: s + p @ p.transpose(-1, -2))
        torch.testing.assert_close(got, expected, atol=2e-5, rtol=2e-5)


def test_tensors_only_indexed_keep_their_trace_when_their_length_changes() -> None:
    """Tables read only by index (a varlen call's offsets) change length from call to call: no new trace."""
    offsets = torch.tensor([0, 3, 8])

    def mask_mod(b, h, q_idx, kv_idx):
        return kv_idx <= offsets[1]

    q, k, v = qkv(L=8)
    attention = attnc.Attention(mask_mod)
    attention(q, k, v, backend="reference")
    traced = attention.traced
    offsets = torch.tensor([0, 5, 6, 8])
    got = attention(q, k, v, backend="reference")
    assert attention.traced is traced
    expected = dense(q, k, v, lambda s: s.masked_fill(~(torch.arange(8) <= 5), -math.inf))
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=2e-5)


def test_the_stale_trace_message_names_the_tensor_and_its_shapes() -> None:
    lengths = torch.zeros(3)

    def mask_mod(b, h, q_idx, kv_idx):
        return kv_idx < lengths.shape[0]

    traced = trace(mask_mod, None)
    lengths = torch.zeros(5)
    with pytest.raises(StaleTrace, match=r"lengths had shape \[3\] when traced and \[5\] now"):
        traced.bind(mask_mod, None)
