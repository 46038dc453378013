"""The IR interpreter: evaluates an expression on dense index grids with plain torch ops.

This is the definition of what every op means. Values broadcast like the grids they come from: a node
that depends only on `q` is a `[1, 1, Q, 1]` tensor, a constant is zero-dimensional. Everything is a
differentiable torch op, so gradients flow to the score and to captured float tensors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from attnc.ir.dtypes import DType
from attnc.ir.node import Node
from attnc.ir.ops import Op


@dataclasses.dataclass
class Env:
    """What an expression reads: index grids (int, broadcastable against each other), the scaled score
    (float32, `[B, H, Q, KV]`; None in masks), the captured tensors and the runtime parameters by slot.
    `float64=True` computes every float op in float64: the golden reference."""

    b: Tensor
    h: Tensor
    q: Tensor
    kv: Tensor
    score: Tensor | None = None
    tensors: Sequence[Tensor] = ()
    params: Sequence[int | float] = ()
    float64: bool = False
    # tile bounds, read only by tile-classification programs (attnc.ir.tiles)
    q_lo: Tensor | None = None
    q_hi: Tensor | None = None
    kv_lo: Tensor | None = None
    kv_hi: Tensor | None = None

    @property
    def device(self) -> torch.device:
        return self.q.device

    def dtype(self, dtype: DType) -> torch.dtype:
        """The torch dtype values of IR type `dtype` are computed in."""
        return torch.float64 if self.float64 and dtype.is_float else dtype.torch


def index_grids(
    B: int, H: int, Q_LEN: int, KV_LEN: int, device: torch.device | str | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """int32 grids of shapes [B,1,1,1], [1,H,1,1], [1,1,Q,1], [1,1,1,KV]."""
    def grid(n: int, dim: int) -> Tensor:
        shape = [1, 1, 1, 1]
        shape[dim] = n
        return torch.arange(n, dtype=torch.int32, device=device).view(shape)

    return grid(B, 0), grid(H, 1), grid(Q_LEN, 2), grid(KV_LEN, 3)


def evaluate(root: Node, env: Env) -> Tensor:
    """The value of `root` at every grid point, broadcastable to the grids' common shape.

    Each node of the DAG is computed once. Integer division or modulo by zero raises, as in PyTorch."""
    values: dict[Node, Tensor] = {}
    for n in root.walk():
        values[n] = _EVAL[n.op](n, [values[s] for s in n.src], env)
    return values[root]


# -- leaves ---------------------------------------------------------------------------------------

Evaluator = Callable[[Node, list[Tensor], Env], Tensor]


def _var(n: Node, args: list[Tensor], env: Env) -> Tensor:
    return getattr(env, n.arg).to(env.dtype(n.dtype))


def _score(n: Node, args: list[Tensor], env: Env) -> Tensor:
    if env.score is None:
        raise ValueError("this expression reads the score, but none was given (masks cannot read it)")
    return env.score.to(env.dtype(n.dtype))


def _const(n: Node, args: list[Tensor], env: Env) -> Tensor:
    return torch.tensor(n.arg, dtype=env.dtype(n.dtype), device=env.device)


def _param(n: Node, args: list[Tensor], env: Env) -> Tensor:
    return torch.tensor(env.params[n.arg], dtype=env.dtype(n.dtype), device=env.device)


def _load(n: Node, args: list[Tensor], env: Env) -> Tensor:
    # Every index is clamped into its dim, so reads at padded or masked-out positions stay in bounds.
    tensor = env.tensors[n.arg]
    index = tuple(i.clamp(0, size - 1).long() for i, size in zip(args, tensor.shape, strict=True))
    return tensor[index].to(env.dtype(n.dtype))


def _cast(n: Node, args: list[Tensor], env: Env) -> Tensor:
    return args[0].to(env.dtype(n.dtype))  # float -> int truncates; numeric -> bool is != 0


# -- computations ---------------------------------------------------------------------------------

_HALF = (torch.float16, torch.bfloat16)


def _math(fn: Callable[..., Tensor]) -> Evaluator:
    def apply(n: Node, args: list[Tensor], env: Env) -> Tensor:
        target = env.dtype(n.dtype)
        if target in _HALF:  # half arithmetic: computed in float32, rounded once (torch on CPU)
            args = [a.float() if a.is_floating_point() else a for a in args]
        return fn(*args).to(target)

    return apply


def _floordiv(a: Tensor, b: Tensor) -> Tensor:
    return torch.div(a, b, rounding_mode="floor")


_FUNCTIONS: dict[Op, Callable[..., Tensor]] = {
    Op.EXP: torch.exp, Op.EXP2: torch.exp2, Op.LOG: torch.log, Op.LOG2: torch.log2, Op.LOG1P: torch.log1p,
    Op.SQRT: torch.sqrt, Op.RSQRT: torch.rsqrt, Op.TANH: torch.tanh, Op.SIGMOID: torch.sigmoid,
    Op.SIN: torch.sin, Op.COS: torch.cos, Op.FLOOR: torch.floor, Op.CEIL: torch.ceil,
    Op.NEG: torch.neg, Op.ABS: torch.abs, Op.SIGN: torch.sign, Op.NOT: torch.logical_not,
    Op.ADD: torch.add, Op.SUB: torch.sub, Op.MUL: torch.mul, Op.TRUEDIV: torch.div,
    Op.FLOORDIV: _floordiv, Op.MOD: torch.remainder, Op.POW: torch.pow,
    Op.MIN: torch.minimum, Op.MAX: torch.maximum,
    # on bool tensors the bitwise ops are the logical ones
    Op.AND: torch.bitwise_and, Op.OR: torch.bitwise_or, Op.XOR: torch.bitwise_xor,
    Op.LT: torch.lt, Op.LE: torch.le, Op.GT: torch.gt, Op.GE: torch.ge, Op.EQ: torch.eq, Op.NE: torch.ne,
    Op.WHERE: torch.where,
    Op.ERF: torch.erf, Op.ATAN: torch.atan, Op.EXPM1: torch.expm1, Op.ROUND: torch.round,
    Op.FMOD: torch.fmod, Op.SHL: torch.bitwise_left_shift, Op.SHR: torch.bitwise_right_shift,
}

_EVAL: dict[Op, Evaluator] = {
    Op.VAR: _var, Op.SCORE: _score, Op.CONST: _const, Op.PARAM: _param, Op.LOAD: _load, Op.CAST: _cast,
    **{op: _math(fn) for op, fn in _FUNCTIONS.items()},
}
