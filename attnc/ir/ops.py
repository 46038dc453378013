"""The IR's operations, grouped by how they type-check and render."""

from __future__ import annotations

import enum


class Op(enum.Enum):
    # leaves
    VAR = enum.auto()  # arg: "b" | "h" | "q" | "kv"; int32
    SCORE = enum.auto()  # the raw (scaled) score q.k; float32; only in score mods
    CONST = enum.auto()  # arg: Python bool/int/float
    PARAM = enum.auto()  # arg: slot; a runtime scalar captured from a Python closure
    LOAD = enum.auto()  # arg: slot of the captured tensor; src: one index per tensor dim
    # unary math (float in, same float out)
    EXP = enum.auto()
    EXP2 = enum.auto()
    LOG = enum.auto()
    LOG2 = enum.auto()
    LOG1P = enum.auto()
    SQRT = enum.auto()
    RSQRT = enum.auto()
    TANH = enum.auto()
    SIGMOID = enum.auto()
    SIN = enum.auto()
    COS = enum.auto()
    FLOOR = enum.auto()
    CEIL = enum.auto()
    ERF = enum.auto()
    ATAN = enum.auto()
    EXPM1 = enum.auto()  # exp(x) - 1, exact near 0
    ROUND = enum.auto()  # to the nearest integer, ties to even (torch.round)
    # unary, any numeric dtype
    NEG = enum.auto()
    ABS = enum.auto()
    SIGN = enum.auto()
    # unary logic
    NOT = enum.auto()
    CAST = enum.auto()  # to the node's dtype
    # binary arithmetic; operands already have the node's dtype (the tracer inserts casts)
    ADD = enum.auto()
    SUB = enum.auto()
    MUL = enum.auto()
    TRUEDIV = enum.auto()
    FLOORDIV = enum.auto()  # Python floor semantics
    MOD = enum.auto()  # Python semantics: the sign of the divisor
    POW = enum.auto()
    MIN = enum.auto()
    MAX = enum.auto()
    FMOD = enum.auto()  # C semantics: the sign of the dividend (torch.fmod)
    # integer shifts; a count outside [0, bits) gives 0 (<<) or the sign fill (>>), as torch
    SHL = enum.auto()
    SHR = enum.auto()
    # binary logic on bool (bitwise on ints)
    AND = enum.auto()
    OR = enum.auto()
    XOR = enum.auto()
    # comparisons: operands share a dtype, result bool
    LT = enum.auto()
    LE = enum.auto()
    GT = enum.auto()
    GE = enum.auto()
    EQ = enum.auto()
    NE = enum.auto()
    # select: src = (cond, if_true, if_false)
    WHERE = enum.auto()

    def __repr__(self) -> str:
        return f"Op.{self.name}"


LEAVES = frozenset({Op.VAR, Op.SCORE, Op.CONST, Op.PARAM})
FLOAT_UNARY = frozenset(
    {Op.EXP, Op.EXP2, Op.LOG, Op.LOG2, Op.LOG1P, Op.SQRT, Op.RSQRT, Op.TANH, Op.SIGMOID, Op.SIN, Op.COS,
     Op.FLOOR, Op.CEIL, Op.ERF, Op.ATAN, Op.EXPM1, Op.ROUND}
)
NUMERIC_UNARY = frozenset({Op.NEG, Op.ABS, Op.SIGN})
UNARY = FLOAT_UNARY | NUMERIC_UNARY | {Op.NOT, Op.CAST}
ARITH = frozenset({Op.ADD, Op.SUB, Op.MUL, Op.TRUEDIV, Op.FLOORDIV, Op.MOD, Op.POW, Op.MIN, Op.MAX, Op.FMOD})
LOGIC = frozenset({Op.AND, Op.OR, Op.XOR})
SHIFT = frozenset({Op.SHL, Op.SHR})  # integer operands of the node's dtype
COMPARE = frozenset({Op.LT, Op.LE, Op.GT, Op.GE, Op.EQ, Op.NE})
BINARY = ARITH | LOGIC | SHIFT | COMPARE
# integer division and remainders: a zero divisor is an error (attnc.ir.divisors)
INT_DIVISIONS = frozenset({Op.FLOORDIV, Op.MOD, Op.FMOD})
COMMUTATIVE = frozenset({Op.ADD, Op.MUL, Op.MIN, Op.MAX, Op.AND, Op.OR, Op.XOR, Op.EQ, Op.NE})
# a < b  <=>  b > a: used to put comparisons in canonical operand order
MIRROR = {Op.LT: Op.GT, Op.GT: Op.LT, Op.LE: Op.GE, Op.GE: Op.LE, Op.EQ: Op.EQ, Op.NE: Op.NE}
NEGATE = {Op.LT: Op.GE, Op.GE: Op.LT, Op.GT: Op.LE, Op.LE: Op.GT, Op.EQ: Op.NE, Op.NE: Op.EQ}

INDEX_VARS = ("b", "h", "q", "kv")
# Bounds (inclusive) of a tile box [q_lo, q_hi] x [kv_lo, kv_hi], the variables of tile-classification
# programs (attnc.ir.tiles); each depends on the index it bounds.
TILE_VARS = {"q_lo": "q", "q_hi": "q", "kv_lo": "kv", "kv_hi": "kv"}
