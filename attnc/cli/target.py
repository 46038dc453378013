"""What the subcommands work on: a library variant written as a call, or a `.attn` file, compiled.

    causal                              a family of attnc.variants.FAMILIES, called with no arguments
    sliding_window(256, causal=False)   ... with literal arguments
    causal() & ~prefix_lm(64)           masks combined with & | ~
    sliding_window(256), alibi(8)       a mask and a score mod
    document --tensor doc_ids=ids.pt    a family's tensor argument, from a .pt (torch.save) or .npy file
    variant.attn                        the text syntax; tensors by --tensor NAME=PATH, params by --param NAME=VALUE

A call is read with `ast` and only ever calls a factory of `FAMILIES`: each argument must be a literal
(`ast.literal_eval` of its own node), so nothing the user writes is evaluated as Python. A tensor argument
(`document`'s doc_ids, `t5_bias`'s table, ...) comes from `--tensor NAME=PATH` (or FAMILY.NAME=PATH where two
families share a name); without one, show, viz and bench use a synthetic tensor (attnc.cli.stand_ins) and say so.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import pickle
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch

import attnc
from attnc.api import Attention
from attnc.dsl.captures import Bindings
from attnc.dsl.text import ParamDecl, TensorDecl, TextVariant
from attnc.variants import FAMILIES, LayerMods, MaskMod, ScoreMod

from . import stand_ins
from .errors import CliError, did_you_mean
from .stand_ins import Extent

FILE_SUFFIX = ".attn"
_FORM = ("write a family of attnc.variants.FAMILIES with literal arguments, e.g. causal, sliding_window(256), "
         "natten((16, 16), 7, dilation=2), or a path to a .attn file")
_COMBINE: dict[type, Callable[[MaskMod, MaskMod], MaskMod]] = {
    ast.BitAnd: lambda a, b: a & b, ast.BitOr: lambda a, b: a | b,
}


class Mods(NamedTuple):
    mask_mod: MaskMod | None
    score_mod: ScoreMod | None


NO_MODS = Mods(None, None)  # a text variant's: its mask and score live in its program


# -- the compiled target -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Target:
    """A compiled variant and what its calls are given: Python mods, or a text variant's values by name."""

    label: str
    attn: Attention
    mods: Mods = NO_MODS
    text: TextVariant | None = None
    values: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    notes: tuple[str, ...] = ()  # what the command should tell (synthetic tensors standing in for missing ones)

    def missing(self) -> list[TensorDecl | ParamDecl]:
        """The declarations the text variant reads that have no value (none for a library variant)."""
        if self.text is None:
            return []
        declared = self.text.declarations
        used = [declared[name] for name in (*self.text.tensor_slots, *self.text.param_slots)]
        return [d for d in dict.fromkeys(used) if d.name not in self.values and getattr(d, "default", None) is None]

    def require_values(self, purpose: str) -> None:
        missing = self.missing()
        if missing:
            raise missing_values(self.label, purpose, missing)

    def bindings(self, values: Mapping[str, Any] | None = None) -> Bindings:
        """The tensors and parameter values of each slot of `attn.traced.program`: a text variant's from
        `values` (default: its own), a library variant's from its mods."""
        if self.text is not None:
            return self.text.bind(self.values if values is None else values)
        return self.attn.traced.bind(*self.mods)

    def values_on(self, device: torch.device) -> dict[str, Any]:
        """The text variant's values, tensors moved to `device` (a library variant has none)."""
        return {name: v.to(device) if isinstance(v, torch.Tensor) else v for name, v in self.values.items()}


def missing_values(label: str, purpose: str, missing: list[TensorDecl | ParamDecl]) -> CliError:
    return CliError(f"{label}: {purpose} needs {', '.join(f'`{d.describe()}`' for d in missing)}; "
                    f"pass {' '.join(how_to_pass(d) for d in missing)}")


def how_to_pass(decl: TensorDecl | ParamDecl) -> str:
    if isinstance(decl, TensorDecl):
        return f"--tensor {decl.name}=PATH (a .pt file written by torch.save, or .npy)"
    return f"--param {decl.name}=VALUE"


def load_target(args: argparse.Namespace, *, device: torch.device | None = None,
                stand_ins: Extent | None = None) -> Target:
    """The variant named on the command line, compiled. On a CUDA `device`, families that take a `device`
    argument create their tensors there (unless the call names one), and tensors from files move there.
    With `stand_ins`, a family's tensor argument that no --tensor gives is synthesised at that extent and
    noted in `Target.notes`; without, it is an error naming the flag."""
    spec: str = args.variant
    if spec.endswith(FILE_SUFFIX):
        return _text_target(Path(spec), args.tensor, args.param)
    if args.param:
        raise CliError("--param binds the params of a .attn file; a library variant takes its arguments in the "
                       "call, e.g. sliding_window(256)")
    reader = _Reader(spec.strip(), device if device is not None and device.type == "cuda" else None,
                     tensors=_tensor_paths(args.tensor), stand_ins=stand_ins)
    mods = reader.mods()
    label = ", ".join(repr(m) for m in mods if m is not None)
    return Target(label, attnc.compile(*mods), mods, notes=tuple(reader.notes))


def _tensor_paths(items: list[str]) -> dict[str, Path]:
    """--tensor NAME=PATH items by NAME (a parameter name, or FAMILY.NAME)."""
    paths: dict[str, Path] = {}
    for item in items:
        name, path = _assignment(item, "--tensor", "NAME=PATH")
        if name in paths:
            raise CliError(f"--tensor {name}: given twice")
        paths[name] = Path(path)
    return paths


# -- .attn files ---------------------------------------------------------------------------------------------


def _text_target(path: Path, tensors: list[str], params: list[str]) -> Target:
    try:
        source = path.read_text()
    except OSError as error:
        raise CliError(f"cannot read {path}: {error.strerror or error}") from None
    variant = attnc.parse(source, filename=str(path))
    values = {**_tensor_values(variant, tensors), **_param_values(variant, params)}
    variant.check(values)  # dtypes and shapes against the declarations
    return Target(str(path), attnc.compile(variant), text=variant, values=values)


def _assignment(item: str, flag: str, form: str) -> tuple[str, str]:
    name, equals, value = item.partition("=")
    if not equals or not name.strip():
        raise CliError(f"{flag} {item!r}: expected {form}")
    return name.strip(), value.strip()


def _declared(variant: TextVariant, name: str, kind: type, flag: str) -> Any:
    decl = variant.declarations.get(name)
    if not isinstance(decl, kind):
        same_kind = [d for d in variant.declarations.values() if isinstance(d, kind)]
        listing = ", ".join(d.describe() for d in same_kind)
        hint = did_you_mean(name, [d.name for d in same_kind])
        raise CliError(f"{flag} {name}: {variant.filename} declares no {kind.__name__.removesuffix('Decl').lower()} "
                       f"`{name}`{hint}; it declares {listing or 'none'}")
    return decl


def _tensor_values(variant: TextVariant, items: list[str]) -> dict[str, torch.Tensor]:
    values = {}
    for item in items:
        name, path = _assignment(item, "--tensor", "NAME=PATH")
        _declared(variant, name, TensorDecl, "--tensor")
        values[name] = load_tensor(name, Path(path))
    return values


def load_tensor(name: str, path: Path) -> torch.Tensor:
    """A tensor from a file: `.npy` (numpy.save, no pickled objects) or else torch.save's format, loaded
    with weights_only=True. Neither runs code from the file."""
    try:
        value = _load_npy(path) if path.suffix.lower() == ".npy" else torch.load(path, map_location="cpu",
                                                                                  weights_only=True)
    except (OSError, EOFError, RuntimeError, ValueError, pickle.UnpicklingError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CliError(f"--tensor {name}: cannot load {path}: {reason}") from None
    if not isinstance(value, torch.Tensor):
        raise CliError(f"--tensor {name}: {path} holds a {type(value).__name__}, not a tensor")
    return value


def _load_npy(path: Path) -> torch.Tensor:
    import numpy

    array = numpy.load(path, allow_pickle=False)
    if not isinstance(array, numpy.ndarray):
        raise ValueError(f"{path} is an archive of arrays, not one array")
    return torch.from_numpy(numpy.ascontiguousarray(array))


def _param_values(variant: TextVariant, items: list[str]) -> dict[str, int | float]:
    values: dict[str, int | float] = {}
    for item in items:
        name, text = _assignment(item, "--param", "NAME=VALUE")
        decl: ParamDecl = _declared(variant, name, ParamDecl, "--param")
        try:
            values[name] = decl.type(text)
        except ValueError:
            kind = "an int" if decl.type is int else "a float"
            raise CliError(f"--param {name}={text}: `{decl.describe()}` needs {kind}") from None
    return values


# -- library variants ----------------------------------------------------------------------------------------


def parse_variant(spec: str, *, device: torch.device | None = None) -> Mods:
    """The mods a variant call names. Only factories of FAMILIES are called, with literal arguments."""
    return _Reader(spec.strip(), device).mods()


class _Reader:
    """Builds mods from the nodes of a parsed variant call, refusing every other node. Tensor arguments come
    from `tensors` (files by parameter name), else from a stand-in at `stand_ins`, else are an error."""

    def __init__(self, text: str, device: torch.device | None, *, tensors: Mapping[str, Path] | None = None,
                 stand_ins: Extent | None = None) -> None:
        self.text = text
        self.device = device
        self.tensors = dict(tensors or {})
        self.stand_ins = stand_ins
        self.used: set[str] = set()  # keys of `tensors` some family took
        self.offered: dict[str, str] = {}  # tensor parameter -> its family, of the families read
        self.notes: list[str] = []

    def mods(self) -> Mods:
        try:
            tree = ast.parse(self.text, mode="eval")
        except SyntaxError as error:
            raise CliError(f"`{self.text}` is not a variant ({error.msg}); {_FORM}") from None
        value = self.value(tree.body)
        self.check_all_tensors_used()
        if isinstance(value, tuple):  # a LayerMods, or `mask, score`
            return Mods(*value)
        return Mods(value, None) if isinstance(value, MaskMod) else Mods(None, value)

    def check_all_tensors_used(self) -> None:
        for key in self.tensors.keys() - self.used:
            offered = ", ".join(f"{name} ({family})" for name, family in self.offered.items()) or "none"
            raise CliError(f"--tensor {key}: no family of `{self.text}` takes a tensor `{key}`"
                           f"{did_you_mean(key.rpartition('.')[2], self.offered)}; the tensor arguments it takes: "
                           f"{offered}")

    def segment(self, node: ast.AST) -> str:
        return ast.get_source_segment(self.text, node) or self.text

    def value(self, node: ast.expr) -> MaskMod | ScoreMod | tuple[Any, Any]:
        if isinstance(node, ast.Tuple):
            return self.pair(node)
        if isinstance(node, ast.BinOp) and type(node.op) in _COMBINE:
            return _COMBINE[type(node.op)](self.mask(node.left), self.mask(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Invert):
            return ~self.mask(node.operand)
        if isinstance(node, ast.Name):
            return self.family(node.id, [], {})
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            args = [self.literal(a) for a in node.args]
            kwargs = {k.arg: self.literal(k.value) for k in node.keywords if self.named(k)}
            return self.family(node.func.id, args, kwargs)
        raise CliError(f"`{self.segment(node)}` is not a variant: {_FORM}")

    def pair(self, node: ast.Tuple) -> tuple[MaskMod, ScoreMod]:
        if len(node.elts) != 2:
            raise CliError(f"`{self.segment(node)}`: after a comma comes one score mod: MASK, SCORE")
        mask, score = self.mask(node.elts[0]), self.value(node.elts[1])
        if not isinstance(score, ScoreMod):
            raise CliError(f"`{self.segment(node.elts[1])}` is not a score mod (MASK, SCORE)")
        return mask, score

    def mask(self, node: ast.expr) -> MaskMod:
        value = self.value(node)
        if not isinstance(value, MaskMod):
            what = "a score mod" if isinstance(value, ScoreMod) else "a mask and a score mod"
            raise CliError(f"`{self.segment(node)}` is {what}; & | ~ combine masks, and a comma separates "
                           "the mask from one score mod")
        return value

    def named(self, keyword: ast.keyword) -> bool:
        if keyword.arg is None:
            raise CliError(f"`{self.segment(keyword)}`: name each keyword argument (no **)")
        return True

    def literal(self, node: ast.expr) -> Any:
        try:
            return ast.literal_eval(node)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise CliError(f"`{self.segment(node)}` is not a literal: arguments are numbers, strings, booleans, "
                           "None, tuples and lists (nothing is evaluated)") from None

    def family(self, name: str, args: list[Any], kwargs: dict[str, Any]) -> MaskMod | ScoreMod | LayerMods:
        factory = FAMILIES.get(name)
        if factory is None:
            raise CliError(f"unknown variant family `{name}`{did_you_mean(name, FAMILIES)}; the families are "
                           f"{', '.join(sorted(FAMILIES))}")
        signature = inspect.signature(factory)
        bound = _bind(name, signature.bind_partial, signature, args, kwargs)
        kwargs = {**kwargs, **self.tensor_arguments(name, factory, signature, bound)}
        _bind(name, signature.bind, signature, args, kwargs)
        if self.device is not None and "device" in signature.parameters and "device" not in bound.arguments:
            kwargs = {**kwargs, "device": str(self.device)}
        try:
            return factory(*args, **kwargs)
        except (TypeError, ValueError) as error:
            message = str(error)
            raise CliError(message if message.startswith(name) else f"{name}: {message}") from None

    def tensor_arguments(self, name: str, factory: Callable[..., Any], signature: inspect.Signature,
                         bound: inspect.BoundArguments) -> dict[str, torch.Tensor]:
        """The tensor arguments the call leaves out: from --tensor files, else stand-ins, else an error."""
        found: dict[str, torch.Tensor] = {}
        for p in signature.parameters.values():
            if p.name in bound.arguments and _is_tensor_only(p.annotation):
                raise _needs_tensor(name, factory, p.name, synthetic=(name, p.name) in stand_ins.STAND_INS,
                                    signature=signature)
            if not _accepts_tensor(p.annotation) or p.name in bound.arguments:
                continue
            self.offered[p.name] = name
            key = next((k for k in (f"{name}.{p.name}", p.name) if k in self.tensors), None)
            if key is not None:
                self.used.add(key)
                found[p.name] = load_tensor(key, self.tensors[key])
            elif _is_tensor_only(p.annotation) and p.default is p.empty:
                found[p.name] = self.stand_in(name, factory, p.name, signature, bound)
        if self.device is not None:
            found = {k: t.to(self.device) for k, t in found.items()}
        return found

    def stand_in(self, name: str, factory: Callable[..., Any], parameter: str, signature: inspect.Signature,
                 bound: inspect.BoundArguments) -> torch.Tensor:
        made = None
        if self.stand_ins is not None:
            arguments = {p.name: p.default for p in signature.parameters.values() if p.default is not p.empty}
            try:
                made = stand_ins.stand_in(name, parameter, self.stand_ins, {**arguments, **bound.arguments})
            except (KeyError, TypeError, ValueError) as error:
                raise CliError(f"{name}: cannot make a synthetic {parameter}: {error}") from None
        if made is None:
            raise _needs_tensor(name, factory, parameter, synthetic=(name, parameter) in stand_ins.STAND_INS)
        tensor, what = made
        self.notes.append(f"note: {name}: no --tensor {parameter}=PATH given; using a synthetic {parameter}: {what} "
                          f"({str(tensor.dtype).removeprefix('torch.')}{list(tensor.shape)})")
        return tensor


def _bind(name: str, bind: Callable[..., inspect.BoundArguments], signature: inspect.Signature, args: list[Any],
          kwargs: dict[str, Any]) -> inspect.BoundArguments:
    try:
        return bind(*args, **kwargs)
    except TypeError as error:
        unknown = re.search(r"unexpected keyword argument '(\w+)'", str(error))
        hint = did_you_mean(unknown[1], signature.parameters) if unknown else ""
        raise CliError(f"{name}({shown_parameters(signature)}): {error}{hint}") from None


def shown_parameters(signature: inspect.Signature) -> str:
    parts = []
    for p in signature.parameters.values():
        annotation = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", "")
        part = f"{p.name}: {annotation}" if p.annotation is not p.empty else p.name
        parts.append(part if p.default is p.empty else f"{part} = {p.default!r}")
    return ", ".join(parts)


def _annotation_text(annotation: Any) -> str:
    return annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))


def _is_tensor_only(annotation: Any) -> bool:
    return annotation is torch.Tensor or annotation in ("torch.Tensor", "Tensor")


def _accepts_tensor(annotation: Any) -> bool:
    """`torch.Tensor`, or a union with it (`int | torch.Tensor`: sliding_window's per-head windows)."""
    return annotation is not inspect.Parameter.empty and "Tensor" in _annotation_text(annotation)


def _needs_tensor(name: str, factory: Callable[..., Any], parameter: str, *, synthetic: bool,
                  signature: inspect.Signature | None = None) -> CliError:
    """A family's tensor that a literal cannot give: say how to pass it (and, where a literal took its place,
    that the arguments after it go by name)."""
    summary = (inspect.getdoc(factory) or "").split("\n")[0]
    where = "; attnc show, viz and bench use a synthetic one when it is left out" if synthetic else ""
    named = ""
    if signature is not None:
        after = list(signature.parameters)[list(signature.parameters).index(parameter) + 1:]
        if after:
            named = f"; name the arguments after it: {name}({', '.join(f'{a}=...' for a in after)})"
    return CliError(f"`{name}` needs a tensor `{parameter}` that a literal cannot give ({summary}); pass it from a "
                    f"file with --tensor {parameter}=PATH (.pt written by torch.save, or .npy){where}{named}")
