"""What a mod captures from Python closures, found by walking the functions it is built from.

A mod is often a closure over other closures: `and_masks(causal, sliding_window(64))` closes over a
tuple of mods, one of which closes over `window = 64`. `Walk` visits that tree (closure cells,
default arguments, `functools.partial` parts, tuples and lists, and the module globals the code reads)
and names every value by its *path* from the root mod. When tracing, it rebuilds the functions with each
captured Python int or float replaced (so the scalar becomes a runtime parameter); when binding, it only
reads the current values. Global scalars stay constants: a function's globals are its module's.

`Walk.shape` describes the tree (function code, container lengths, value kinds, aliasing): when it
changes, a trace made from the old tree no longer describes the mods.
"""

from __future__ import annotations

import dataclasses
import functools
import types
from collections.abc import Callable, Generator
from typing import Any

import torch

Step = tuple[str, Any]  # ("cell", i) | ("default", i) | ("kwdefault", name) | ("func", None) | ...
Path = tuple[Any, ...]  # the root ("mask" or "score") followed by steps
ShapeEntry = tuple[Path, tuple[str, ...], tuple]  # path, names along the path, descriptor
_MAX_ITEMS = 64  # longer tuples and lists are data, not mods: not walked
# A visit in progress: yields (object, path, names) to have a child visited, is sent the child's replacement,
# and returns its own.
Visit = Generator[tuple[Any, Path, tuple[str, ...]], Any, Any]


@dataclasses.dataclass(frozen=True)
class Leaf:
    """A captured Python scalar or tensor and where it was found."""

    path: Path
    names: tuple[str, ...]
    value: Any

    @property
    def name(self) -> str:
        """The variable's own name: `window`, or `sizes[0]` for an element of a captured tuple."""
        own = ""
        for part in reversed(self.names):
            own = part + own
            if not part.startswith(("[", ".")):
                break
        return own

    @property
    def display(self) -> str:
        return display(self.names)


def display(names: tuple[str, ...]) -> str:
    """`mask_mod.mask_mods[1].window`."""
    return "".join(n if n.startswith(("[", ".")) or i == 0 else "." + n for i, n in enumerate(names))


@dataclasses.dataclass(frozen=True)
class _Child:
    step: Step
    name: str
    value: Any
    kind: str = "value"  # "cell": value is a closure cell; "global": a module global the code reads


@dataclasses.dataclass(frozen=True)
class _Parts:
    """How to look inside a container and how to put a copy back together."""

    descriptor: tuple
    children: list[_Child]
    rebuild: Callable[[list[Any]], Any]


class Walk:
    """One pass over the closure trees of a mask mod and a score mod.

    `replace(leaf)` gives the value to put in place of each captured Python int/float while rebuilding;
    without it the walk only records `shape` and `leaves`.
    """

    def __init__(self, replace: Callable[[Leaf], Any] | None = None) -> None:
        self.shape: list[ShapeEntry] = []
        self.leaves: dict[Path, Leaf] = {}
        self._replace = replace
        self._memo: dict[int, list[Any]] = {}  # id -> [first path, original, replacement]
        self._tensor_paths: dict[int, Path] = {}

    def roots(self, mask_mod: Any, score_mod: Any) -> tuple[Any, Any]:
        return (self.visit(mask_mod, ("mask",), ("mask_mod",)),
                self.visit(score_mod, ("score",), ("score_mod",)))

    def visit(self, obj: Any, path: Path, names: tuple[str, ...]) -> Any:
        """The value to put in place of `obj`. Iterative: each container's visit is a generator that yields
        the children it needs visited, so mods nested hundreds deep (`m1 & m2 & ... & m300`) do not hit
        Python's recursion limit."""
        stack = [self._visit(obj, path, names)]
        result = None
        while stack:
            try:
                request = stack[-1].send(result)
            except StopIteration as done:
                stack.pop()
                result = done.value
                continue
            stack.append(self._visit(*request))
            result = None
        return result

    def _visit(self, obj: Any, path: Path, names: tuple[str, ...]) -> Visit:
        if type(obj) in (int, float):  # not bool, not numpy scalars: those are not runtime parameters
            return self._scalar(obj, path, names)
        if isinstance(obj, torch.Tensor):
            return self._tensor(obj, path, names)
        if obj is None or isinstance(obj, bool | str | bytes):
            # not runtime parameters: Python code may branch on them, so a change means a new trace
            self._record(path, names, ("value", type(obj), obj))
            return obj
        parts = _parts(obj)
        if parts is None:
            self._record(path, names, ("object", type(obj), _tensor_attributes(obj)))
            return obj
        return (yield from self._container(obj, path, names, parts))

    def _record(self, path: Path, names: tuple[str, ...], descriptor: tuple) -> None:
        self.shape.append((path, names, descriptor))

    def _scalar(self, value: int | float, path: Path, names: tuple[str, ...]) -> Any:
        leaf = Leaf(path, names, value)
        self.leaves[path] = leaf
        self._record(path, names, (type(value).__name__,))
        return value if self._replace is None else self._replace(leaf)

    def _tensor(self, tensor: torch.Tensor, path: Path, names: tuple[str, ...]) -> torch.Tensor:
        self.leaves[path] = Leaf(path, names, tensor)
        first = self._tensor_paths.setdefault(id(tensor), path)
        self._record(path, names, ("tensor", None if first == path else first))
        return tensor

    def _seen(self, obj: Any, path: Path, names: tuple[str, ...]) -> list[Any] | None:
        """The memo entry of an object reached before (by another path, or a cycle)."""
        seen = self._memo.get(id(obj))
        if seen is not None:
            self._record(path, names, ("alias", seen[0]))
        return seen

    def _container(self, obj: Any, path: Path, names: tuple[str, ...], parts: _Parts) -> Visit:
        seen = self._seen(obj, path, names)
        if seen is not None:
            return seen[2]
        entry = self._memo[id(obj)] = [path, obj, obj]  # a cycle back to obj sees the original
        self._record(path, names, parts.descriptor)
        values = []
        for child in parts.children:
            values.append((yield from self._child(child, path, names)))
        if any(new is not child.value for new, child in zip(values, parts.children, strict=True)):
            entry[2] = parts.rebuild(values)
        return entry[2]

    def _child(self, child: _Child, path: Path, names: tuple[str, ...]) -> Visit:
        path, names = (*path, child.step), (*names, child.name)
        if child.kind == "global":
            return self._global(child.value, path, names)
        if child.kind == "value":
            return (yield (child.value, path, names))
        seen = self._seen(child.value, path, names)
        if seen is not None:
            return seen[2]
        entry = self._memo[id(child.value)] = [path, child.value, child.value]
        try:
            contents = child.value.cell_contents
        except ValueError:  # a cell whose variable is not assigned yet
            self._record(path, names, ("empty",))
            return child.value
        new = yield (contents, path, names)
        if new is not contents:
            entry[2] = types.CellType(new)
        return entry[2]

    def _global(self, value: Any, path: Path, names: tuple[str, ...]) -> Any:
        """A module global a mod reads. A function cannot get new globals the way it gets new cells, so a
        global scalar stays a constant that the trace depends on; a global tensor is found here each call."""
        if isinstance(value, torch.Tensor):
            return self._tensor(value, path, names)
        if value is None or isinstance(value, bool | int | float | str):
            self._record(path, names, ("value", type(value), value))
        elif not isinstance(value, _NOT_INSTANCES) and _tensor_attributes(value):
            # its scalars stay constants too (the function keeps this object): a change means a new trace
            self._record(path, names, ("object", type(value), _tensor_attributes(value), _scalar_attributes(value)))
        return value


# -- looking inside containers ------------------------------------------------------------------------


# globals that are code or namespaces, not objects holding a mod's data
_NOT_INSTANCES = (types.ModuleType, type, types.FunctionType, types.BuiltinFunctionType, types.MethodType,
                  functools.partial)


_SCALARS = (bool, int, float, str)


def _attributes(obj: Any) -> dict[str, Any] | None:
    """An object's attributes by the names a mod reads them with (a module's parameters and buffers
    included); None for an object without a __dict__ (slots, builtins)."""
    try:
        attributes = dict(vars(obj))
    except TypeError:
        return None
    for extra in ("_parameters", "_buffers"):
        if isinstance(attributes.get(extra), dict):
            attributes.update((k, v) for k, v in attributes[extra].items() if v is not None)
    return attributes


def _tensor_attributes(obj: Any) -> tuple[tuple[str, int], ...]:
    """Which tensor each of an object's attributes (and a module's parameters and buffers) holds, by identity:
    a mod may read a tensor through the object (`self.bias[h]`), which the trace then holds; assigning
    another tensor to the attribute changes this, so the trace is made again instead of reading the old one."""
    return tuple(sorted((k, id(v)) for k, v in (_attributes(obj) or {}).items() if isinstance(v, torch.Tensor)))


def _scalar_attributes(obj: Any) -> tuple[tuple[str, Any], ...]:
    """An object's Python scalar attributes with their values."""
    return tuple(sorted((k, v) for k, v in (_attributes(obj) or {}).items() if v is None or isinstance(v, _SCALARS)))


def _parts(obj: Any) -> _Parts | None:
    if isinstance(obj, types.FunctionType):
        return _function_parts(obj)
    if isinstance(obj, functools.partial):
        return _partial_parts(obj)
    is_sequence = type(obj) in (tuple, list) or (isinstance(obj, tuple) and hasattr(type(obj), "_fields"))
    if is_sequence and len(obj) <= _MAX_ITEMS:
        return _sequence_parts(obj)
    if isinstance(obj, types.MethodType):
        return _method_parts(obj)
    if not isinstance(obj, _NOT_INSTANCES):
        return _object_parts(obj)
    return None


def _method_parts(method: types.MethodType) -> _Parts:
    """A bound method (`model.mask`): its function and the object it is bound to (`self`)."""
    children = [_Child(("method", None), "__func__", method.__func__), _Child(("self", None), "__self__",
                                                                             method.__self__)]
    return _Parts(("method",), children, lambda values: types.MethodType(values[0], values[1]))


def _object_parts(obj: Any) -> _Parts | None:
    """An object's data attributes (numbers, tensors, flags, strings; a module's parameters and buffers), so a
    mod reading `self.window` or `cfg.bias` sees them as it sees closure variables: numbers as runtime
    parameters, tensors as captured tensors, read again at every call. Nested objects are not looked into."""
    attributes = _attributes(obj)
    if attributes is None:
        return None
    data = sorted((k, v) for k, v in attributes.items()
                  if not k.startswith("__") and (v is None or isinstance(v, (*_SCALARS, torch.Tensor))))
    if not data or len(data) > _MAX_ITEMS:
        return None
    names = tuple(k for k, _ in data)
    children = [_Child(("attr", k), f".{k}", v) for k, v in data]
    return _Parts(("object", type(obj), names), children, lambda values: AttributeView(obj, dict(zip(names, values,
                                                                                                    strict=True))))


class AttributeView:
    """An object as a traced mod sees it: the given attributes replaced (numbers by traced parameters), every
    other attribute (methods, nested objects) the object's own."""

    __slots__ = ("_attnc_object", "_attnc_values")

    def __init__(self, obj: Any, values: dict[str, Any]) -> None:
        self._attnc_object = obj
        self._attnc_values = values

    def __getattr__(self, name: str) -> Any:  # only for names not found on the view itself
        values = self._attnc_values
        return values[name] if name in values else getattr(self._attnc_object, name)


def _function_parts(fn: types.FunctionType) -> _Parts:
    code, cells = fn.__code__, fn.__closure__ or ()
    defaults, kwdefaults = fn.__defaults__ or (), fn.__kwdefaults__ or {}
    first_default = code.co_argcount - len(defaults)
    children = [_Child(("cell", i), code.co_freevars[i], c, "cell") for i, c in enumerate(cells)]
    children += [_Child(("default", i), code.co_varnames[first_default + i], v) for i, v in enumerate(defaults)]
    children += [_Child(("kwdefault", k), k, v) for k, v in kwdefaults.items()]
    children += [_Child(("global", k), k, fn.__globals__[k], "global") for k in _global_names(code)
                 if k in fn.__globals__]

    def rebuild(values: list[Any]) -> types.FunctionType:
        n, d = len(cells), len(defaults)
        new = types.FunctionType(code, fn.__globals__, fn.__name__, tuple(values[n:n + d]) or None,
                                 tuple(values[:n]) or None)
        new.__kwdefaults__ = dict(zip(kwdefaults, values[n + d:n + d + len(kwdefaults)], strict=True)) or None
        new.__qualname__ = fn.__qualname__
        return new

    return _Parts(("function", code), children, rebuild)


def _global_names(code: types.CodeType) -> dict[str, None]:
    """Names the code (and the functions defined in it) may read as globals, in order of appearance."""
    names = dict.fromkeys(code.co_names)
    for inner in code.co_consts:
        if isinstance(inner, types.CodeType):
            names |= _global_names(inner)
    return names


def _partial_parts(p: functools.partial) -> _Parts:
    children = [_Child(("func", None), "func", p.func)]
    children += [_Child(("arg", i), f"args[{i}]", v) for i, v in enumerate(p.args)]
    children += [_Child(("kw", k), k, v) for k, v in p.keywords.items()]

    def rebuild(values: list[Any]) -> functools.partial:
        args, kwargs = values[1:1 + len(p.args)], values[1 + len(p.args):]
        return functools.partial(values[0], *args, **dict(zip(p.keywords, kwargs, strict=True)))

    return _Parts(("partial", len(p.args), tuple(p.keywords)), children, rebuild)


def _sequence_parts(seq: tuple | list) -> _Parts:
    fields = getattr(type(seq), "_fields", None)
    names = [f".{f}" for f in fields] if fields else [f"[{i}]" for i in range(len(seq))]
    children = [_Child(("item", i), names[i], v) for i, v in enumerate(seq)]

    def rebuild(values: list[Any]) -> tuple | list:
        return type(seq)._make(values) if fields else type(seq)(values)

    return _Parts((type(seq), len(seq)), children, rebuild)


def describe_change(old: tuple[ShapeEntry, ...], new: tuple[ShapeEntry, ...]) -> str:
    """A sentence saying how the captured values differ from when the mods were traced."""
    for (old_path, names, was), (new_path, _, now) in zip(old, new, strict=False):
        if old_path != new_path or was != now:
            return f"{display(names)} was {_kind_text(was)} when traced and is now {_kind_text(now)}"
    return "the mods capture a different number of values than when traced"


def _kind_text(descriptor: tuple) -> str:
    kind = descriptor[0]
    if isinstance(kind, type):
        return f"a {kind.__name__} of length {descriptor[1]}"
    if kind in ("int", "float"):
        return f"a Python {kind}"
    if kind == "function":
        code = descriptor[1]
        return f"function {code.co_name} ({code.co_filename}:{code.co_firstlineno})"
    if kind == "value":
        return repr(descriptor[2])
    if kind == "object":
        return f"a {descriptor[1].__name__}" + (f" with attributes {', '.join(descriptor[2])}"
                                                  if len(descriptor) == 3 and descriptor[2] else "")
    if kind == "method":
        return "a bound method"
    return {"partial": "a functools.partial", "tensor": "a tensor", "empty": "unassigned",
            "alias": "a second reference to an object captured elsewhere"}[kind]


def follow(root: Any, steps: Path) -> Any:
    """The value at `steps` below `root` (a path `Walk` recorded, without its root name), read with plain
    attribute and item accesses only, so that torch.compile can trace the reads (and make the tensors
    found graph inputs) where it cannot trace `Walk`."""
    obj = root
    for kind, at in steps:
        if kind == "cell":
            obj = obj.__closure__[at].cell_contents
        elif kind == "default":
            obj = obj.__defaults__[at]
        elif kind == "kwdefault":
            obj = obj.__kwdefaults__[at]
        elif kind == "global":
            obj = obj.__globals__[at]
        elif kind == "func":
            obj = obj.func
        elif kind == "attr":
            obj = getattr(obj, at)
        elif kind == "method":
            obj = obj.__func__
        elif kind == "self":
            obj = obj.__self__
        elif kind == "arg":
            obj = obj.args[at]
        elif kind == "kw":
            obj = obj.keywords[at]
        else:  # "item"
            obj = obj[at]
    return obj
