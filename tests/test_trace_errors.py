"""Trace errors: each names the user's file and line, quotes it, and says what to write instead.

The messages are pinned. Each failing line carries a `# <-` marker naming the case, so the expected
location is found in this file rather than hard-coded.
"""

from __future__ import annotations

import linecache
from typing import Any

import pytest
import torch

from attnc.dsl import TraceError, trace
from attnc.dsl.torch_api import SUPPORTED
from attnc.variants.combinators import and_masks

BOOL = ("`if`, `and`, `or`, `not` and bool() need a concrete value, but this is a traced value",
        "use torch.where(cond, a, b) for values, `&`, `|`, `~` for conditions, "
        "torch.maximum / torch.minimum for max() / min()")
NUMBER_HINT = "use .to(torch.int32) or .to(torch.float32) to change the dtype of a traced value"
LOOP_HINT = "a mod sees one (b, h, q_idx, kv_idx) position at a time; write per-position logic with torch.where"
INDEX_HINT = ("e.g. bias[h, q_idx] or table[h, q_idx - kv_idx + 127]; slices, `...`, None, bool and list "
              "indices are not supported")
INDEX = "index every dimension of the captured tensor with an integer expression (the tensor has shape {}; found {})"
UNSUPPORTED_HINT = f"supported: {SUPPORTED}, the matching Tensor methods, and .to(dtype), .float(), .int(), ..."

TABLE = torch.arange(8)
GRID = torch.zeros(4, 8, dtype=torch.int32)
BIAS = torch.randn(4)


def line_of(case: str) -> int:
    """The line of this file marked `# <- case`."""
    with open(__file__) as source:
        for number, line in enumerate(source, start=1):
            if line.rstrip().endswith(f"# <- {case}"):
                return number
    raise LookupError(case)


def message(case: str, problem: str, hint: str = "") -> str:
    line = line_of(case)
    text = f"{__file__}:{line}: {problem}\n    {linecache.getline(__file__, line).strip()}"
    return f"{text}\n{hint}" if hint else text


def trace_error(mask_mod: Any = None, score_mod: Any = None) -> TraceError:
    with pytest.raises(TraceError) as info:
        trace(mask_mod, score_mod)
    return info.value


# -- Python control flow on traced values ----------------------------------------------------------


def test_if_on_a_traced_value():
    def mod(b, h, q_idx, kv_idx):
        if q_idx > kv_idx:  # <- if
            return kv_idx < 4
        return q_idx < 4

    assert str(trace_error(mod)) == message("if", *BOOL)


def test_and_between_conditions():
    error = trace_error(lambda b, h, q_idx, kv_idx: q_idx >= 0 and kv_idx >= 0)  # <- and
    assert str(error) == message("and", *BOOL)


def test_python_max_of_traced_values():
    error = trace_error(lambda b, h, q_idx, kv_idx: max(q_idx, kv_idx) > 3)  # <- max
    assert str(error) == message("max", *BOOL)


@pytest.mark.parametrize("case", ["int", "float", "item"])
def test_conversions_to_python_numbers(case):
    mods = {
        "int": lambda b, h, q_idx, kv_idx: int(q_idx) > 0,  # <- int
        "float": lambda b, h, q_idx, kv_idx: float(q_idx) > 0,  # <- float
        "item": lambda b, h, q_idx, kv_idx: q_idx.item() > 0,  # <- item
    }
    problem = {"int": "int()", "float": "float()", "item": ".item()"}[case]
    expected = message(case, f"{problem} needs a concrete number, but this is a traced value", NUMBER_HINT)
    assert str(trace_error(mods[case])) == expected


def test_loop_over_a_traced_value():
    def mod(b, h, q_idx, kv_idx):
        allowed = q_idx >= kv_idx
        for bit in q_idx:  # <- loop
            allowed = allowed & bit
        return allowed

    assert str(trace_error(mod)) == message("loop", "loops over traced values are not supported", LOOP_HINT)


def test_len_of_a_traced_value():
    error = trace_error(lambda b, h, q_idx, kv_idx: q_idx < len(kv_idx))  # <- len
    problem = "len() of a traced value is not supported: loops over traced values are not supported"
    assert str(error) == message("len", problem, LOOP_HINT)


def test_python_list_indexed_by_a_traced_value():
    sizes = [1, 2, 3]
    error = trace_error(lambda b, h, q_idx, kv_idx: q_idx < sizes[h])  # <- list
    problem = "a traced value cannot be used where Python needs a plain int (list or tuple index, range(), slice)"
    hint = "put the values in a captured torch tensor and index it, e.g. table[q_idx - kv_idx]"
    assert str(error) == message("list", problem, hint)


# -- unsupported torch functions and Tensor methods --------------------------------------------------------


def test_unsupported_torch_function_lists_what_is_supported():
    error = trace_error(score_mod=lambda score, b, h, q_idx, kv_idx: torch.lgamma(score))  # <- lgamma
    assert str(error) == message("lgamma", "torch.lgamma is not supported in attention mods", UNSUPPORTED_HINT)
    assert "torch.where" in SUPPORTED and "torch.tanh" in SUPPORTED and "torch.exp2" in SUPPORTED


def test_unsupported_tensor_method():
    error = trace_error(lambda b, h, q_idx, kv_idx: q_idx.view(1) > 0)  # <- view
    assert str(error) == message("view", "torch.Tensor.view is not supported in attention mods", UNSUPPORTED_HINT)


def test_reduction_form_of_torch_max():
    error = trace_error(lambda b, h, q_idx, kv_idx: torch.max(q_idx, 0) > 0)  # <- reduction
    problem = "torch.max over a dimension is not supported: traced values are scalars"
    assert str(error) == message("reduction", problem, "use torch.maximum(a, b) for the elementwise maximum")


def test_narrow_integer_conversion():
    error = trace_error(lambda b, h, q_idx, kv_idx: q_idx.to(torch.int8) > 0)  # <- int8
    problem = "converting to torch.int8 is not supported: attention mods compute with 32- and 64-bit integers"
    assert str(error) == message("int8", problem, "use .to(torch.int32)")


# -- indexing captured tensors -------------------------------------------------------------------------


@pytest.mark.parametrize(("case", "found"), [
    ("ellipsis", "the index Ellipsis"), ("none", "the index None"), ("bool", "a bool index"),
    ("list", "a list index"),
    ("float", "a float32 index (use // or .to(torch.int32))"),
])
def test_index_every_dimension_with_an_integer_expression(case, found):
    mods = {
        "ellipsis": lambda b, h, q_idx, kv_idx: GRID[..., q_idx] > 0,  # <- index_ellipsis
        "none": lambda b, h, q_idx, kv_idx: GRID[None, q_idx] > 0,  # <- index_none
        "bool": lambda b, h, q_idx, kv_idx: GRID[True, q_idx] > 0,  # <- index_bool
        "list": lambda b, h, q_idx, kv_idx: GRID[[h], q_idx] > 0,  # <- index_list
        "float": lambda b, h, q_idx, kv_idx: GRID[h, q_idx / 2] > 0,  # <- index_float
    }
    expected = message(f"index_{case}", INDEX.format([4, 8], found), INDEX_HINT)
    assert str(trace_error(mods[case])) == expected


def test_slice_of_a_captured_tensor():
    error = trace_error(lambda b, h, q_idx, kv_idx: TABLE[q_idx:].sum() > 0)  # <- slice
    assert "a traced value cannot be used where Python needs a plain int" in str(error)
    assert error.location is not None and error.location.lineno == line_of("slice")


def test_negative_constant_index():
    error = trace_error(lambda b, h, q_idx, kv_idx: GRID[-1, q_idx] > 0)  # <- negative
    hint = "indices are clamped into range, not wrapped: write the position"
    assert str(error) == message("negative", "negative index -1 into a captured tensor", hint)


def test_whole_tensor_used_as_a_value():
    error = trace_error(score_mod=lambda score, b, h, q_idx, kv_idx: score + BIAS)  # <- whole
    problem = "a tensor of shape [4] is used as a value, but mods compute scalars"
    assert str(error) == message("whole", problem, "index it with expressions of the indices, e.g. bias[h, q_idx]")


# -- dtype rules PyTorch enforces ----------------------------------------------------------------------


def test_negating_a_condition():
    error = trace_error(score_mod=lambda score, b, h, q_idx, kv_idx: score * -(q_idx > kv_idx))  # <- negate
    hint = "use `~` to invert a condition, or convert with .to(torch.int32) first"
    assert str(error) == message("negate", "`-` on a bool value is not supported (as in PyTorch)", hint)


def test_subtracting_conditions_through_a_real_tensor():
    # the real tensor on the left sends the operation through torch's Tensor.sub first
    error = trace_error(lambda b, h, q_idx, kv_idx: torch.tensor(True) - (q_idx > kv_idx))  # <- sub
    hint = "combine conditions with `&`, `|`, `^`, `~`, or convert with .to(torch.int32) first"
    assert str(error) == message("sub", "`-` on two bool values is not supported (as in PyTorch)", hint)


def test_bit_operations_on_floats():
    error = trace_error(score_mod=lambda score, b, h, q_idx, kv_idx: score & 1)  # <- and_float
    hint = "compare first (e.g. `x > 0`), or convert with .to(torch.int32)"
    assert str(error) == message("and_float", "`&` needs bool or integer operands, not float32", hint)
    error = trace_error(score_mod=lambda score, b, h, q_idx, kv_idx: ~score)  # <- invert_float
    hint = "use `~` on conditions such as `~(q_idx < 8)`"
    assert str(error) == message("invert_float", "`~` needs a bool or integer value, not float32", hint)


def test_where_needs_a_bool_condition():
    error = trace_error(score_mod=lambda score, b, h, q_idx, kv_idx: torch.where(h, score, 0.0))  # <- where
    hint = "compare it first, e.g. torch.where(x != 0, a, b)"
    assert str(error) == message("where", "torch.where needs a bool condition, not int32", hint)


def test_constant_out_of_range_and_negative_powers():
    error = trace_error(lambda b, h, q_idx, kv_idx: q_idx + 2**40 > kv_idx)  # <- big
    hint = "use a smaller constant, or convert the other operand with .to(torch.int64)"
    assert str(error) == message("big", "the constant 1099511627776 does not fit in int32", hint)
    error = trace_error(score_mod=lambda score, b, h, q_idx, kv_idx: score * q_idx ** -1)  # <- power
    problem = "integers to negative integer powers are not allowed (as in PyTorch)"
    assert str(error) == message("power", problem, "use a float exponent, e.g. x ** -1.0")


# -- what mods return ------------------------------------------------------------------------------------


def test_mask_mod_must_return_a_bool():
    def distance(b, h, q_idx, kv_idx):  # <- returns_int
        return q_idx - kv_idx

    hint = "return a condition such as `q_idx >= kv_idx`; combine conditions with `&`, `|`, `~`"
    expected = message("returns_int", "mask_mod must return a bool, but it returned int32", hint)
    assert str(trace_error(distance)) == expected


def test_mod_returning_nothing():
    def forgot(score, b, h, q_idx, kv_idx):  # <- returns_none
        score * 2

    hint = "return one expression, e.g. `return q_idx >= kv_idx`"
    expected = message("returns_none", "score_mod returned None, not a value", hint)
    assert str(trace_error(score_mod=forgot)) == expected


# -- anything else a mod raises --------------------------------------------------------------------------


def _helper(position: Any) -> Any:
    raise ValueError(f"bad position {type(position).__name__}")  # <- helper


def test_other_exceptions_are_wrapped_at_the_innermost_user_line():
    error = trace_error(lambda b, h, q_idx, kv_idx: _helper(q_idx))
    expected = message("helper", "calling mask_mod on traced values raised ValueError: bad position Sym")
    assert str(error) == expected
    assert error.__cause__ is None and error.__suppress_context__  # no chained torch or attnc traceback


def test_unknown_attribute():
    error = trace_error(lambda b, h, q_idx, kv_idx: q_idx.shape_of_things > 0)  # <- attribute
    problem = "calling mask_mod on traced values raised AttributeError: traced values have no attribute " \
              "'shape_of_things'"
    assert str(error) == message("attribute", problem)


def test_errors_inside_combined_mods_point_at_the_inner_mod():
    def user_mod(b, h, q_idx, kv_idx):
        return q_idx if q_idx > kv_idx else kv_idx  # <- combined

    error = trace_error(and_masks(lambda b, h, q_idx, kv_idx: q_idx >= 0, user_mod))
    assert str(error) == message("combined", *BOOL)
