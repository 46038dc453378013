"""The text syntax for attention variants, parsed into the IR the Python tracer builds.

    param window: int = 256          # a runtime parameter (int -> int32, float -> float32 PARAM)
    tensor slopes: float32[H]        # a tensor, bound by name when the variant is called
    let distance = q - kv            # a named intermediate, for the statements below it
    mask: (q >= kv) & (distance < window)
    score: score - slopes[h] * abs(distance)

The grammar is `grammar.lark`. Nothing the user writes is evaluated as Python: the parse tree is walked
here, and each construct is applied to the same traced values (`Sym`) a Python mod receives, so an
operator means exactly what Python's operator does on them and a function call goes to the same handler
as `torch.<name>` in a mod (`attnc.dsl.torch_api`). Parameters and tensors get their slots on first use,
the mask before the score, as in `attnc.dsl.captures`: a variant written both ways is the same Program.
The `let`s come first and are each built once, in order, like the assignments at the top of a mod.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import math
import operator
import os
import pathlib
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import lark
import torch
from lark.exceptions import UnexpectedInput, UnexpectedToken

from attnc.dsl import torch_api
from attnc.dsl.errors import Location, TraceError
from attnc.dsl.semantics import WEAK_DTYPE, Operand, Typed, describe, key, literal, to_node
from attnc.dsl.symbolic import Sym
from attnc.dsl.text_variant import TEXT, Decl, ParamDecl, TensorDecl, TextVariant
from attnc.ir.dtypes import INDEX, SCORE, DType
from attnc.ir.node import Node, const, load, param, score, var
from attnc.ir.ops import Op
from attnc.ir.program import ParamSpec, Program, TensorSpec

__all__ = ["ParamDecl", "TensorDecl", "TextError", "TextVariant", "parse", "text_variant"]

DTYPES = {
    "bool": torch.bool, "int8": torch.int8, "int16": torch.int16, "int32": torch.int32, "int64": torch.int64,
    "uint8": torch.uint8, "float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
    "float64": torch.float64,
}
PARAM_TYPES = {"int": int, "float": float}
INDEX_NAMES = {"b": "b", "h": "h", "q": "q", "kv": "kv", "q_idx": "q", "kv_idx": "kv"}
CONSTANTS = {"True": True, "False": False, "inf": math.inf, "nan": math.nan, "pi": math.pi}
_MATH = ("abs", "exp", "exp2", "log", "log2", "log1p", "sqrt", "rsqrt", "tanh", "sigmoid", "sin", "cos", "floor",
         "ceil", "sign")
# Each callable's handler is the one `torch.<name>` / `Tensor.<name>` gets in a Python mod (torch_api.TABLE).
# `f(...)` and `torch.f(...)` are torch.f; `min` / `max` are the elementwise torch.minimum / torch.maximum.
FUNCTIONS: dict[str, Callable] = {name: torch_api.TABLE[getattr(torch, name)]
                                  for name in (*_MATH, "minimum", "maximum", "clamp", "where")}
FUNCTIONS |= {"min": FUNCTIONS["minimum"], "max": FUNCTIONS["maximum"]}
CASTS: dict[str, Callable] = {"float": torch_api.TABLE[torch.Tensor.float],  # float(x) is x.float()
                              "int": torch_api.TABLE[torch.Tensor.int]}
METHODS: dict[str, Callable] = {
    name: torch_api.TABLE[getattr(torch.Tensor, name)]
    for name in (*_MATH, "minimum", "maximum", "clamp", "where", "float", "int", "long", "double", "half", "bfloat16",
                 "bool", "to")
}
# `torch.<name>` values: the dtypes a `.to(...)` may name.
TORCH_DTYPES = DTYPES | {"float": torch.float32, "int": torch.int32, "long": torch.int64, "half": torch.float16,
                         "double": torch.float64}
# Arguments of the attention call, `Attention.block_mask` / `tile_stats` and `attnc.compile`, which also take
# a text variant's values by name: a declaration may not take one of these names.
CALL_ARGUMENTS = frozenset({
    "query", "key", "value", "scale", "return_lse", "block_mask", "enable_gqa", "backend", "kernel_options",
    "deterministic", "B", "H", "Q_LEN", "KV_LEN", "device", "BLOCK_SIZE", "builder", "BLOCK_M", "BLOCK_N",
    "mask_mod", "score_mod",
})
RESERVED = frozenset({*INDEX_NAMES, "score", "torch", *CONSTANTS, *FUNCTIONS, *CASTS, *DTYPES, *CALL_ARGUMENTS})
_INT32 = (-(2**31), 2**31 - 1)
_SHOWN = 100  # the most characters of a source line an error shows
_STATEMENT = re.compile(r"^[ \t]*(mask|score)[ \t]*:", re.MULTILINE)
_NAME_ONLY = re.compile(r"[ \t]*[A-Za-z_][A-Za-z0-9_]*[ \t]*")


# -- errors -------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Span:
    """Where something is: 1-based line and columns; `end_column` (exclusive) is None past the line's end."""

    line: int
    column: int
    end_column: int | None = None


def span_of(item: lark.Tree | lark.Token) -> Span:
    where = item if isinstance(item, lark.Token) else item.meta
    end = where.end_column if where.end_line == where.line else None
    return Span(where.line, where.column, end)


class TextError(TraceError, ValueError):
    """A mistake in text-syntax source, shown at its file, line and column with a caret under it."""

    def __init__(self, problem: str, *, filename: str, source: str, span: Span, hint: str = "",
                 expected: tuple[str, ...] = ()) -> None:
        self.filename, self.line, self.column, self.span = filename, span.line, span.column, span
        self.source_line = _source_line(source, span.line)
        self.expected = expected
        super().__init__(problem, hint, Location(filename, span.line))

    def _render(self) -> str:
        line = self.source_line
        start = min(self.column - 1, len(line))
        end = max(start + 1, len(line) if self.span.end_column is None else self.span.end_column - 1)
        if len(line) > _SHOWN:  # a window of a long line around the problem
            first = max(0, min(start - _SHOWN // 2, len(line) - _SHOWN))
            line, start, end = line[first:first + _SHOWN], start - first, min(end - first, _SHOWN)
        # keep tabs so the caret lines up under the same characters
        indent = "".join(c if c == "\t" else " " for c in line[:start])
        lines = [f"{self.filename}:{self.line}:{self.column}: {self.problem}", f"    {line}",
                 f"    {indent}{'^' * max(1, end - start)}"]
        if self.expected:
            lines.append(f"expected {_one_of(self.expected)}")
        if self.hint:
            lines.append(self.hint)
        return "\n".join(lines)


def _source_line(text: str, line: int) -> str:
    """Line `line` (1-based) as the lexer counts lines: only "\n" ends one."""
    lines = text.split("\n")
    return lines[line - 1].rstrip("\r") if 0 < line <= len(lines) else ""


def _one_of(words: tuple[str, ...]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


# -- parsing ------------------------------------------------------------------------------------------


class _Continuation:
    """Inside parentheses and brackets a newline does not end the statement (as in Python)."""

    always_accept = ("_NL",)

    def process(self, stream: Iterator[lark.Token]) -> Iterator[lark.Token]:
        depth = 0
        for token in stream:
            if token.type in ("_LPAR", "_LSQB"):
                depth += 1
            elif token.type in ("_RPAR", "_RSQB"):
                depth = max(0, depth - 1)
            elif token.type == "_NL" and depth:
                continue
            yield token


@functools.cache
def _parser() -> lark.Lark:
    grammar = (pathlib.Path(__file__).with_name("grammar.lark")).read_text()
    return lark.Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=True,
                     postlex=_Continuation())


_WORDS = {
    "NAME": "a name", "INT": "a number", "FLOAT": "a number", "_LPAR": "`(`", "_RPAR": "`)`", "_LSQB": "`[`",
    "_RSQB": "`]`", "_COMMA": "`,`", "_COLON": "`:`", "_EQUAL": "`=`", "_DOT": "`.`", "_NL": "the end of the line",
    "$END": "the end of the text", "TILDE": "`~`", "COMPARE": "a comparison", "PLUS": "`+`", "MINUS": "`-`",
    "STAR": "`*`", "SLASH": "`/`", "DOUBLESLASH": "`//`", "PERCENT": "`%`", "DOUBLESTAR": "`**`",
    "AMPERSAND": "`&`", "CIRCUMFLEX": "`^`", "VBAR": "`|`",
}
_OPERATORS = {"COMPARE", "PLUS", "MINUS", "STAR", "SLASH", "DOUBLESLASH", "PERCENT", "DOUBLESTAR", "AMPERSAND",
              "CIRCUMFLEX", "VBAR"}
_PYTHON_WORDS = {
    "and": "combine conditions with `&` (parenthesise each comparison: (q >= kv) & (q < 8))",
    "or": "combine conditions with `|` (parenthesise each comparison: (q < 8) | (kv < 8))",
    "not": "negate a condition with `~`, e.g. ~(q < 8)",
    "if": "choose between values with where(condition, a, b)",
    "else": "choose between values with where(condition, a, b)",
}


def _expected(names: set[str]) -> tuple[str, ...]:
    """Readable words for the terminals a parser state accepts; binary operators collapse to one."""
    words = [] if len(names & _OPERATORS) < 3 else ["an operator"]
    names = names - _OPERATORS if words else names
    words += [_WORDS.get(name, f"`{name}`") for name in sorted(names)]
    return tuple(dict.fromkeys(sorted(words, key=lambda w: (w.startswith("the end"), w))))


def _syntax_error(exc: UnexpectedInput, source: _Source) -> TextError:
    interactive = getattr(exc, "interactive_parser", None)
    names = set(interactive.accepts()) if interactive is not None else set(getattr(exc, "expected", ()) or ())
    token = getattr(exc, "token", None)
    hint = ""
    if isinstance(exc, UnexpectedToken) and token is not None and token.type != "$END":
        found = "end of line" if token.type == "_NL" else f"`{token.value}`"
        span = Span(token.line, token.column, token.column + max(1, len(token.value.rstrip("\n"))))
        hint = _equal_hint(source.text, span) if token.type == "_EQUAL" else _python_hint(source.text, span)
    elif token is not None:
        found, span = "end of text", _end_of(source.text)
    else:
        char = getattr(exc, "char", "?")
        found, span = f"character `{char}`", Span(exc.line, exc.column, exc.column + 1)
        hint = "strings are not part of the syntax" if char in "'\"" else ""
    return TextError(f"unexpected {found}", filename=source.filename, source=source.text, span=span, hint=hint,
                     expected=_expected(names))


def _equal_hint(text: str, span: Span) -> str:
    """`=` straight after a statement's first name is an assignment; anywhere else, a comparison."""
    before = _source_line(text, span.line)[:span.column - 1]
    if _NAME_ONLY.fullmatch(before):
        return f"to define `{before.strip()}`, write `let {before.strip()} = ...`"
    return "use `==` to compare"


def _python_hint(text: str, span: Span) -> str:
    """What to write instead of a Python keyword (`and`, `not`, ...) up to the error on its line."""
    line = _source_line(text, span.line)
    words = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", line[:span.end_column - 1 if span.end_column else None])
    return next((_PYTHON_WORDS[w] for w in reversed(words) if w in _PYTHON_WORDS), "")


def _end_of(source: str) -> Span:
    lines = source.rstrip("\n").split("\n")
    return Span(len(lines), len(lines[-1].rstrip("\r")) + 1)


# -- building the IR --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Bare:
    """A one-element tensor used as a value: read when an operation uses it (as a captured tensor is)."""

    decl: TensorDecl


Value = Sym | bool | int | float | _Bare | torch.dtype


@dataclasses.dataclass(frozen=True)
class _Let:
    """A built `let`: its value, and whether it reads the raw score (then only `score:` may use it)."""

    value: Value
    reads_score: bool


class _Tracer:
    """Slots in order of first use, mask before score, one space per kind (as `captures.Recorder`)."""

    def __init__(self) -> None:
        self.param_specs: list[ParamSpec] = []
        self.tensor_specs: list[TensorSpec] = []
        self.param_names: list[str] = []
        self.tensor_names: list[str] = []

    def param(self, decl: ParamDecl) -> Typed:
        if decl.name not in self.param_names:
            self.param_names.append(decl.name)
            self.param_specs.append(ParamSpec(WEAK_DTYPE[decl.type], decl.name))
        slot = self.param_names.index(decl.name)
        return Typed(param(slot, WEAK_DTYPE[decl.type]), decl.type)

    def tensor_slot(self, decl: TensorDecl) -> int:
        if decl.name not in self.tensor_names:
            self.tensor_names.append(decl.name)
            self.tensor_specs.append(decl.spec)
        return self.tensor_names.index(decl.name)

    def load(self, decl: TensorDecl, index: list[Node]) -> Typed:
        slot = self.tensor_slot(decl)
        return Typed(load(slot, self.tensor_specs[slot].dtype, *index))

    def lift(self, x: Any) -> Operand:
        if isinstance(x, Sym):
            return x.typed
        if isinstance(x, bool | int | float):
            return x
        if isinstance(x, _Bare):
            return self.load(x.decl, [const(0, INDEX)] * x.decl.rank)
        raise TraceError(f"{_what(x)} cannot be used as a value")

    def specialize(self, n: Node) -> None:
        """Python mods trace again with such parameters as constants; text parameters always stay runtime."""
        leaves = [m for m in n.walk() if not m.src]
        if all(m.op in (Op.PARAM, Op.CONST) for m in leaves) and any(m.op is Op.PARAM for m in leaves):
            raise TraceError("an integer parameter as the exponent of an integer needs its value when compiling "
                             "(int ** int is a float exactly when the exponent is negative)",
                             "declare the parameter as a float, or write a float base such as 2.0")


def _what(x: Any) -> str:
    return f"the dtype {x}" if isinstance(x, torch.dtype) else f"a {type(x).__name__}"


_BINARY = {
    "+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv, "//": operator.floordiv,
    "%": operator.mod, "**": operator.pow, "&": operator.and_, "^": operator.xor, "|": operator.or_,
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq, "!=": operator.ne,
}
_UNARY = {"-": operator.neg, "+": operator.pos, "~": operator.invert}
_CHAIN_HINT = ("as in Python, `&`, `|` and `^` bind tighter than comparisons: parenthesise each comparison, "
               "e.g. (q >= kv) & (q - kv < window)")


def _fold(fn: Callable, *values: bool | int | float) -> bool | int | float:
    """An operation on literals only: computed as Python computes it (a mod's constants are Python's)."""
    if fn is operator.invert and isinstance(values[0], bool):
        return not values[0]  # `~` on a condition is `not`, as for bool tensors
    if fn is operator.pow and _huge_power(*values):
        raise TraceError(f"the constant {values[0]} ** {values[1]} is too large")
    try:
        out = fn(*values)
    except OverflowError:
        raise TraceError("the constant expression overflows") from None
    except (ArithmeticError, TypeError, ValueError) as exc:
        raise TraceError(f"the constant expression fails: {exc}") from None
    if not isinstance(out, bool | int | float):
        raise TraceError(f"the constant expression gives {out!r}, not a real number")
    return out


def _huge_power(base: bool | int | float, exponent: bool | int | float) -> bool:
    """An integer power far beyond int64, which Python would spend unbounded time and memory on."""
    return isinstance(base, int) and isinstance(exponent, int) and abs(base) > 1 and \
        abs(base).bit_length() * exponent > 256


@dataclasses.dataclass(frozen=True)
class _Source:
    """The text being parsed, to report problems in it."""

    text: str
    filename: str

    def error(self, problem: str, at: lark.Tree | lark.Token | Span, hint: str = "") -> TextError:
        span = at if isinstance(at, Span) else span_of(at)
        return TextError(problem, filename=self.filename, source=self.text, span=span, hint=hint)

    @contextlib.contextmanager
    def located(self, at: lark.Tree | lark.Token) -> Iterator[None]:
        """Problems the typing rules find inside, reported at `at`."""
        try:
            yield
        except TextError:
            raise
        except TraceError as exc:
            raise self.error(exc.problem, at, exc.hint) from None

    def number(self, token: lark.Token) -> int | float:
        """An INT or FLOAT token's value, read as Python reads the literal."""
        try:
            return int(token, 0) if token.type == "INT" else float(token)
        except ValueError:
            raise self.error(f"invalid number `{token}`", token) from None


_OPERATORS_TREES = frozenset({"binary", "unary", "comparison"})
_UNBUILT = object()


def _operands_first(root: lark.Tree) -> list[lark.Tree]:
    """The operands below an operator node, each after its own operands and left to right (the order in
    which the operators' handlers would build them), found without recursion; operands of other nodes
    (calls, indexing) are left to those nodes."""
    order: list[lark.Tree] = []
    stack: list[tuple[lark.Tree, bool]] = [(root, False)]
    while stack:
        tree, expanded = stack.pop()
        if expanded:
            order.append(tree)
            continue
        stack.append((tree, True))
        if tree.data in _OPERATORS_TREES:
            stack.extend((c, False) for c in reversed(tree.children) if isinstance(c, lark.Tree))
    return order[:-1]  # the root itself is built by its caller


class _Builder:
    """Walks the parse tree of one variant and builds its Program."""

    def __init__(self, source: _Source, declared: Mapping[str, Decl], definitions: Mapping[str, lark.Tree]) -> None:
        self.source, self.declared, self.definitions = source, declared, definitions
        self.error, self.located = source.error, source.located
        self.tracer = _Tracer()
        self.index = {name: Sym(Typed(var(canonical)), self.tracer) for name, canonical in INDEX_NAMES.items()}
        self.params = {d.name: Sym(None, self.tracer, d) for d in declared.values() if isinstance(d, ParamDecl)}
        self.raw_score = Sym(Typed(score()), self.tracer)
        self.score: Sym | None = None  # the raw score, while a `let` or the score rule is built
        self.lets: dict[str, _Let] = {}  # the definitions built so far
        self.reads_score = False  # whether the expression being built reads the raw score
        self._built: dict[int, Value] = {}  # operands of an operator chain, built ahead (see `value`)
        self._build = {"name": self._name, "integer": self._number, "real": self._number, "binary": self._binary,
                       "unary": self._unary, "comparison": self._comparison, "index": self._index,
                       "attribute": self._attribute, "call": self._call}

    # -- definitions and roots ----------------------------------------------------------------------------

    def define(self) -> None:
        """Each `let`, once and in order, so its slots are numbered where it stands (as in a mod's body)."""
        for name, statement in self.definitions.items():
            self.score, self.reads_score = self.raw_score, False
            self.lets[name] = _Let(self.value(statement.children[2]), self.reads_score)
        self.score = None

    def mask(self, tree: lark.Tree) -> Node:
        value = self.operand(tree)
        if key(value) not in (bool, DType.bool):
            raise self.error(f"the mask must be a condition (bool), but this is {describe(value)}", tree,
                             "compare, e.g. `q >= kv`; combine conditions with `&`, `|`, `~`")
        return to_node(value, DType.bool)

    def score_root(self, tree: lark.Tree) -> Node:
        self.score = self.raw_score
        with self.located(tree):
            return to_node(self.operand(tree), SCORE)

    def operand(self, tree: lark.Tree) -> Operand:
        value = self.value(tree)
        with self.located(tree):
            return self.tracer.lift(value)

    # -- expressions --------------------------------------------------------------------------------------

    def value(self, tree: lark.Tree) -> Value:
        """The value of an expression. Operator chains (`a & b & ...`, `~~~x`, long sums) are built without
        recursion: their operands first, in the order the operators would build them, each kept until
        its operator asks for it."""
        if tree.data in _OPERATORS_TREES and id(tree) not in self._built:
            for operand in _operands_first(tree):
                self._built[id(operand)] = self._build[operand.data](operand)
        built = self._built.pop(id(tree), _UNBUILT)
        return self._build[tree.data](tree) if built is _UNBUILT else built

    def _name(self, tree: lark.Tree) -> Value:
        name = tree.children[0]
        found = self._lookup(name)
        if found is None and name in self.definitions:
            line = self.definitions[name].children[1].line
            raise self.error(f"`{name}` is used before its definition (line {line})", name,
                             "a `let` can use only the definitions above it")
        if found is None:
            raise self.error(f"unknown name `{name}`", name, self._known_names())
        return found

    def _lookup(self, name: lark.Token) -> Value | None:
        if name == "score":
            return self._score(name)
        if name in self.lets:
            return self._let(name)
        for table in (self.index, CONSTANTS, DTYPES, self.params):
            if name in table:
                return table[name]
        decl = self.declared.get(name)
        if isinstance(decl, TensorDecl):
            return self._bare(name, decl)
        if name in FUNCTIONS or name in CASTS:
            raise self.error(f"`{name}` is a function: call it, e.g. {name}(q - kv)", name)
        return None

    def _score(self, name: lark.Token) -> Sym:
        if self.score is None:
            raise self.error("`score` is only available in the `score:` statement", name,
                             "a mask decides from b, h, q and kv alone")
        self.reads_score = True
        return self.score

    def _let(self, name: lark.Token) -> Value:
        let = self.lets[name]
        if let.reads_score and self.score is None:
            raise self.error(f"`{name}` reads `score`: it can be used only in `score:`", name,
                             "a mask decides from b, h, q and kv alone")
        self.reads_score |= let.reads_score
        return let.value

    def _bare(self, name: lark.Token, decl: TensorDecl) -> _Bare:
        if not decl.is_scalar:
            raise self.error(f"`{name}` is a tensor of rank {decl.rank}: index it", name,
                             f"e.g. {name}[{', '.join(['h', 'q', 'kv', 'b'][:decl.rank])}]")
        return _Bare(decl)

    def _known_names(self) -> str:
        names = ", ".join([*self.declared, *self.lets]) or "none"
        return f"names: b, h, q, kv (or q_idx, kv_idx), score (in `score:`), and the declared ones ({names})"

    def _number(self, tree: lark.Tree) -> int | float:
        return self.source.number(tree.children[0])

    def _binary(self, tree: lark.Tree) -> Value:
        left, op, right = tree.children
        values = self.value(left), self.value(right)
        # a literal too large for int32 is what an error is about: point at it rather than at the operator
        wide = [c for c, v in zip((left, right), values, strict=True)
                if isinstance(c, lark.Tree) and c.data == "integer" and not _INT32[0] <= v <= _INT32[1]]
        return self._apply(_BINARY[op.value], op, *values, at=wide[0] if wide else None)

    def _unary(self, tree: lark.Tree) -> Value:
        op, operand = tree.children
        return self._apply(_UNARY[op.value], op, self.value(operand))

    def _comparison(self, tree: lark.Tree) -> Value:
        if len(tree.children) > 3:
            raise self.error("chained comparisons are not supported", tree.children[3], _CHAIN_HINT)
        return self._binary(tree)

    def _apply(self, fn: Callable, op: lark.Token, *values: Value, at: lark.Tree | None = None) -> Value:
        """An operator, as Python applies it to traced values (reflected methods, literal folding); errors
        point at `at`, else at the operator."""
        with self.located(at or op):
            operands = [self._symbolic(v) if isinstance(v, _Bare) else v for v in values]
            for v in operands:
                if isinstance(v, torch.dtype):
                    raise TraceError(f"`{op}` cannot be applied to the dtype {v}", "dtypes go in .to(...)")
            if any(isinstance(v, Sym) for v in operands):
                return fn(*operands)
            return _fold(fn, *operands)

    def _symbolic(self, value: _Bare) -> Sym:
        return Sym(self.tracer.lift(value), self.tracer)

    def _index(self, tree: lark.Tree) -> Sym:
        target, subscripts = tree.children
        decl = self._indexed(target)
        items = subscripts.children
        index = [self._index_node(item) for item in items]
        if len(index) != decl.rank:
            raise self.error(f"`{decl.name}` has {decl.rank} dimension(s) but {len(index)} index(es) are given",
                             subscripts, f"declared as `{decl.describe()}`: one index per dimension")
        return Sym(self.tracer.load(decl, index), self.tracer)

    def _indexed(self, target: lark.Tree) -> TensorDecl:
        name = target.children[0] if target.data == "name" else None
        decl = self.declared.get(name) if name is not None else None
        if isinstance(decl, TensorDecl):
            return decl
        known = name in INDEX_NAMES or name == "score" or name in self.definitions
        if name is not None and decl is None and not known:
            raise self.error(f"unknown name `{name}`", name, "declare a tensor to index it, e.g. "
                             f"`tensor {name}: float32[H]`, and index it as {name}[h]")
        kind = "a parameter" if decl else "the raw score" if name == "score" else \
            "a `let`" if name in self.definitions else "an index"
        what = "this value" if name is None else f"`{name}` is {kind}"
        raise self.error(f"{what}, not a tensor: only declared tensors can be indexed", target,
                         "declare it, e.g. `tensor bias: float32[H]`, and index it as bias[h]")

    def _index_node(self, item: lark.Tree) -> Node:
        """One index, as `Recorder._index_node`: an integer expression or a non-negative integer literal."""
        value = self.value(item)
        if isinstance(value, bool) or not isinstance(value, Sym | int | _Bare):
            raise self.error(f"an index must be an integer expression, not {_what(value)}", item)
        with self.located(item):
            lifted = self.tracer.lift(value)
            if isinstance(lifted, int):
                if lifted < 0:
                    raise TraceError(f"negative index {lifted}", "indices are clamped into range, not wrapped")
                return literal(lifted, INDEX)
        if not lifted.node.dtype.is_int:
            raise self.error(f"an index must be an integer expression, not {lifted.node.dtype.name}", item,
                             "use // for integer division, or int(...)")
        return lifted.node

    def _attribute(self, tree: lark.Tree) -> Value:
        target, name = tree.children
        if target.data == "name" and target.children[0] == "torch":
            if name in TORCH_DTYPES:
                return TORCH_DTYPES[name]
            raise self.error(f"`torch.{name}` is not available here", name,
                             f"call a function, e.g. torch.exp(x), or name a dtype ({', '.join(DTYPES)})")
        raise self.error(f"attributes are not supported: `.{name}`", name, "call a method, e.g. x.float()")

    def _call(self, tree: lark.Tree) -> Sym:
        callee, arguments = tree.children
        name, handler, receiver = self._callee(callee)
        args: list[Value] = [] if receiver is None else [receiver]
        kwargs: dict[str, Value] = {}
        for argument in arguments.children if arguments is not None else ():
            self._argument(argument, args, kwargs)
        try:
            inspect.signature(handler).bind(self.tracer, *args, **kwargs)
        except TypeError:
            raise self.error(f"wrong arguments for `{name}`", tree,
                             f"expected {name}{_shown_signature(handler, receiver is not None)}") from None
        with self.located(tree):
            return Sym(handler(self.tracer, *args, **kwargs), self.tracer)

    def _argument(self, argument: lark.Tree, args: list[Value], kwargs: dict[str, Value]) -> None:
        if argument.data != "keyword":
            if kwargs:
                raise self.error("a positional argument after keyword arguments", argument)
            args.append(self.value(argument))
            return
        name, value = argument.children
        if name in kwargs:
            raise self.error(f"the keyword argument `{name}` is given twice", name)
        kwargs[str(name)] = self.value(value)

    def _callee(self, callee: lark.Tree) -> tuple[str, Callable, Value | None]:
        """(name shown in messages, handler, receiver value for a method)."""
        if callee.data == "name":
            name = callee.children[0]
            if name in FUNCTIONS or name in CASTS:
                return name, {**FUNCTIONS, **CASTS}[name], None
            raise self.error(f"unknown function `{name}`", name, f"functions: {', '.join([*FUNCTIONS, *CASTS])}")
        if callee.data != "attribute":
            raise self.error("only functions and methods can be called", callee)
        target, name = callee.children
        if target.data == "name" and target.children[0] == "torch":
            if name in FUNCTIONS:
                return f"torch.{name}", FUNCTIONS[name], None
            raise self.error(f"unknown function `torch.{name}`", name, f"functions: {', '.join(FUNCTIONS)}")
        receiver = self.value(target)
        if name not in METHODS:
            raise self.error(f"unknown method `.{name}()`", name, f"methods: {', '.join(METHODS)}")
        return f".{name}", METHODS[name], receiver


def _shown_signature(handler: Callable, method: bool) -> str:
    """The handler's signature as the user calls it: without the tracer (and the receiver of a method)."""
    parameters = list(inspect.signature(handler).parameters.values())[1 + method:]
    return str(inspect.Signature([p.replace(annotation=inspect.Parameter.empty) for p in parameters]))


# -- statements --------------------------------------------------------------------------------------------


def _declarations(tree: lark.Tree, source: _Source) -> dict[str, Decl]:
    declared: dict[str, Decl] = {}
    for statement in tree.children:
        if statement.data != "declaration":
            continue
        kind, name = statement.children[:2]
        if kind not in ("param", "tensor"):
            hint = "a `let` has no type: `let NAME = EXPR`" if kind == "let" else _STATEMENTS
            raise source.error(f"unknown statement `{kind}`", kind, hint)
        if name in RESERVED:
            raise source.error(f"`{name}` is a reserved name", name,
                               "declare another name: this one is an index, a function, a dtype, a constant or "
                               "an argument of the attention call")
        if name in declared:
            raise source.error(f"`{name}` is declared twice (first on line {declared[name].line})", name)
        declared[str(name)] = _declaration(source, *statement.children)
    return declared


def _declaration(source: _Source, kind: lark.Token, name: lark.Token, type_name: lark.Token,
                 shape: lark.Tree | None, default: lark.Tree | None) -> Decl:
    build = _param_declaration if kind == "param" else _tensor_declaration
    return build(source, name, type_name, shape, default)


def _param_declaration(source: _Source, name: lark.Token, type_name: lark.Token, shape: lark.Tree | None,
                       default: lark.Tree | None) -> ParamDecl:
    if shape is not None:
        raise source.error("a param is a scalar and has no dims", shape,
                           f"for a tensor write `tensor {name}: float32[...]`")
    if type_name not in PARAM_TYPES:
        raise source.error(f"unknown param type `{type_name}`", type_name, "expected int or float")
    value = None if default is None else _default(source, PARAM_TYPES[type_name], default)
    return ParamDecl(str(name), PARAM_TYPES[type_name], value, name.line)


def _tensor_declaration(source: _Source, name: lark.Token, type_name: lark.Token, shape: lark.Tree | None,
                        default: lark.Tree | None) -> TensorDecl:
    if type_name not in DTYPES:
        raise source.error(f"unknown dtype `{type_name}`", type_name, f"expected one of {', '.join(DTYPES)}")
    if default is not None:
        raise source.error("a tensor has no default: it is bound by name when the variant is called", default)
    dims = () if shape is None else tuple(str(d) if d.type == "NAME" else source.number(d)
                                          for d in shape.children if d is not None)
    return TensorDecl(str(name), DTYPES[type_name], dims, name.line)


_STATEMENTS = ("statements: `param NAME: int|float [= value]`, `tensor NAME: DTYPE[dims]`, `let NAME = EXPR`, "
               "`mask: EXPR`, `score: EXPR`")


def _definitions(tree: lark.Tree, source: _Source, declared: Mapping[str, Decl]) -> dict[str, lark.Tree]:
    """The `let` statements by name, in order; each must come before `mask:` and `score:`."""
    definitions: dict[str, lark.Tree] = {}
    rule_seen = False
    for statement in tree.children:
        rule_seen = rule_seen or statement.data == "rule"
        if statement.data == "definition":
            _check_definition(source, statement, declared, definitions, rule_seen)
            definitions[str(statement.children[1])] = statement
    return definitions


def _check_definition(source: _Source, statement: lark.Tree, declared: Mapping[str, Decl],
                      definitions: Mapping[str, lark.Tree], rule_seen: bool) -> None:
    keyword, name, _ = statement.children
    if keyword != "let":
        raise source.error(f"unknown statement `{keyword}`", keyword, _STATEMENTS)
    if rule_seen:
        raise source.error("a `let` after `mask:` or `score:`", keyword, "define names before the rules use them")
    if name in RESERVED:
        raise source.error(f"`{name}` is a reserved name", name,
                           "name it otherwise: this one is an index, the score, a function, a dtype, a constant or "
                           "an argument of the attention call")
    if name in declared:
        raise source.error(f"`{name}` is already declared (line {declared[name].line})", name,
                           f"a `let` cannot shadow `{declared[name].describe()}`")
    if name in definitions:
        raise source.error(f"`{name}` is defined twice (first on line {definitions[name].children[1].line})", name)


def _default(source: _Source, kind: type, tree: lark.Tree) -> int | float:
    sign, number = tree.children
    value = source.number(number)
    value = -value if sign is not None and sign == "-" else value
    if kind is int and not isinstance(value, int):
        raise source.error(f"an int param cannot default to {value!r}", number, "declare it `float`")
    if kind is int and not _INT32[0] <= value <= _INT32[1]:
        raise source.error(f"{value} does not fit in int32, the type of integer parameters", number)
    return kind(value)


def _rules(tree: lark.Tree, source: _Source) -> dict[str, lark.Tree]:
    rules: dict[str, lark.Tree] = {}
    for statement in tree.children:
        if statement.data != "rule":
            continue
        keyword, expr = statement.children
        if keyword not in ("mask", "score"):
            raise source.error(f"unknown statement `{keyword}:`", keyword, _STATEMENTS)
        if keyword in rules:
            raise source.error(f"a second `{keyword}:` statement", keyword,
                               "a variant has one mask (combine conditions with `&`, `|`) and one score")
        rules[str(keyword)] = expr
    return rules


def parse(text: str, *, filename: str | None = None) -> TextVariant:
    """Parse a variant in the text syntax. TextError (a ValueError) names the line, column and problem."""
    text = normalised(text)
    source = _Source(text, filename or TEXT)
    try:
        tree = _parser().parse(text if text.endswith("\n") else text + "\n")
        declared = _declarations(tree, source)
        definitions = _definitions(tree, source, declared)
        rules = _rules(tree, source)
        builder = _Builder(source, declared, definitions)
        builder.define()
        # the mask first: the Python tracer numbers slots in that order
        mask = builder.mask(rules["mask"]) if "mask" in rules else None
        score_root = builder.score_root(rules["score"]) if "score" in rules else None
    except UnexpectedInput as exc:
        raise _syntax_error(exc, source) from None
    except RecursionError:
        raise source.error("the expression is nested too deeply", _end_of(text)) from None
    tracer = builder.tracer
    program = Program(mask, score_root, tuple(tracer.tensor_specs), tuple(tracer.param_specs))
    params = tuple(d for d in declared.values() if isinstance(d, ParamDecl))
    tensors = tuple(d for d in declared.values() if isinstance(d, TensorDecl))
    return TextVariant(program, params, tensors, tuple(tracer.param_names), tuple(tracer.tensor_names),
                       source.filename)


def normalised(text: str) -> str:
    """Without a leading byte-order mark, with CR and CRLF line ends as LF (files saved on other systems)."""
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def is_text(source: str) -> bool:
    """A string is text in the syntax when it spans lines or has a `mask:` / `score:` statement."""
    source = normalised(source)
    return "\n" in source or _STATEMENT.search(source) is not None


def text_variant(source: str | os.PathLike | TextVariant) -> TextVariant:
    """What `attnc.compile` accepts as a text variant: a TextVariant, text, or a path to a `.attn` file."""
    if isinstance(source, TextVariant):
        return source
    if isinstance(source, str) and is_text(source):
        return parse(source)
    path = pathlib.Path(source)
    if path.suffix != ".attn":
        raise ValueError(f"attnc.compile: {str(source)!r} is neither text in the attnc syntax (it has no `mask:` "
                         "or `score:` statement) nor a path to a .attn file")
    return parse(path.read_text(), filename=str(path))
