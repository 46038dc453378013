"""Constant folding: an operation whose operands are all constants becomes a constant.

The value is computed by the interpreter on zero-dimensional tensors, so a folded constant is exactly
what evaluating the expression would have given (int32 wrap-around, half rounding, NaN and all).
Parameters and loads are runtime data and never fold.
"""

from __future__ import annotations

import torch

from attnc.ir.interpret import Env, evaluate
from attnc.ir.node import Node, const
from attnc.ir.ops import LEAVES, Op
from attnc.ir.rewrite import Pat, RuleSet, rewrite


def foldable(n: Node) -> bool:
    return n.op not in LEAVES and n.op is not Op.LOAD and all(s.op is Op.CONST for s in n.src)


def fold_node(n: Node) -> Node | None:
    """`n` as a constant, or None where evaluating it raises (integer division by zero, negative
    integer powers): those keep failing at run time, as in PyTorch."""
    zero = torch.zeros((), dtype=torch.int32)
    try:
        value = evaluate(n, Env(b=zero, h=zero, q=zero, kv=zero)).item()
    except RuntimeError:
        return None
    return const(value, n.dtype)


FOLD_RULES = RuleSet(
    (Pat(where=foldable, name="n"), fold_node),  # op(c1, c2, ...) -> c
)


def fold_constants(root: Node) -> Node:
    return rewrite(root, FOLD_RULES)
