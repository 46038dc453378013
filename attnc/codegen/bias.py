"""Score mods that add a bias affine in the positions: `score + alpha * kv + beta * q + gamma`, with alpha,
beta and gamma known per program (ALiBi's `score + slope[h] * (kv - q)`, linear relative biases).

Such a bias costs the forward's hot loop one add per score element instead of a score mod. With a key tile
starting at n and this program's query tile at q0, the bias of the pair (q0 + i, n + j) is

    alpha * j  +  [alpha * (n - q0) + (alpha + beta) * q0 + gamma]  +  beta * i
    per column      one value per tile                               per row

The per-column term is a vector computed once per program and added by the multiply-add that scales the
score; the per-tile value is added to the tile's row maximum (and subtracted with it in the exponent); the
per-row term moves every score of a row alike, so softmax ignores it, and the kernel adds it to the row's
statistics (lse, maximum) at the end. Positions are rebased on q0 so that no two large positions cancel:
near the diagonal every term is small.

The coefficients are read off the bias by finite differences, alpha = B(0, 1) - B(0, 0) and so on, which
are exact for the expressions accepted here (products of per-program values and small integers).
"""

from __future__ import annotations

import dataclasses

from attnc.codegen.skeleton import Emitter
from attnc.ir.dtypes import DType
from attnc.ir.int_range import fits_int32
from attnc.ir.node import Node, const, node, var
from attnc.ir.ops import Op
from attnc.ir.transpose import substitute

_POSITIONS = frozenset({"q", "kv"})
_Q, _KV = var("q"), var("kv")


@dataclasses.dataclass(frozen=True)
class AffineBias:
    """The coefficients of a bias `alpha * kv + beta * q + gamma` (float32 IR of b and h only)."""

    alpha: Node
    beta: Node
    gamma: Node


def affine_bias(score_mod: Node | None) -> AffineBias | None:
    """The affine bias of a score mod `score + B` (or `B + score`, `score - B`), None for any other mod."""
    bias = _added_bias(score_mod)
    if bias is None or not _affine(bias):
        return None
    zero, one = const(0, DType.int32), const(1, DType.int32)

    def at(q: Node, kv: Node) -> Node:
        return substitute(bias, {_Q: q, _KV: kv})

    origin = at(zero, zero)
    alpha = node(Op.SUB, DType.float32, at(zero, one), origin)
    beta = node(Op.SUB, DType.float32, at(one, zero), origin)
    return AffineBias(alpha, beta, origin)


def _added_bias(score_mod: Node | None) -> Node | None:
    if score_mod is None or score_mod.dtype is not DType.float32 or score_mod.op not in (Op.ADD, Op.SUB):
        return None
    a, b = score_mod.src
    if a.op is Op.SCORE and "score" not in b.deps:
        bias = b
    elif b.op is Op.SCORE and "score" not in a.deps and score_mod.op is Op.ADD:
        bias = a
    else:
        return None
    if bias.dtype is not DType.float32:
        bias = node(Op.CAST, DType.float32, bias)
    return node(Op.NEG, DType.float32, bias) if score_mod.op is Op.SUB else bias


def _affine(n: Node) -> bool:
    """Whether `n` is affine in q and kv with coefficients that do not depend on them, built only from
    operations that stay exact on the small integers the coefficients are read at."""
    if not n.deps & _POSITIONS:
        return True
    if n.op is Op.VAR:
        return True
    if n.op in (Op.ADD, Op.SUB):
        return all(_affine(s) for s in n.src)
    if n.op is Op.NEG:
        return _affine(n.src[0])
    if n.op is Op.MUL:
        a, b = n.src
        return (not a.deps & _POSITIONS and _affine(b)) or (not b.deps & _POSITIONS and _affine(a))
    if n.op is Op.CAST:
        # an integer position sum converted to float32 (exact below 2^24); the kernel evaluates it in float,
        # so it must not wrap around int32 where the mod (and the reference) would
        return (n.dtype is DType.float32 and n.src[0].dtype is DType.int32 and _affine(n.src[0])
                and fits_int32(n.src[0]))
    return False


def affine_bias_lines(bias: AffineBias | None) -> list[str]:
    """Lines computing `bias_alpha`, `bias_beta` and `bias_gamma` (once per program; none without a bias)."""
    if bias is None:
        return []
    block, (alpha, beta, gamma) = Emitter(prefix="a").emit_inline([bias.alpha, bias.beta, bias.gamma])
    return [*block, f"bias_alpha = {alpha}", f"bias_beta = {beta}", f"bias_gamma = {gamma}"]
