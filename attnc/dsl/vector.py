"""Reads that leave dimensions of a captured tensor unindexed: chained indexing and small vectors.

`bias[b][h][q_idx]` indexes one dimension at a time: every `[...]` but the last gives a `Partial` read,
which means what `bias[b, h, q_idx]` means once every dimension is indexed. A read that leaves only the
last dimension, of at most `MAX_LENGTH` elements (`q_pe[b, h, q_idx]`), is also a vector: elementwise
operations on it (with numbers, traced values, other vectors or 1-d captured tensors of its length) give a
`Vector`, and a reduction gives a traced scalar again: `sum`, `mean`, `prod`, `dot` / `inner` / `@`, `any`,
`all`, `amax` / `max()`, `amin` / `min()`. This is how DeepSeek's MLA adds its decoupled RoPE term,
`torch.dot(q_pe[b, h, q_idx], k_pe[b, 0, kv_idx])`.

Vectors exist only while a mod is traced: each one is a tuple of traced scalars, one read per element,
so the IR, the kernels and the gradients (which reach every captured tensor read) stay per-(b, h, q, kv)
scalars. A reduction adds its elements as a balanced tree.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import torch
import torch.utils._pytree as pytree

from attnc.dsl.errors import TraceError
from attnc.dsl.symbolic import Sym

MAX_LENGTH = 256
_REDUCE_HINT = "reduce it to one value first, e.g. v.sum(), torch.dot(a, b), v.any(), v.amax(), or index it, v[0]"


class Many(Sym):
    """A traced vector: what `Vector` and a one-dimension-short `Partial` read have in common."""

    __slots__ = ()
    is_many = True  # looked up (by name) by Sym.__torch_function__, which cannot import this module

    def elements(self) -> tuple[Sym, ...]:
        raise NotImplementedError

    @property
    def typed(self) -> NoReturn:
        raise TraceError.here(f"a vector of {len(self.elements())} elements is used as a single value",
                              _REDUCE_HINT)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self.elements())} elements)"

    @property
    def shape(self) -> torch.Size:  # type: ignore[override]
        return torch.Size([len(self.elements())])

    @property
    def ndim(self) -> int:  # type: ignore[override]
        return 1

    @property
    def dtype(self) -> torch.dtype:  # type: ignore[override]
        return self.elements()[0].dtype

    def __len__(self) -> int:  # type: ignore[override]
        return len(self.elements())

    def __iter__(self):  # type: ignore[override]
        return iter(self.elements())

    def __getitem__(self, index: object) -> Sym:  # type: ignore[override]
        if isinstance(index, slice):
            return Vector(self.elements()[index], self.tracer)
        if isinstance(index, int) and not isinstance(index, bool):
            return self.elements()[index]
        raise TraceError.here("a vector is indexed by a Python int or slice here",
                              "index the captured tensor itself with every dimension, e.g. t[b, h, q_idx, d]")

    def dispatch(self, func: Callable, args: tuple, kwargs: dict) -> Sym:
        """A torch function with a vector among its arguments: a reduction, or elementwise."""
        reduction = REDUCTIONS.get(func)
        if reduction is not None:
            return reduction(*args, **kwargs)
        if func is torch.Tensor.__getitem__:
            raise TraceError.here("a vector cannot index a tensor", "index with one traced value per dimension")
        return elementwise(func, args, kwargs, self.tracer)


def _elements_of(x: object, length: int, tracer: Any) -> Sequence[object] | None:
    """`x` as `length` elements: a vector's own, a 1-d captured tensor's reads, or None for a scalar."""
    if isinstance(x, Many):
        items = x.elements()
    elif isinstance(x, torch.Tensor) and math.prod(tracer.read_shape(x)) > 1:
        if x.ndim != 1:
            raise TraceError.here(f"a tensor of shape {list(x.shape)} meets a vector of {length} elements",
                                  "only 1-d tensors of the vector's length combine with it elementwise")
        items = tuple(Sym(tracer.load(x, (i,)), tracer) for i in range(tracer.read_shape(x)[0]))
    else:
        return None
    if len(items) != length:
        raise TraceError.here(f"vectors of {len(items)} and {length} elements are combined",
                              "combine vectors of the same length")
    return items


def _length(args: tuple, kwargs: dict) -> int:
    return next(len(x.elements()) for x in pytree.tree_leaves((args, kwargs)) if isinstance(x, Many))


def elementwise(func: Callable, args: tuple, kwargs: dict, tracer: Any) -> Vector:
    """`func` applied element by element; scalars broadcast."""
    n = _length(args, kwargs)
    leaves, spec = pytree.tree_flatten((args, kwargs))
    per_leaf = [_elements_of(x, n, tracer) for x in leaves]
    out = []
    for i in range(n):
        row = [x if items is None else items[i] for x, items in zip(leaves, per_leaf, strict=True)]
        a, k = pytree.tree_unflatten(row, spec)
        out.append(Sym.__torch_function__(func, (Sym,), a, k))
    return Vector(out, tracer)


class Vector(Many):
    """The result of elementwise operations on vectors."""

    __slots__ = ("_elements",)

    def __init__(self, elements: Sequence[Sym], tracer: Any) -> None:
        super().__init__(None, tracer)
        self._elements = tuple(elements)

    def elements(self) -> tuple[Sym, ...]:
        return self._elements


class Partial(Many):
    """`tensor[prefix]` with dimensions left: indexable further; a vector when one dimension is left."""

    __slots__ = ("_cached", "prefix", "tensor")

    def __init__(self, tensor: torch.Tensor, prefix: tuple, tracer: Any) -> None:
        super().__init__(None, tracer)
        self.tensor = tensor
        self.prefix = prefix
        self._cached: tuple[Sym, ...] | None = None

    def __getitem__(self, index: object) -> Sym:  # type: ignore[override]
        items = index if isinstance(index, tuple) else (index,)
        if isinstance(index, slice):
            return super().__getitem__(index)
        return read(self.tracer, self.tensor, (*self.prefix, *items))

    def elements(self) -> tuple[Sym, ...]:
        if self._cached is None:
            self._cached = self._read_elements()
        return self._cached

    def _read_elements(self) -> tuple[Sym, ...]:
        left = self.tensor.ndim - len(self.prefix)
        if left != 1:
            raise TraceError.here(
                f"this read of a tensor of shape {list(self.tensor.shape)} leaves {left} dimensions unindexed",
                "index every dimension, or all but the last to get a vector, e.g. t[b, h, q_idx]")
        n = self.tracer.read_shape(self.tensor)[-1]
        if n > MAX_LENGTH:
            raise TraceError.here(f"a vector of {n} elements is read; vectors of at most {MAX_LENGTH} are supported",
                                  "index the last dimension too")
        return tuple(Sym(self.tracer.load(self.tensor, (*self.prefix, i)), self.tracer) for i in range(n))


def read(tracer: Any, tensor: torch.Tensor, items: tuple) -> Sym:
    """`tensor[items]`: a traced scalar when every dimension is indexed, else a `Partial` read."""
    if len(items) < tensor.ndim and not any(item is None or item is Ellipsis for item in items):
        return Partial(tensor, items, tracer)
    return Sym(tracer.load(tensor, items), tracer)


# -- reductions ---------------------------------------------------------------------------------------


def _tree(combine: Callable[[Sym, Sym], Sym], values: Sequence[Sym]) -> Sym:
    """Pairwise reduction: depth log2(n), and the rounding of a balanced sum."""
    values = list(values)
    while len(values) > 1:
        pairs = [combine(values[i], values[i + 1]) for i in range(0, len(values) - 1, 2)]
        values = pairs + ([values[-1]] if len(values) % 2 else [])
    return values[0]


def _vector(x: object) -> Many:
    if not isinstance(x, Many):
        raise TraceError.here("this reduction needs a vector (a read that leaves the last dimension unindexed)")
    return x


def _check_dim(dim: object, keepdim: bool) -> None:
    dims = dim if isinstance(dim, tuple | list) else (dim,)
    if dim is not None and any(d not in (0, -1) for d in dims):
        raise TraceError.here(f"a vector has one dimension; dim={dim!r} does not exist", "use dim=-1 or no dim")
    if keepdim:
        raise TraceError.here("keepdim=True keeps a dimension of size 1, which mods do not have", "drop keepdim")


def _integer_sum(values: Sequence[Sym], dtype: torch.dtype | None) -> Sequence[Sym]:
    """torch.sum of integers and bools is int64 (unless a dtype is given)."""
    target = dtype if dtype is not None else torch.int64 if not values[0].dtype.is_floating_point else None
    return values if target is None else [v.to(target) for v in values]


def _sum(input: object, dim: object = None, keepdim: bool = False, *, dtype: torch.dtype | None = None) -> Sym:
    _check_dim(dim, keepdim)
    return _tree(lambda a, b: a + b, _integer_sum(_vector(input).elements(), dtype))


def _mean(input: object, dim: object = None, keepdim: bool = False, *, dtype: torch.dtype | None = None) -> Sym:
    values = _vector(input).elements()
    return _sum(input, dim, keepdim, dtype=dtype) / len(values)


def _prod(input: object, dim: object = None, keepdim: bool = False, *, dtype: torch.dtype | None = None) -> Sym:
    _check_dim(dim, keepdim)
    return _tree(lambda a, b: a * b, _integer_sum(_vector(input).elements(), dtype))


def _dot(input: object, other: object) -> Sym:
    """Of two vectors, or of a vector and a 1-d captured tensor (read element by element)."""
    many = _vector(input if isinstance(input, Many) else other)
    a, b = (_elements_of(x, len(many.elements()), many.tracer) if not isinstance(x, Many) else x.elements()
            for x in (input, other))
    if a is None or b is None:
        raise TraceError.here("torch.dot needs two vectors", "e.g. torch.dot(q_pe[b, h, q_idx], k_pe[b, 0, kv_idx])")
    if len(a) != len(b):
        raise TraceError.here(f"torch.dot of vectors of {len(a)} and {len(b)} elements",
                              "both vectors need the same length")
    return _tree(lambda x, y: x + y, [x * y for x, y in zip(a, b, strict=True)])


def _vecdot(x: object, y: object, *, dim: int = -1) -> Sym:
    _check_dim(dim, False)
    return _dot(x, y)


def _boolean(combine: Callable[[Sym, Sym], Sym]) -> Callable[..., Sym]:
    def reduce(input: object, dim: object = None, keepdim: bool = False) -> Sym:
        _check_dim(dim, keepdim)
        return _tree(combine, [v != 0 for v in _vector(input).elements()])

    return reduce


def _extreme(fn: Callable[[Any, Any], Sym], name: str) -> Callable[..., Sym]:
    def reduce(input: object, dim: object = None, keepdim: bool = False) -> Sym:
        if isinstance(dim, Sym | torch.Tensor):  # torch.max(a, b): the elementwise maximum
            return elementwise(fn, (input, dim), {}, _vector(input if isinstance(input, Many) else dim).tracer)
        if dim is not None and name in ("max", "min"):
            raise TraceError.here(f".{name}(dim) returns values and indices, which mods do not have",
                                  f"use .a{name}(-1) or .{name}() for the value")
        _check_dim(dim, keepdim)
        return _tree(fn, _vector(input).elements())

    return reduce


def _reductions() -> dict[Callable, Callable[..., Sym]]:
    table: dict[Callable, Callable[..., Sym]] = {}
    by_name = {
        "sum": _sum, "mean": _mean, "prod": _prod, "dot": _dot, "inner": _dot, "matmul": _dot,
        "any": _boolean(lambda a, b: a | b), "all": _boolean(lambda a, b: a & b),
        "amax": _extreme(torch.maximum, "amax"), "amin": _extreme(torch.minimum, "amin"),
        "max": _extreme(torch.maximum, "max"), "min": _extreme(torch.minimum, "min"),
    }
    for name, reduction in by_name.items():
        for owner in (torch, torch.Tensor):
            table[getattr(owner, name)] = reduction
    table[torch.linalg.vecdot] = _vecdot
    table[torch.Tensor.__matmul__] = _dot
    table[torch.Tensor.__rmatmul__] = lambda input, other: _dot(other, input)
    return table


REDUCTIONS = _reductions()


# -- operators on vectors: elementwise, through the torch function each one is --------------------------


def _operator(func: Callable, *, reflected: bool = False) -> Callable[..., Sym]:
    def method(self: Many, *other: object) -> Sym:
        args = (other[0], self) if reflected else (self, *other)
        return self.dispatch(func, args, {})

    return method


_BINARY = {
    "add": torch.add, "sub": torch.sub, "mul": torch.mul, "truediv": torch.true_divide,
    "floordiv": torch.floor_divide, "mod": torch.remainder, "pow": torch.pow, "and": torch.bitwise_and,
    "or": torch.bitwise_or, "xor": torch.bitwise_xor, "lshift": torch.bitwise_left_shift,
    "rshift": torch.bitwise_right_shift,
}
for _name, _func in _BINARY.items():
    setattr(Many, f"__{_name}__", _operator(_func))
    setattr(Many, f"__r{_name}__", _operator(_func, reflected=True))
for _name, _func in {"lt": torch.lt, "le": torch.le, "gt": torch.gt, "ge": torch.ge, "eq": torch.eq,
                     "ne": torch.ne}.items():
    setattr(Many, f"__{_name}__", _operator(_func))
for _name, _func in {"neg": torch.neg, "abs": torch.abs, "invert": torch.bitwise_not}.items():
    setattr(Many, f"__{_name}__", _operator(_func))
Many.__pos__ = lambda self: self  # type: ignore[method-assign]
Many.__matmul__ = lambda self, other: _dot(self, other)  # type: ignore[attr-defined]
Many.__rmatmul__ = lambda self, other: _dot(other, self)  # type: ignore[attr-defined]
Many.__hash__ = object.__hash__  # type: ignore[method-assign]

__all__ = ["MAX_LENGTH", "REDUCTIONS", "Many", "Partial", "Vector", "read"]
