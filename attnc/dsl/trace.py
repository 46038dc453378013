"""Tracing Python mods into IR.

    traced = trace(mask_mod, score_mod)        # once per variant
    bindings = traced.bind(mask_mod, score_mod)  # every call: current closure scalars and tensors

The mods run once on `Sym` values standing for (score, b, h, q_idx, kv_idx). Closure scalars become
PARAMs and captured tensors LOADs (see `attnc.dsl.captures`); torch operations on captured tensors are
recorded and recomputed at every bind (see `attnc.dsl.derived`). When Python code inside a mod needs the
concrete value of closure scalars (`if window > 0:`, `range(n)`), the trace is repeated with those
scalars as constants, and `bind` raises StaleTrace once their values change.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
from collections.abc import Callable
from types import CodeType
from typing import Any

import torch

from attnc.dsl.captures import Bindings, Captures, Recorder, Specialize
from attnc.dsl.closure import Path, Walk
from attnc.dsl.derived import TracingMode
from attnc.dsl.errors import StaleTrace, TraceError, location_of_code, wrap_exception
from attnc.dsl.semantics import Operand, Typed, describe, key, to_node
from attnc.dsl.symbolic import Sym
from attnc.ir.dtypes import SCORE, DType
from attnc.ir.node import Node, score, var
from attnc.ir.ops import INDEX_VARS
from attnc.ir.program import Program

__all__ = ["Bindings", "Captures", "StaleTrace", "TraceError", "Traced", "trace"]


@dataclasses.dataclass(frozen=True, eq=False)
class Traced:
    program: Program
    captures: Captures

    def bind(self, mask_mod: Callable | None, score_mod: Callable | None) -> Bindings:
        return self.captures.bind(mask_mod, score_mod)


def trace(mask_mod: Callable | None, score_mod: Callable | None) -> Traced:
    """Trace `mask_mod(b, h, q_idx, kv_idx)` and `score_mod(score, b, h, q_idx, kv_idx)` into one Program."""
    frozen: dict[Path, Any] = {}
    while True:
        try:
            return _trace_once(mask_mod, score_mod, frozen)
        except Specialize as need:
            # each round turns at least one more parameter into a constant, so this ends
            if need.values.keys() <= frozen.keys():
                raise RuntimeError(f"attnc: tracing asked twice to specialise on {list(need.values)}") from None
            frozen.update(need.values)


def _trace_once(mask_mod: Callable | None, score_mod: Callable | None, frozen: dict[Path, Any]) -> Traced:
    recorder = Recorder(frozen)
    walk = Walk(recorder.leaf)
    mask_fn, score_fn = walk.roots(mask_mod, score_mod)
    recorder.see_closure(walk.leaves)
    index = [Sym(Typed(var(name)), recorder) for name in INDEX_VARS]
    mask = score_root = None
    if mask_mod is not None:
        mask = _mask_root(_run(recorder, mask_fn, index, "mask_mod", mask_mod), mask_mod)
    if score_mod is not None:
        args = [Sym(Typed(score()), recorder), *index]
        score_root = to_node(_run(recorder, score_fn, args, "score_mod", score_mod), SCORE)
    program = Program(mask, score_root, tuple(recorder.tensor_specs), tuple(recorder.param_specs))
    return Traced(program, recorder.captures(walk.shape))


def _run(recorder: Recorder, fn: Callable, args: list[Sym], what: str, mod: Callable) -> Operand:
    """Call a rebuilt mod on traced values; its result as an operand."""
    mode = TracingMode(recorder.graph, lambda x: isinstance(x, Sym), Sym.__torch_function__)
    try:
        with mode:
            out = fn(*args)
    except TraceError:
        raise
    except Exception as exc:
        raise wrap_exception(exc, what) from None
    if not isinstance(out, Sym | torch.Tensor | numbers.Real):
        raise TraceError(
            f"{what} returned {'None' if out is None else 'a ' + type(out).__name__}, not a value",
            "return one expression, e.g. `return q_idx >= kv_idx`",
            location_of_code(_code_of(mod)),
        )
    if getattr(out, "is_many", False):  # a vector (attnc.dsl.vector): a mod returns one value per position
        raise TraceError(f"{what} returned a vector of {len(out)} elements, not a value",
                         "reduce it to one value, e.g. v.sum(), v.any(), torch.dot(a, b)",
                         location_of_code(_code_of(mod)))
    return recorder.lift(out)


def _mask_root(value: Operand, mod: Callable) -> Node:
    if key(value) not in (bool, DType.bool):
        raise TraceError(
            f"mask_mod must return a bool, but it returned {describe(value)}",
            "return a condition such as `q_idx >= kv_idx`; combine conditions with `&`, `|`, `~`",
            location_of_code(_code_of(mod)),
        )
    return to_node(value, DType.bool)


def _code_of(mod: Any) -> CodeType | None:
    """The code a mod runs, to point at its definition."""
    while isinstance(mod, functools.partial):
        mod = mod.func
    code = getattr(mod, "__code__", None)
    if code is None and callable(mod):
        code = getattr(type(mod).__call__, "__code__", None)
    return code
