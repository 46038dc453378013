"""The attnc IR: interned expression nodes over per-(b, h, q, kv) scalars, passes, and the reference
interpreter that defines what a variant means."""

from attnc.ir.dtypes import DType, promote
from attnc.ir.node import Node, const, from_repr, load, node, param, score, var
from attnc.ir.ops import Op
from attnc.ir.program import ParamSpec, Program, TensorSpec

__all__ = [
    "DType", "Node", "Op", "ParamSpec", "Program", "TensorSpec",
    "const", "from_repr", "load", "node", "param", "promote", "score", "var",
]
