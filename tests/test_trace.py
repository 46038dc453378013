"""Tracing Python mods: the IR produced, PyTorch's dtype promotion, closure parameters and rebinding."""

from __future__ import annotations

import functools
import math
import operator
import types
import warnings
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch.nn.attention import flex_attention as torch_flex

from attnc.dsl import StaleTrace, Sym, Traced, trace
from attnc.ir import DType, Op, ParamSpec, TensorSpec, const, load, node, param, score, var
from attnc.ir.interpret import Env, evaluate, index_grids
from attnc.ir.verify import verify_program
from attnc.variants.combinators import and_masks, or_masks

Q, KV, I32 = var("q"), var("kv"), DType.int32


def traced(mask_mod: Any = None, score_mod: Any = None) -> Traced:
    """Trace and check the IR conventions the tracer promises."""
    result = trace(mask_mod, score_mod)
    verify_program(result.program)
    return result


def assert_matches_eager(mask_mod: Any = None, score_mod: Any = None, shape: tuple = (2, 3, 9, 11)) -> None:
    """The traced IR, evaluated by the interpreter, equals the mods run eagerly on index grids."""
    result = traced(mask_mod, score_mod)
    bound = result.bind(mask_mod, score_mod)
    grids = index_grids(*shape)
    raw = torch.randn(shape)
    env = Env(*grids, score=raw, tensors=bound.tensors, params=bound.params)
    if mask_mod is not None:
        got = evaluate(result.program.mask, env).expand(shape)
        assert torch.equal(got, torch.as_tensor(mask_mod(*grids)).expand(shape))
    if score_mod is not None:
        got = evaluate(result.program.score, env).expand(shape)
        torch.testing.assert_close(got, torch.as_tensor(score_mod(raw, *grids)).float().expand(shape))


# -- typical mods -------------------------------------------------------------------------------------


def test_causal_mask_is_one_comparison():
    program = traced(lambda b, h, q_idx, kv_idx: q_idx >= kv_idx).program
    assert program.mask is node(Op.GE, DType.bool, Q, KV)
    assert program.score is None and program.tensors == () and program.params == ()


def test_sliding_window_closure_int_is_a_parameter():
    window = 64

    def sliding(b, h, q_idx, kv_idx):
        return (q_idx - kv_idx).abs() < window

    result = traced(sliding)
    distance = node(Op.ABS, I32, node(Op.SUB, I32, Q, KV))
    assert result.program.mask is node(Op.LT, DType.bool, distance, param(0, I32))
    assert result.program.params == (ParamSpec(I32, "window"),)
    assert result.bind(sliding, None).params == (64,)
    assert_matches_eager(sliding)


def test_alibi_reads_the_slopes_tensor():
    slopes = torch.rand(3)

    def alibi(score, b, h, q_idx, kv_idx):
        return score - slopes[h] * (q_idx - kv_idx).abs()

    result = traced(score_mod=alibi)
    assert result.program.tensors == (TensorSpec(DType.float32, 1),)
    distance = node(Op.CAST, DType.float32, node(Op.ABS, I32, node(Op.SUB, I32, Q, KV)))
    bias = node(Op.MUL, DType.float32, load(0, DType.float32, var("h")), distance)
    assert result.program.score is node(Op.SUB, DType.float32, score(), bias)
    assert result.bind(None, alibi).tensors[0] is slopes
    assert_matches_eager(score_mod=alibi)


def test_softcap_closure_float_is_a_weak_parameter():
    cap = 30.0

    def softcap(score, b, h, q_idx, kv_idx):
        return cap * torch.tanh(score / cap)

    result = traced(score_mod=softcap)
    c = param(0, DType.float32)
    inner = node(Op.TANH, DType.float32, node(Op.TRUEDIV, DType.float32, score(), c))
    assert result.program.score is node(Op.MUL, DType.float32, c, inner)
    assert result.program.params == (ParamSpec(DType.float32, "cap"),)
    assert_matches_eager(score_mod=softcap)


def test_document_mask_gives_one_slot_per_tensor():
    doc = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3], dtype=torch.int32)

    def document(b, h, q_idx, kv_idx):
        return doc[q_idx] == doc[kv_idx]

    result = traced(document)
    assert result.program.mask is node(Op.EQ, DType.bool, load(0, I32, Q), load(0, I32, KV))
    assert result.program.tensors == (TensorSpec(I32, 1),)
    assert_matches_eager(document)


def test_nested_index_and_python_int_index():
    doc = torch.tensor([0, 1, 1, 0, 2, 2, 1, 0, 0], dtype=torch.int64)
    bias = torch.randn(3, 4)
    table = torch.randn(2, 11)

    def nested(score, b, h, q_idx, kv_idx):
        return score + bias[h, doc[q_idx]] + table[0, kv_idx]

    result = traced(score_mod=nested)
    # slots in order of first use: the inner index doc[q_idx] is read before bias
    bias_term = load(1, DType.float32, var("h"), load(0, DType.int64, Q))
    table_term = load(2, DType.float32, const(0, I32), KV)
    f32 = DType.float32
    assert result.program.score is node(Op.ADD, f32, node(Op.ADD, f32, score(), bias_term), table_term)
    assert [t.ndim for t in result.program.tensors] == [1, 2, 2]
    assert_matches_eager(score_mod=nested)


def test_relative_bias_table_with_offset_and_narrow_int_tensor():
    table = torch.randint(-5, 5, (3, 2 * 11 - 1), dtype=torch.int8)

    def relative(score, b, h, q_idx, kv_idx):
        return score + table[h, q_idx - kv_idx + 10]

    result = traced(score_mod=relative)
    assert result.program.tensors == (TensorSpec(I32, 2),)  # int8 loads as int32
    assert_matches_eager(score_mod=relative)


def t5_bucket(relative_position: Any, num_buckets: int = 16, max_distance: int = 32) -> Any:
    """T5's bidirectional relative-position bucket, written as in the T5 reference code."""
    num_buckets //= 2
    buckets = (relative_position > 0).to(torch.long) * num_buckets
    relative_position = torch.abs(relative_position)
    max_exact = num_buckets // 2
    is_small = relative_position < max_exact
    large = max_exact + (
        torch.log(relative_position.float() / max_exact) / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).to(torch.long)
    large = torch.min(large, torch.full_like(large, num_buckets - 1))
    return buckets + torch.where(is_small, relative_position, large)


def test_t5_bucket_with_log_where_and_int_conversion():
    bias = torch.randn(16, 3)

    def t5(score, b, h, q_idx, kv_idx):
        return score + bias[t5_bucket(kv_idx - q_idx), h]

    result = traced(score_mod=t5)
    ops = {n.op for n in result.program.score.walk()}
    assert {Op.LOG, Op.WHERE, Op.MIN, Op.CAST} <= ops
    bucket = next(n for n in result.program.score.walk() if n.op is Op.LOAD).src[0]
    assert bucket.dtype is DType.int64  # `.to(torch.long)` promotes the int32 indices, as in torch
    assert_matches_eager(score_mod=t5, shape=(1, 3, 40, 40))


def test_score_mod_result_is_cast_to_float32():
    result = traced(score_mod=lambda score, b, h, q_idx, kv_idx: q_idx - kv_idx)
    assert result.program.score is node(Op.CAST, DType.float32, node(Op.SUB, I32, Q, KV))
    assert traced(score_mod=lambda *args: 0.5).program.score is const(0.5, DType.float32)
    half = traced(score_mod=lambda score, b, h, q_idx, kv_idx: score.half() * 2).program.score
    assert half.op is Op.CAST and half.src[0].dtype is DType.float16


def test_constant_mask_and_new_ones():
    assert traced(lambda b, h, q_idx, kv_idx: True).program.mask is const(True, DType.bool)
    new_ones = traced(lambda b, h, q_idx, kv_idx: b.new_ones(size=(), dtype=torch.bool, device=b.device))
    assert new_ones.program.mask is const(True, DType.bool)
    zeros = traced(score_mod=lambda s, b, h, q, kv: s + torch.zeros_like(s) + torch.full_like(q, 2.5))
    assert const(0.0, DType.float32) in set(zeros.program.score.walk())
    assert const(2, I32) in set(zeros.program.score.walk())  # full_like of an int32 truncates the fill


# -- operators, torch functions and Tensor methods -------------------------------------------------


def test_tensor_methods_match_torch_functions():
    by_function = traced(score_mod=lambda s, b, h, q, kv: torch.exp(torch.clamp(s, min=0.0, max=4.0)))
    by_method = traced(score_mod=lambda s, b, h, q, kv: s.clamp(min=0.0, max=4.0).exp())
    assert by_function.program.score is by_method.program.score
    chained = traced(score_mod=lambda s, b, h, q, kv: s.clamp_min(0.0).clamp_max(4.0).exp())
    assert chained.program.score is by_function.program.score


def test_real_tensor_on_the_left_of_an_operator():
    offset = torch.tensor(3, dtype=torch.int32)

    def shifted(b, h, q_idx, kv_idx):
        return (offset + kv_idx <= q_idx) & (offset // 2 < q_idx) & (offset ** 1 != kv_idx)

    result = traced(shifted)
    assert load(0, I32) in set(result.program.mask.walk())  # a captured zero-dim tensor stays runtime data
    assert_matches_eager(shifted)


def test_tensor_created_inside_the_mod_is_a_constant():
    result = traced(score_mod=lambda s, b, h, q, kv: s * torch.tensor(0.5))
    assert result.program.score is node(Op.MUL, DType.float32, score(), const(0.5, DType.float32))
    assert result.program.tensors == ()


def test_trainable_scalar_tensor_is_loaded_with_requires_grad():
    temperature = torch.tensor([2.0], requires_grad=True)
    result = traced(score_mod=lambda s, b, h, q, kv: s / temperature)
    assert result.program.tensors == (TensorSpec(DType.float32, 1, requires_grad=True),)
    assert load(0, DType.float32, const(0, I32)) in set(result.program.score.walk())


def test_invert_and_logic():
    inverted = traced(lambda b, h, q, kv: ~(q < kv)).program.mask
    assert inverted is node(Op.NOT, DType.bool, node(Op.LT, DType.bool, Q, KV))
    bits = traced(lambda b, h, q, kv: (~q & 7) == kv).program.mask
    assert node(Op.XOR, I32, Q, const(-1, I32)) in set(bits.walk())
    logical = traced(lambda b, h, q, kv: torch.logical_and(q, torch.logical_not(kv))).program.mask
    assert logical is node(Op.AND, DType.bool, node(Op.CAST, DType.bool, Q),
                           node(Op.NOT, DType.bool, node(Op.CAST, DType.bool, KV)))


@pytest.mark.parametrize("rounding_mode", [None, "floor", "trunc"])
def test_div_rounding_modes_match_torch(rounding_mode):
    def int_div(score, b, h, q_idx, kv_idx):  # odd divisors: never zero, of both signs
        return torch.div(q_idx - 5, (kv_idx - 6) * 2 + 1, rounding_mode=rounding_mode)

    def float_div(score, b, h, q_idx, kv_idx):
        return torch.div(score * 7, -2.5, rounding_mode=rounding_mode)

    assert_matches_eager(score_mod=int_div)
    assert_matches_eager(score_mod=float_div)


def test_sym_hashes_by_identity():
    seen = {}

    def mod(b, h, q_idx, kv_idx):
        seen[q_idx] = 1
        seen[kv_idx] = 2
        assert isinstance(q_idx, Sym) and hash(q_idx) != hash(kv_idx)
        return q_idx >= kv_idx

    traced(mod)
    assert len(seen) == 2


# -- PyTorch's dtype promotion, checked against torch itself ----------------------------------------------


def _invert(x: Any) -> Any:
    # Python's `~` on a bool is a deprecated int trick; the tracer reads `~condition` as logical not.
    return (not x) if isinstance(x, bool) else ~x


_BINARY = {
    "+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
    "//": operator.floordiv, "%": operator.mod, "&": operator.and_, "|": operator.or_, "^": operator.xor,
    "<": operator.lt, "<=": operator.le, "==": operator.eq, "!=": operator.ne, ">": operator.gt,
    "maximum": torch.maximum, "minimum": torch.minimum, "remainder": torch.remainder,
    "floor_divide": torch.floor_divide, "div_trunc": functools.partial(torch.div, rounding_mode="trunc"),
    "where_ge": lambda a, b: torch.where(a >= b, a, b),
}
_UNARY = {
    "neg": operator.neg, "abs": abs, "invert": _invert, "exp": torch.exp, "tanh": torch.tanh,
    "floor": torch.floor, "sign": torch.sign, "sqrt": torch.sqrt, "float": lambda x: x.float(),
    "long": lambda x: x.long(), "half": lambda x: x.half(), "bfloat16": lambda x: x.bfloat16(),
    "double": lambda x: x.double(), "bool": lambda x: x.bool(), "int": lambda x: x.to(torch.int32),
    "clamp": lambda x: torch.clamp(x, min=0), "clamp_max": lambda x: x.clamp_max(1.5),
    "zeros_like": torch.zeros_like,
}
_LEAVES = ["score", "b", "h", "q", "kv", "pi", "pf", "t64", "tf16", "tbf", "tf64", "tb"]
_LITERALS = [0, 1, 2, -3, 0.5, -1.25, 2.0, True, False]


def _expressions() -> st.SearchStrategy:
    leaf = st.one_of(st.sampled_from(_LEAVES).map(lambda n: ("leaf", n)),
                     st.sampled_from(_LITERALS).map(lambda v: ("literal", v)))
    return st.recursive(leaf, lambda sub: st.one_of(
        st.tuples(st.just("binary"), st.sampled_from(sorted(_BINARY)), sub, sub),
        st.tuples(st.just("unary"), st.sampled_from(sorted(_UNARY)), sub),
        st.tuples(st.just("pow"), sub, st.sampled_from([2, 3, 2.0, -1])),
    ), max_leaves=6)


def _evaluate(expr: tuple, env: dict[str, Any]) -> Any:
    kind = expr[0]
    if kind == "leaf":
        return env[expr[1]]
    if kind == "literal":
        return expr[1]
    if kind == "binary":
        return _BINARY[expr[1]](_evaluate(expr[2], env), _evaluate(expr[3], env))
    if kind == "unary":
        return _UNARY[expr[1]](_evaluate(expr[2], env))
    return _evaluate(expr[1], env) ** expr[2]


def _mod_for(expr: tuple, literals_in_closure: bool) -> Any:
    """A score mod computing `expr`, closing over Python scalars (parameters) and zero-dim tensors.

    With `literals_in_closure` the mod closes over `expr` itself, so the tracer turns its literals into
    parameters too; otherwise they stay Python literals (a namespace object is not walked)."""
    pi, pf = 3, 0.75
    t64, tb = torch.tensor(5), torch.tensor(True)
    tf16, tbf, tf64 = (torch.tensor(1.5, dtype=d) for d in (torch.float16, torch.bfloat16, torch.float64))
    held = expr if literals_in_closure else types.SimpleNamespace(expr=expr)

    def mod(score, b, h, q, kv):
        env = {"score": score, "b": b, "h": h, "q": q, "kv": kv, "pi": pi, "pf": pf, "t64": t64, "tb": tb,
               "tf16": tf16, "tbf": tbf, "tf64": tf64}
        value = _evaluate(held if literals_in_closure else held.expr, env)
        return torch.where(q >= kv, value, value)  # makes Python results tensors, keeps the dtype

    return mod


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_expressions(), st.booleans())
def test_dtype_promotion_matches_torch(expr, literals_in_closure):
    mod = _mod_for(expr, literals_in_closure)
    real_args = [torch.tensor(0.25)] + [torch.tensor(i, dtype=torch.int32) for i in (1, 2, 3, 2)]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = mod(*real_args)
    except Exception:
        assume(False)
    root = traced(score_mod=mod).program.score
    where = root.src[0] if root.op is Op.CAST else root
    assert where.op is Op.WHERE
    assert where.dtype.torch == expected.dtype, expr


# -- closure parameters, rebinding, staleness ------------------------------------------------------------


def test_rebinding_a_closure_int_needs_no_new_trace():
    window = 64

    def sliding(b, h, q_idx, kv_idx):
        return q_idx - kv_idx < window

    result = traced(sliding)
    assert result.bind(sliding, None).params == (64,)
    window = 128
    assert result.bind(sliding, None).params == (128,)
    rebuilt = traced(sliding)
    assert rebuilt.program.mask is result.program.mask


def test_new_closure_of_the_same_code_binds_its_values():
    def sliding_window(window: int) -> Any:
        return lambda b, h, q_idx, kv_idx: (q_idx - kv_idx).abs() <= window

    result = traced(sliding_window(4))
    assert result.bind(sliding_window(9), None).params == (9,)
    assert_matches_eager(sliding_window(2))


def test_stale_when_an_int_becomes_a_float():
    window = 64

    def sliding(b, h, q_idx, kv_idx):
        return q_idx - kv_idx < window

    result = traced(sliding)
    window = 1.5
    with pytest.raises(StaleTrace, match="window was a Python int when traced and is now a Python float"):
        result.bind(sliding, None)


@pytest.mark.parametrize("change", [
    lambda t: t.long(), lambda t: t.view(2, 4), lambda t: t.float().requires_grad_(),
])
def test_stale_when_a_captured_tensor_changes_kind(change):
    doc = torch.zeros(8, dtype=torch.int32)

    def document(b, h, q_idx, kv_idx):
        return doc[q_idx] == doc[kv_idx] if doc.ndim == 1 else doc[0, q_idx] == doc[0, kv_idx]

    result = traced(document)
    doc = change(doc)
    with pytest.raises(StaleTrace, match="captured tensor"):
        result.bind(document, None)


def test_stale_when_the_closure_holds_another_function():
    inner = lambda b, h, q_idx, kv_idx: q_idx >= kv_idx

    def outer(b, h, q_idx, kv_idx):
        return inner(b, h, q_idx, kv_idx)

    result = traced(outer)
    inner = lambda b, h, q_idx, kv_idx: q_idx <= kv_idx
    changed = r"mask_mod\.inner was function <lambda> \(.*\) when traced and is now function <lambda>"
    with pytest.raises(StaleTrace, match=changed):
        result.bind(outer, None)


def test_int_parameter_outside_int32_is_rejected_at_bind():
    offset = 0

    def shifted(b, h, q_idx, kv_idx):
        return q_idx + offset >= kv_idx

    result = traced(shifted)
    offset = 2**31
    with pytest.raises(ValueError, match=r"offset = 2147483648 does not fit in int32"):
        result.bind(shifted, None)


def test_python_branch_on_a_closure_scalar_specialises():
    def make(limit: int, strict: bool) -> Any:
        def mod(b, h, q_idx, kv_idx):
            if strict and limit > 2:
                return q_idx - kv_idx < limit
            return q_idx >= kv_idx
        return mod

    result = traced(make(3, True))
    assert result.program.mask is node(Op.LT, DType.bool, node(Op.SUB, I32, Q, KV), const(3, I32))
    assert result.bind(make(3, True), None).params == ()
    with pytest.raises(StaleTrace, match="limit was 3 when traced and is now 4"):
        result.bind(make(4, True), None)
    with pytest.raises(StaleTrace, match="strict was True"):
        result.bind(make(3, False), None)


def test_int_power_with_a_closure_exponent_specialises():
    # Python's 2 ** n is an int for n >= 0 and a float for n < 0: the dtype needs the value
    def make(n: int) -> Any:
        return lambda score, b, h, q_idx, kv_idx: score * 2 ** n

    result = traced(score_mod=make(3))
    assert result.program.score is node(Op.MUL, DType.float32, score(), const(8.0, DType.float32))
    assert result.program.params == ()
    assert traced(score_mod=make(-1)).program.score is not result.program.score
    with pytest.raises(StaleTrace, match="n was 3 when traced and is now -1"):
        result.bind(None, make(-1))


def test_fill_from_a_closure_parameter():
    window = 5

    def banded(b, h, q_idx, kv_idx):
        return q_idx - kv_idx < torch.full_like(q_idx, window)

    result = traced(banded)
    assert result.program.mask is node(Op.LT, DType.bool, node(Op.SUB, I32, Q, KV), param(0, I32))
    assert_matches_eager(banded)


def test_list_indexed_by_a_specialised_int_gives_a_parameter():
    sizes = [3, 5, 7]
    which = 1

    def mod(b, h, q_idx, kv_idx):
        return q_idx - kv_idx < sizes[which]

    result = traced(mod)
    assert result.program.params == (ParamSpec(I32, "sizes[1]"),)
    sizes[1] = 6
    assert result.bind(mod, None).params == (6,)


# -- combinators and shared closures -------------------------------------------------------------------


def _sliding(window: int) -> Any:
    def sliding(b, h, q_idx, kv_idx):
        return (q_idx - kv_idx).abs() < window
    return sliding


def _document(doc: torch.Tensor) -> Any:
    def document(b, h, q_idx, kv_idx):
        return doc[q_idx] == doc[kv_idx]
    return document


@pytest.mark.parametrize("combine", [and_masks, or_masks, torch_flex.and_masks])
def test_combinator_closures_over_a_tuple_of_mods(combine):
    doc = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 2], dtype=torch.int32)
    mask = combine(_sliding(3), _document(doc), _sliding(5))
    result = traced(mask)
    assert [p.name for p in result.program.params] == ["window", "window"]
    assert result.bind(mask, None).params == (3, 5)
    assert result.bind(mask, None).tensors[0] is doc
    assert result.bind(combine(_sliding(4), _document(doc), _sliding(6)), None).params == (4, 6)
    assert_matches_eager(mask)
    with pytest.raises(StaleTrace):
        result.bind(combine(_sliding(4), _document(doc)), None)


def test_same_cell_reached_twice_is_one_parameter():
    def make(window: int) -> tuple[Any, Any]:
        def near(b, h, q_idx, kv_idx):
            return q_idx - kv_idx < window

        def bias(score, b, h, q_idx, kv_idx):
            return score - window
        return near, bias

    near, bias = make(8)
    result = traced(near, bias)
    assert result.program.params == (ParamSpec(I32, "window"),)
    assert param(0, I32) in set(result.program.mask.walk())
    assert node(Op.CAST, DType.float32, param(0, I32)) in set(result.program.score.walk())


def test_partial_defaults_and_kwdefaults_are_parameters():
    def banded(b, h, q_idx, kv_idx, low=1, *, high=4):
        return (kv_idx >= q_idx - low) & (kv_idx <= q_idx + high)

    result = traced(functools.partial(banded, low=2))
    assert [p.name for p in result.program.params] == ["low", "high"]
    assert result.bind(functools.partial(banded, low=3), None).params == (3, 4)
    assert_matches_eager(functools.partial(banded, low=2))


def _module(source: str, **names: Any) -> dict[str, Any]:
    """The namespace of a small module holding `source`, with `names` as its globals."""
    namespace = {"torch": torch, **names}
    exec(source, namespace)
    return namespace


def test_module_global_tensor_is_found_again_at_every_bind():
    module = _module("def biased(score, b, h, q_idx, kv_idx):\n    return score + BIAS[h]\n", BIAS=torch.randn(3))
    result = traced(score_mod=module["biased"])
    module["BIAS"] = torch.randn(3)
    assert result.bind(None, module["biased"]).tensors[0] is module["BIAS"]


def test_module_global_scalar_is_a_constant_that_bind_checks():
    module = _module("def near(b, h, q_idx, kv_idx):\n    return q_idx - kv_idx < WINDOW\n", WINDOW=4)
    result = traced(module["near"])
    assert result.program.mask is node(Op.LT, DType.bool, node(Op.SUB, I32, Q, KV), const(4, I32))
    module["WINDOW"] = 8
    with pytest.raises(StaleTrace, match=r"mask_mod\.WINDOW was 4 when traced and is now 8"):
        result.bind(module["near"], None)


def test_tensor_reached_through_an_attribute_is_read_through_it():
    """An object's attribute is found by its path, like a closure variable: reassigning it needs no new trace."""
    holder = types.SimpleNamespace(bias=torch.randn(3))

    def biased(score, b, h, q_idx, kv_idx):
        return score + holder.bias[h]

    result = traced(score_mod=biased)
    assert result.captures.tensors[0].path[-1] == ("attr", "bias")
    assert result.bind(None, biased).tensors[0] is holder.bias
    holder.bias = torch.randn(3)
    assert result.bind(None, biased).tensors[0] is holder.bias


def test_an_objects_number_attributes_are_runtime_parameters():
    """`self.window` in a bound-method mod is a parameter, read again at every call, not a frozen constant."""
    holder = types.SimpleNamespace(window=4, label="x")

    def mask(b, h, q_idx, kv_idx):
        return q_idx - kv_idx < holder.window

    result = traced(mask)
    assert result.program.params[0].name == "holder.window"
    holder.window = 9
    assert result.bind(mask, None).params == (9,)


def test_tracing_twice_gives_the_identical_root():
    doc = torch.zeros(11, dtype=torch.int32)
    mask = and_masks(_sliding(4), _document(doc))
    first, second = traced(mask), traced(mask)
    assert first.program.mask is second.program.mask
    assert first.program == second.program
