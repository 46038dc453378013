"""Scalar dtypes of IR values and PyTorch-faithful type promotion.

Every IR value is a per-(b, h, q, kv) scalar, so its type is a scalar dtype. Promotion is delegated to
torch itself (on zero-dim tensors and Python scalars) so that `score + bias[h]` gets exactly the dtype
PyTorch would give it.
"""

from __future__ import annotations

import enum

import torch


class DType(enum.Enum):
    bool = "bool"
    int32 = "int32"
    int64 = "int64"
    float16 = "float16"
    bfloat16 = "bfloat16"
    float32 = "float32"
    float64 = "float64"

    def __repr__(self) -> str:
        return f"DType.{self.name}"

    @property
    def torch(self) -> torch.dtype:
        return getattr(torch, self.value)

    @property
    def is_float(self) -> bool:
        return self in FLOATS

    @property
    def is_int(self) -> bool:
        return self in (DType.int32, DType.int64)

    @property
    def is_bool(self) -> bool:
        return self is DType.bool

    @property
    def is_half(self) -> bool:
        """16-bit floats: arithmetic on them is done in float32 and rounded, as PyTorch does on CPU."""
        return self in (DType.float16, DType.bfloat16)

    @staticmethod
    def from_torch(dtype: torch.dtype) -> DType:
        try:
            return _FROM_TORCH[dtype]
        except KeyError:
            raise TypeError(f"attnc: dtype {dtype} is not supported in attention mods") from None


FLOATS = frozenset({DType.float16, DType.bfloat16, DType.float32, DType.float64})
_FROM_TORCH = {d.torch: d for d in DType}
# torch.int16/uint8 etc. are read by promoting to int32 at load time.
_FROM_TORCH.update({torch.int8: DType.int32, torch.int16: DType.int32, torch.uint8: DType.int32})

# The dtypes the index variables and the raw score have, as in FlexAttention.
INDEX = DType.int32
SCORE = DType.float32


def _example(dtype: DType | type) -> torch.Tensor | bool | int | float:
    """A value torch can promote: a zero-dim tensor for IR dtypes, a Python scalar for weak types."""
    if isinstance(dtype, DType):
        return torch.zeros((), dtype=dtype.torch)
    return dtype(1)


def promote(*dtypes: DType | type) -> DType:
    """Result dtype of an elementwise op, with PyTorch semantics.

    `dtypes` are IR dtypes (strong: zero-dim tensors) or Python types `bool`/`int`/`float` (weak: Python
    scalars, which only raise the category, never the width).
    """
    result = _example(dtypes[0])
    for d in dtypes[1:]:
        result = torch.zeros((), dtype=torch.result_type(result, _example(d)))
    if not isinstance(result, torch.Tensor):
        raise TypeError("promote needs at least one IR dtype")
    return DType.from_torch(result.dtype)
