"""The verifier, the rewrite engine, every simplification rule, the pipeline and the printer."""

from __future__ import annotations

import math
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnc.ir import DType, Node, Op, ParamSpec, Program, TensorSpec, const, from_repr, load, node, param, var
from attnc.ir import score as score_node
from attnc.ir.fold import fold_constants
from attnc.ir.interpret import Env, evaluate
from attnc.ir.passes import PIPELINE, optimize
from attnc.ir.printer import format_node, format_program
from attnc.ir.rewrite import RuleSet, any_, cst, op, rewrite
from attnc.ir.simplify import index_algebra, simplify
from attnc.ir.verify import IRError, verify, verify_program
from tests import ir_strategies as irs

I32, I64, BOOL = DType.int32, DType.int64, DType.bool
F16, F32, F64 = DType.float16, DType.float32, DType.float64
b, h, q, kv = (var(n) for n in ("b", "h", "q", "kv"))
s = score_node()
TRUE, FALSE = const(True, BOOL), const(False, BOOL)
x_bool = load(2, BOOL, q)  # an opaque bool
y_bool = load(2, BOOL, kv)
x_float = load(1, F32, q, kv)  # an opaque float (may be NaN, inf or -0.0)

PROPERTY = settings(max_examples=80)  # deadline and health checks: the profile in conftest.py


def i(v: int) -> Node:
    return const(v, I32)


def f(v: float) -> Node:
    return const(v, F32)


def add(a: Node, c: Node) -> Node:
    return node(Op.ADD, a.dtype, a, c)


def sub(a: Node, c: Node) -> Node:
    return node(Op.SUB, a.dtype, a, c)


def mul(a: Node, c: Node) -> Node:
    return node(Op.MUL, a.dtype, a, c)


def cmp(o: Op, a: Node, c: Node) -> Node:
    return node(o, BOOL, a, c)


def where(c: Node, a: Node, e: Node) -> Node:
    return node(Op.WHERE, a.dtype, c, a, e)


def not_(a: Node) -> Node:
    return node(Op.NOT, BOOL, a)


def cast(dtype: DType, a: Node) -> Node:
    return node(Op.CAST, dtype, a)


def assert_same_values(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Exact for ints and bools; floats equal up to rounding, with NaN in the same places."""
    actual, expected = torch.broadcast_tensors(actual, expected)
    assert actual.dtype == expected.dtype
    if actual.is_floating_point():
        torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-6, equal_nan=True)
    else:
        assert torch.equal(actual, expected)


# -- verifier -------------------------------------------------------------------------------------

PROGRAM = Program(tensors=irs.TENSORS, params=irs.PARAMS)

BAD_EXPRESSIONS = [
    (add(q, i(1)), True, "a mask must be bool"),
    (cmp(Op.LT, s, f(0.0)), True, "a mask cannot read the score"),
    (cmp(Op.LT, q, kv), False, "a score mod must be float32"),
    (cmp(Op.LT, node(Op.ADD, I32, q, f(1.0)), q), True, "operands must have the node's dtype"),
    (cmp(Op.LT, node(Op.ADD, BOOL, x_bool, x_bool), TRUE), True, "arithmetic on bool is not in the IR"),
    (cmp(Op.LT, node(Op.TRUEDIV, I32, q, kv), q), True, "true division yields a float"),
    (cmp(Op.LT, q, node(Op.EXP, I32, q)), True, "needs a float operand"),
    (cmp(Op.LT, q, cast(F32, q)), True, "compared operands must share a dtype"),
    (where(q, TRUE, FALSE), True, "the condition must be bool"),
    (not_(q), True, "needs a bool operand"),
    (cmp(Op.LT, load(0, I32, cast(F32, q)), q), True, "tensor indices must be integers"),
    (cmp(Op.LT, node(Op.NEG, I32, q, kv), q), True, "expects 1 operands, got 2"),
    (cmp(Op.LT, node(Op.ADD, I32, q, kv, arg=3), q), True, "takes no argument"),
    (cmp(Op.LT, q, node(Op.CONST, I32, arg=2.5)), True, "is not normalised to int32"),
    (cmp(Op.LT, q, node(Op.CONST, I32, arg=2**31)), True, "out of range"),
    (cmp(Op.LT, q, param(0, I64)), True, "runtime parameters are int32 or float32"),
    (cmp(Op.LT, q, node(Op.VAR, I32, arg="i")), True, "index variables are b, h, q, kv"),
    (node(Op.AND, F32, s, s), False, "logic needs bool or integer operands"),
]


@pytest.mark.parametrize(("root", "is_mask", "message"), BAD_EXPRESSIONS)
def test_verifier_rejects(root: Node, is_mask: bool, message: str) -> None:
    with pytest.raises(IRError, match=message):
        verify(root, is_mask=is_mask)


BAD_SLOTS = [
    (cmp(Op.LT, q, param(5, I32)), "no runtime parameter in slot 5"),
    (cmp(Op.LT, q, param(1, I32)), "parameter 'temperature' is float32"),
    (load(7, BOOL, q), "no captured tensor in slot 7"),
    (load(2, BOOL, q, kv), "tensor t2 has 1 dims"),
    (cmp(Op.LT, load(0, I64, q), cast(I64, q)), "tensor t0 loads as int32"),
]


@pytest.mark.parametrize(("mask", "message"), BAD_SLOTS)
def test_verifier_checks_slots_against_the_program(mask: Node, message: str) -> None:
    verify(mask, is_mask=True)  # fine on its own
    with pytest.raises(IRError, match=message):
        verify_program(PROGRAM.replace(mask=mask))


def test_verifier_message_names_the_node() -> None:
    with pytest.raises(IRError, match=r"add\(int32, float32\) : int32"):
        verify(cmp(Op.LT, node(Op.ADD, I32, q, f(1.0)), q), is_mask=True)


def test_verifier_accepts_a_typical_program() -> None:
    window = cmp(Op.LE, sub(q, kv), param(0, I32))
    bias = load(1, F32, h, kv)
    verify_program(PROGRAM.replace(mask=node(Op.AND, BOOL, cmp(Op.GE, q, kv), window),
                                   score=add(s, bias)))


# -- rewrite engine -------------------------------------------------------------------------------

X, Y = any_("x"), any_("y")


def test_patterns_bind_repeated_names_to_one_node_and_commute() -> None:
    rules = RuleSet((op(Op.SUB, X, X), lambda x: i(0)), (op(Op.MUL, cst(2), X), lambda x: add(x, x)))
    assert rewrite(sub(q, q), rules) is i(0)
    assert rewrite(sub(q, kv), rules) is sub(q, kv)
    assert rewrite(mul(q, i(2)), rules) is add(q, q)  # MUL commutes: matches 2 * x with x * 2


def test_constant_patterns_tell_int_float_bool_and_signed_zero_apart() -> None:
    rules = RuleSet((op(Op.ADD, X, cst(0)), lambda x: x))
    assert rewrite(add(q, i(0)), rules) is q
    assert rewrite(add(x_float, f(0.0)), rules) is add(x_float, f(0.0))
    rules = RuleSet((op(Op.ADD, X, cst(-0.0)), lambda x: x))
    assert rewrite(add(x_float, f(0.0)), rules) is add(x_float, f(0.0))
    assert rewrite(add(x_float, f(-0.0)), rules) is x_float


def test_rewrite_reports_rules_that_loop() -> None:
    flip = RuleSet((op(Op.NOT, X), lambda x: not_(not_(not_(x)))))
    with pytest.raises(RuntimeError, match="rewrite rules loop"):
        rewrite(not_(x_bool), flip)


def test_rewrite_handles_chains_deeper_than_the_recursion_limit() -> None:
    chain = x_bool
    for k in range(sys.getrecursionlimit() + 100):
        chain = node(Op.AND, BOOL, chain, cmp(Op.NE, q, i(k)))
    chain = node(Op.AND, BOOL, chain, TRUE)
    assert simplify(chain) is chain.src[0]


# -- rules, one by one ----------------------------------------------------------------------------

RULE_CASES = [
    # arithmetic
    (add(q, i(0)), q),
    (add(x_float, f(-0.0)), x_float),
    (add(x_float, f(0.0)), add(x_float, f(0.0))),  # -0.0 + 0.0 is 0.0
    (sub(q, i(0)), q),
    (sub(x_float, f(0.0)), x_float),
    (sub(i(0), q), node(Op.NEG, I32, q)),
    (sub(f(-0.0), x_float), node(Op.NEG, F32, x_float)),
    (sub(f(0.0), x_float), sub(f(0.0), x_float)),  # 0.0 - 0.0 is 0.0, not -0.0
    (mul(i(1), q), q),
    (mul(x_float, f(1.0)), x_float),
    (mul(q, i(0)), i(0)),
    (mul(x_float, f(0.0)), mul(x_float, f(0.0))),  # NaN * 0 is NaN
    (node(Op.TRUEDIV, F32, x_float, f(1.0)), x_float),
    (node(Op.FLOORDIV, I32, q, i(1)), q),
    (node(Op.MOD, I32, q, i(-1)), i(0)),
    (node(Op.POW, F32, x_float, f(1.0)), x_float),
    (sub(q, q), i(0)),
    (sub(x_float, x_float), sub(x_float, x_float)),  # inf - inf is NaN
    (node(Op.NEG, F32, node(Op.NEG, F32, x_float)), x_float),
    (node(Op.ABS, F32, node(Op.NEG, F32, x_float)), node(Op.ABS, F32, x_float)),
    (node(Op.ABS, I32, node(Op.ABS, I32, q)), node(Op.ABS, I32, q)),
    (node(Op.MAX, F32, x_float, x_float), x_float),
    # logic
    (node(Op.AND, BOOL, x_bool, TRUE), x_bool),
    (node(Op.AND, BOOL, FALSE, x_bool), FALSE),
    (node(Op.OR, BOOL, x_bool, FALSE), x_bool),
    (node(Op.OR, BOOL, x_bool, TRUE), TRUE),
    (node(Op.XOR, BOOL, x_bool, FALSE), x_bool),
    (node(Op.XOR, BOOL, x_bool, TRUE), not_(x_bool)),
    (node(Op.AND, I32, q, i(-1)), q),
    (node(Op.AND, I32, q, i(0)), i(0)),
    (node(Op.OR, I32, q, i(-1)), i(-1)),
    (node(Op.XOR, I32, q, q), i(0)),
    (node(Op.OR, BOOL, x_bool, x_bool), x_bool),
    (node(Op.AND, BOOL, not_(x_bool), x_bool), FALSE),
    (node(Op.OR, BOOL, x_bool, not_(x_bool)), TRUE),
    (not_(not_(x_bool)), x_bool),
    (not_(cmp(Op.LT, q, kv)), cmp(Op.GE, q, kv)),
    (not_(cmp(Op.LT, x_float, f(1.0))), not_(cmp(Op.LT, x_float, f(1.0)))),  # NaN < 1 and NaN >= 1
    # select
    (where(TRUE, q, kv), q),
    (where(FALSE, q, kv), kv),
    (where(x_bool, x_float, x_float), x_float),
    (where(not_(x_bool), q, kv), where(x_bool, kv, q)),
    (where(x_bool, TRUE, FALSE), x_bool),
    (where(x_bool, FALSE, TRUE), not_(x_bool)),
    (where(x_bool, where(x_bool, q, h), kv), where(x_bool, q, kv)),
    (where(x_bool, q, where(x_bool, h, kv)), where(x_bool, q, kv)),
    # comparisons
    (cmp(Op.LE, q, q), TRUE),
    (cmp(Op.NE, load(0, I32, q), load(0, I32, q)), FALSE),
    (cmp(Op.EQ, x_float, x_float), cmp(Op.EQ, x_float, x_float)),  # NaN != NaN
    (cmp(Op.EQ, x_bool, TRUE), x_bool),
    (cmp(Op.EQ, x_bool, FALSE), not_(x_bool)),
    (cmp(Op.NE, x_bool, FALSE), x_bool),
    (cmp(Op.NE, TRUE, x_bool), not_(x_bool)),
    (cmp(Op.GT, cast(I64, x_bool), const(0, I64)), x_bool),
    (cmp(Op.EQ, cast(I32, x_bool), i(0)), not_(x_bool)),
    (cmp(Op.GE, i(0), cast(I32, x_bool)), not_(x_bool)),
    (cmp(Op.LT, cast(F32, x_bool), f(2.0)), TRUE),
    (cmp(Op.EQ, cast(F32, x_bool), f(math.nan)), FALSE),
    # casts
    (cast(I32, q), q),
    (cast(I32, cast(I64, q)), q),
    (cast(F32, cast(I64, q)), cast(F32, q)),
    (cast(I64, cast(F32, q)), cast(I64, cast(F32, q))),  # int32 -> float32 rounds
    (cast(F16, cast(F32, cast(F16, x_float))), cast(F16, x_float)),
    (cast(I32, cast(F64, x_float)), cast(I32, cast(F64, x_float))),  # float -> int: NaN
    (cast(F32, cast(I32, x_bool)), cast(F32, x_bool)),
    # constant folding
    (add(i(2**31 - 1), i(1)), i(-(2**31))),  # wraps around like int32
    (node(Op.FLOORDIV, I32, i(-7), i(2)), i(-4)),  # Python floor semantics
    (node(Op.MOD, I32, i(-7), i(2)), i(1)),
    (node(Op.FLOORDIV, I32, i(7), i(0)), node(Op.FLOORDIV, I32, i(7), i(0))),  # raises at run time
    (add(const(0.1, F16), const(0.2, F16)), const(0.2998046875, F16)),  # float32 sum, rounded to half once
    (node(Op.EXP, F32, f(-math.inf)), f(0.0)),
    (cmp(Op.LT, f(math.nan), f(1.0)), FALSE),
]


@pytest.mark.parametrize(("before", "after"), RULE_CASES, ids=lambda n: format_node(n).splitlines()[-2])
def test_rule(before: Node, after: Node) -> None:
    assert index_algebra(before) is after


def test_constant_folding_leaves_params_and_loads() -> None:
    e = add(add(param(0, I32), load(0, I32, i(3))), mul(i(2), i(3)))
    assert fold_constants(e) is add(add(param(0, I32), load(0, I32, i(3))), i(6))


# -- canonical order and index algebra ------------------------------------------------------------


def test_comparisons_in_either_direction_intern_to_one_node() -> None:
    assert index_algebra(cmp(Op.LE, kv, q)) is index_algebra(cmp(Op.GE, q, kv)) is cmp(Op.GE, q, kv)
    assert index_algebra(cmp(Op.GT, i(5), kv)) is cmp(Op.LT, kv, i(5))


def test_commutative_operands_put_outer_loop_values_first_and_constants_last() -> None:
    assert simplify(add(kv, q)) is add(q, kv)
    assert simplify(add(i(3), q)) is add(q, i(3))
    assert simplify(node(Op.AND, BOOL, cmp(Op.LT, kv, i(3)), cmp(Op.LT, h, i(3)))) is node(
        Op.AND, BOOL, cmp(Op.LT, h, i(3)), cmp(Op.LT, kv, i(3)))


def test_float_min_max_keep_their_operand_order() -> None:
    # minimum(-0.0, 0.0) is -0.0 but minimum(0.0, -0.0) is 0.0
    e = node(Op.MIN, F32, s, x_float)
    assert simplify(e) is e


def test_index_algebra_cancels_and_groups_terms_by_loop_level() -> None:
    assert index_algebra(add(sub(q, kv), kv)) is q
    assert index_algebra(sub(sub(add(q, i(3)), kv), i(1))) is sub(add(q, i(2)), kv)
    e = add(add(add(kv, q), i(1)), mul(h, i(4)))
    per_head = add(mul(h, i(4)), i(1))  # the constant joins the outermost group
    assert index_algebra(e) is add(add(per_head, q), kv)


def test_index_algebra_expands_products_and_exposes_identities() -> None:
    square = mul(add(q, i(1)), sub(q, i(1)))
    assert index_algebra(cmp(Op.EQ, square, sub(mul(q, q), i(1)))) is TRUE
    assert index_algebra(node(Op.FLOORDIV, I32, add(sub(q, kv), kv), i(2))) is node(Op.FLOORDIV, I32, q, i(2))


def test_index_algebra_wraps_coefficients_like_the_hardware() -> None:
    e = mul(mul(q, i(65536)), i(65536))  # 2**32 q == 0 in int32
    assert index_algebra(e) is i(0)
    wide = mul(mul(cast(I64, q), const(65536, I64)), const(65536, I64))
    assert index_algebra(wide) is mul(cast(I64, q), const(2**32, I64))


def test_index_algebra_leaves_polynomials_that_would_blow_up() -> None:
    power = add(q, kv)
    for _ in range(10):  # (q + kv) ** 1024: expanding stops before the 1025 terms
        power = mul(power, power)
    optimized = index_algebra(power)
    assert len(list(optimized.walk())) < 1000
    env = small_env()
    assert_same_values(evaluate(optimized, env), evaluate(power, env))


def test_pipeline_on_a_sliding_window_mask() -> None:
    window = node(Op.AND, BOOL, cmp(Op.LE, kv, q), cmp(Op.LT, sub(sub(q, kv), i(0)), param(0, I32)))
    program = PROGRAM.replace(mask=node(Op.AND, BOOL, window, TRUE))
    steps: list[str] = []
    out = optimize(program, check=True, on_step=lambda name, p: steps.append(name))
    assert steps == [name for name, _ in PIPELINE]
    expected = node(Op.AND, BOOL, cmp(Op.GT, param(0, I32), sub(q, kv)), cmp(Op.GE, q, kv))
    assert out.mask is expected


def test_optimize_reports_the_step_that_broke_the_ir() -> None:
    with pytest.raises(IRError, match="after input: add"):
        optimize(PROGRAM.replace(mask=add(q, i(1))), check=True)


# -- properties: every pass preserves meaning -----------------------------------------------------


@PROPERTY
@given(irs.exprs(I32), irs.envs())
def test_every_step_preserves_integer_values_exactly(root: Node, env: Env) -> None:
    expected = evaluate(root, env)
    current = root
    for _, step in PIPELINE:
        current = step(current)
        assert_same_values(evaluate(current, env), expected)


@PROPERTY
@given(irs.programs(), irs.envs())
def test_optimize_preserves_masks_and_score_mods(program: Program, env: Env) -> None:
    optimized = optimize(program, check=True)
    for name, root in program.roots().items():
        assert_same_values(evaluate(optimized.roots()[name], env), evaluate(root, env))


@PROPERTY
@given(irs.programs())
def test_optimize_is_idempotent_and_reprs_round_trip(program: Program) -> None:
    optimized = optimize(program)
    again = optimize(optimized)
    assert again.mask is optimized.mask and again.score is optimized.score
    for root in (*program.roots().values(), *optimized.roots().values()):
        assert from_repr(repr(root)) is root


def small_env() -> Env:
    grids = (torch.arange(3, dtype=torch.int32).view(shape) for shape in irs.GRID_SHAPES)
    tables = (torch.arange(7, dtype=torch.int32), torch.linspace(-2, 2, 15).view(3, 5),
              torch.tensor([True, False, True, False]))
    return Env(*grids, tensors=tables, params=(3, 0.25))


@settings(max_examples=40)
@given(irs.exprs(F16, depth=2))
def test_half_expressions_survive_the_pipeline(root: Node) -> None:
    env = small_env()
    assert_same_values(evaluate(index_algebra(root), env), evaluate(root, env))


# -- printer --------------------------------------------------------------------------------------


def test_format_node_is_an_ssa_listing_with_dtypes_and_dependencies() -> None:
    e = cmp(Op.LT, add(q, i(1)), load(0, I32, kv))
    assert format_node(e) == "\n".join([
        "%0 = var q : int32  [q]",
        "%1 = const 1 : int32  []",
        "%2 = add %0, %1 : int32  [q]",
        "%3 = var kv : int32  [kv]",
        "%4 = load t0[%3] : int32  [kv]",
        "%5 = lt %2, %4 : bool  [q, kv]",
        "return %5",
    ])


def test_format_program_lists_slots_and_both_roots() -> None:
    program = Program(score=add(s, param(0, F32)), tensors=(TensorSpec(F32, 2, requires_grad=True),),
                      params=(ParamSpec(F32, "bias"),))
    assert format_program(program) == "\n".join([
        "tensors: t0: float32 ndim=2 requires_grad",
        "params: p0: float32 'bias'",
        "mask: every pair allowed",
        "score:",
        "  %0 = score : float32  [b, h, q, kv, score]",
        "  %1 = param p0 : float32  []",
        "  %2 = add %0, %1 : float32  [b, h, q, kv, score]",
        "  return %2",
    ])


@settings(max_examples=30)
@given(st.one_of(irs.masks(2), irs.score_mods(2)))
def test_format_node_lists_each_node_once(root: Node) -> None:
    assert len(format_node(root).splitlines()) == len(list(root.walk())) + 1
