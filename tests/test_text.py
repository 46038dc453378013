"""The text syntax: the same Program as the Python form, binding by name, runtime parameters, errors."""

from __future__ import annotations

import builtins
import dataclasses
import inspect
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch

import attnc
from attnc.dsl.text import CALL_ARGUMENTS, RESERVED, TextError, TextVariant, parse
from attnc.dsl.trace import trace
from attnc.ir.verify import verify_program
from tests.zoo import DEVICE

G = torch.Generator().manual_seed(0)
SLOPES = torch.exp2(-torch.arange(1, 5, dtype=torch.float32))
DOC = torch.repeat_interleave(torch.arange(4, dtype=torch.int32), torch.tensor([13, 30, 1, 20]))  # 64 positions
TABLE = torch.randn(4, 255, generator=G)
T5_BIAS = torch.randn(4, 16, generator=G)
BIAS = torch.randn(4, 4, generator=G)
KEEP = torch.rand(2, 64, generator=G) > 0.3
LENGTHS = torch.tensor([50, 64], dtype=torch.int64)
TEMPERATURE = torch.tensor(0.7)


# -- the Python form of each variant: closures whose variable names are the text's declared names -----------


def causal():
    return (lambda b, h, q_idx, kv_idx: q_idx >= kv_idx), None


def sliding_window(window):
    def mask(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (q_idx - kv_idx < window)

    return mask, None


def prefix_lm(prefix):
    return (lambda b, h, q_idx, kv_idx: (kv_idx < prefix) | (q_idx >= kv_idx)), None


def alibi(slopes):
    return None, lambda score, b, h, q_idx, kv_idx: score - slopes[h] * torch.abs(q_idx - kv_idx)


def softcap(cap):
    return None, lambda score, b, h, q_idx, kv_idx: cap * torch.tanh(score / cap)


def document(doc):
    return (lambda b, h, q_idx, kv_idx: (doc[q_idx] == doc[kv_idx]) & (q_idx >= kv_idx)), None


def relative_table(table, radius):
    def score_mod(score, b, h, q_idx, kv_idx):
        return score + table[h, torch.clamp(q_idx - kv_idx, min=-radius, max=radius) + radius]

    return None, score_mod


def natten_1d(half, length):
    def mask(b, h, q_idx, kv_idx):
        return torch.abs(kv_idx - torch.clamp(q_idx, min=half, max=length - 1 - half)) <= half

    return mask, None


def chunks_and_strides(chunk, stride):
    return (lambda b, h, q_idx, kv_idx: (q_idx // chunk == kv_idx // chunk) | (kv_idx % stride == 0)), None


def t5_bucket(t5_bias, max_distance):
    def score_mod(score, b, h, q_idx, kv_idx):
        distance = torch.abs(q_idx - kv_idx)
        large = (8 + torch.log(distance.float() / 8) / torch.log(max_distance / 8) * 8).int()
        return score + t5_bias[h, torch.where(distance < 8, distance, torch.minimum(large, torch.full_like(large, 15)))]

    return None, score_mod


def nested_index(bias, doc):
    return None, lambda score, b, h, q_idx, kv_idx: score + bias[h, doc[q_idx]]


def lazy_params(a, b2, c, n):
    # Python lifts `b2 * c` before `a`: slots follow first use in an operation, not first mention
    def score_mod(score, b, h, q_idx, kv_idx):
        return score * (a + b2 * c)

    return (lambda b, h, q_idx, kv_idx: kv_idx < n), score_mod


def reflected():
    # a literal on the left: Python calls the traced value's reflected comparison (`4 <= x` is `x >= 4`)
    return (lambda b, h, q_idx, kv_idx: (4 <= q_idx - kv_idx) | (0 == kv_idx % 2) | (1 > kv_idx)), None  # noqa: SIM300


def methods_and_casts():
    def score_mod(score, b, h, q_idx, kv_idx):
        return score + (q_idx - kv_idx).float().clamp(min=0.0) * 0.5 - kv_idx.to(torch.float32) / 1000

    return None, score_mod


def scalar_tensor_and_power(temperature):
    return None, lambda score, b, h, q_idx, kv_idx: score / temperature + (q_idx - kv_idx) ** 2 * 0.001


def padding_and_keep(keep, lengths):
    return (lambda b, h, q_idx, kv_idx: keep[b, kv_idx] & (kv_idx < lengths[b])), None


def named_intermediates(window, cap, slopes):
    # the text's lets are the assignments here; each is built where it stands, so the slots agree
    def mask(b, h, q_idx, kv_idx):
        distance = q_idx - kv_idx
        return (distance >= 0) & (distance < window)

    def score_mod(score, b, h, q_idx, kv_idx):
        capped = cap * torch.tanh(score / cap)
        return capped - slopes[h] * torch.abs(q_idx - kv_idx)

    return mask, score_mod


def constants():
    return None, lambda score, b, h, q_idx, kv_idx: score * (1 / 8) + 2 ** -1 + 7 // 2 - (-3) % 5 + math.pi


@dataclasses.dataclass
class Case:
    name: str
    text: str
    mods: Callable[..., tuple[Any, Any]]
    values: dict[str, Any] = dataclasses.field(default_factory=dict)

    def python(self) -> tuple[Any, Any]:
        return self.mods(**self.values)


CASES = [
    Case("causal", "mask: q >= kv", causal),
    Case("sliding_window", "param window: int = 256\nmask: (q >= kv) & (q - kv < window)", sliding_window,
         {"window": 24}),
    Case("prefix_lm", "param prefix: int\nmask: (kv < prefix) | (q >= kv)", prefix_lm, {"prefix": 17}),
    Case("alibi", "tensor slopes: float32[H]\nscore: score - slopes[h] * abs(q - kv)", alibi, {"slopes": SLOPES}),
    Case("softcap", "param cap: float = 30.0\nscore: cap * tanh(score / cap)", softcap, {"cap": 20.0}),
    Case("document", "tensor doc: int32[KV]\nmask: (doc[q_idx] == doc[kv_idx]) & (q_idx >= kv_idx)", document,
         {"doc": DOC}),
    Case("relative_table", "tensor table: float32[H, 255]\nparam radius: int = 127\n"
         "score: score + table[h, clamp(q - kv, min=-radius, max=radius) + radius]", relative_table,
         {"table": TABLE, "radius": 127}),
    Case("natten_1d", "param half: int = 3  # declared before `length`, used after it\nparam length: int\n"
         "mask: abs(kv - clamp(q, min=half, max=length - 1 - half)) <= half", natten_1d, {"half": 3, "length": 64}),
    Case("chunks_and_strides", "param chunk: int\nparam stride: int\nmask: (q // chunk == kv // chunk) | "
         "(kv % stride == 0)", chunks_and_strides, {"chunk": 16, "stride": 4}),
    Case("t5_bucket", "tensor t5_bias: float32[H, 16]\nparam max_distance: float = 128.0\n"
         "score: score + t5_bias[h, where(abs(q - kv) < 8, abs(q - kv),\n"
         "                               minimum(int(8 + log(abs(q - kv).float() / 8) / log(max_distance / 8) * 8),"
         " 15))]", t5_bucket, {"t5_bias": T5_BIAS, "max_distance": 128.0}),
    Case("nested_index", "tensor bias: float32[H, 4]\ntensor doc: int32[Q]\nscore: score + bias[h, doc[q]]",
         nested_index, {"bias": BIAS, "doc": DOC}),
    Case("lazy_params", "score: score * (a + b2 * c)   # the score statement first, the mask still numbers first\n"
         "mask: kv < n\nparam a: float\nparam b2: float\nparam c: float\nparam n: int",
         lazy_params, {"a": 1.0, "b2": 0.5, "c": 2.0, "n": 40}),
    Case("reflected", "mask: (4 <= q - kv) | (0 == kv % 2) | (1 > kv)", reflected),
    Case("methods_and_casts", "score: score + (q - kv).float().clamp(min=0.0) * 0.5 - kv.to(torch.float32) / 1000",
         methods_and_casts),
    Case("scalar_tensor_and_power", "tensor temperature: float32[]\n"
         "score: score / temperature + (q - kv) ** 2 * 0.001", scalar_tensor_and_power,
         {"temperature": TEMPERATURE}),
    Case("padding_and_keep", "tensor keep: bool[B, KV]\ntensor lengths: int64[B]\n"
         "mask: keep[b, kv] & (kv < lengths[b])", padding_and_keep, {"keep": KEEP, "lengths": LENGTHS}),
    Case("constants", "score: score * (1 / 8) + 2 ** -1 + 7 // 2 - (-3) % 5 + pi", constants),
    Case("named_intermediates", "param window: int\nparam cap: float\ntensor slopes: float32[H]\n"
         "let distance = q - kv\nlet near = (distance >= 0) & (distance < window)\n"
         "let capped = cap * tanh(score / cap)  # reads the score: usable in `score:` only\n"
         "mask: near\nscore: capped - slopes[h] * abs(distance)", named_intermediates,
         {"window": 24, "cap": 20.0, "slopes": SLOPES}),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_a_variant_written_both_ways_is_the_same_program(case):
    """Identical IR: equal Programs (the interned mask and score roots are the same objects, and the slot
    specs, param names included, are equal, so fingerprints and generated kernels are too), and binding
    the same values fills every slot with the same value."""
    mask_mod, score_mod = case.python()
    traced = trace(mask_mod, score_mod)
    parsed = parse(case.text)
    verify_program(parsed.program)
    assert parsed.program == traced.program
    assert parsed.program.mask is traced.program.mask and parsed.program.score is traced.program.score
    assert parsed.program.fingerprint() == traced.program.fingerprint()
    ours, theirs = parsed.bind(case.values), traced.bind(mask_mod, score_mod)
    assert all(a is b for a, b in zip(ours.tensors, theirs.tensors, strict=True))
    assert [(type(p), p) for p in ours.params] == [(type(p), p) for p in theirs.params]


def test_slots_follow_first_use_not_declaration_order():
    parsed = parse(next(c.text for c in CASES if c.name == "lazy_params"))
    assert parsed.param_slots == ("n", "b2", "c", "a")
    assert [p.name for p in parsed.params] == ["a", "b2", "c", "n"]  # declaration order
    assert parse(next(c.text for c in CASES if c.name == "nested_index")).tensor_slots == ("doc", "bias")


def test_lets_are_built_once_in_statement_order():
    def later_condition_first(a, b2):
        def mask(b, h, q_idx, kv_idx):
            second = kv_idx < b2
            first = q_idx < a
            return first & second

        return mask, None

    inline = parse("param a: int\nparam b2: int\nmask: (q < a) & (kv < b2)")
    named = parse("param a: int\nparam b2: int\nlet second = kv < b2\nlet first = q < a\nmask: first & second")
    assert named.program == trace(*later_condition_first(1, 2)).program
    assert (inline.param_slots, named.param_slots) == (("a", "b2"), ("b2", "a"))
    # a let whose name no rule uses is still built, like an unused assignment in a mod
    unused = parse("param c: int = 2\nlet spare = kv < c\nlet later = spare\nmask: q >= kv")
    assert unused.program.mask is parse("mask: q >= kv").program.mask and unused.param_slots == ("c",)
    chained = parse("let d = q - kv\nlet s = score * 2\nlet t = s - abs(d)\nmask: d >= 0\nscore: t")
    assert chained.program.score is parse("score: score * 2 - abs(q - kv)").program.score


def test_generated_kernel_source_is_identical():
    case = next(c for c in CASES if c.name == "relative_table")
    assert attnc.compile(case.text).source.source == attnc.compile(*case.python()).source.source


def qkv(Hq=4, Hkv=2, Q=40, KV=64, D=16, requires_grad=False):
    g = torch.Generator().manual_seed(1)
    shapes = ((1, Hq, Q, D), (1, Hkv, KV, D), (1, Hkv, KV, D))
    return tuple(torch.randn(s, generator=g).to(DEVICE).requires_grad_(requires_grad) for s in shapes)


@pytest.mark.parametrize(("text", "mods", "values"), [
    ("param window: int = 256\ntensor slopes: float32[H]\nmask: (q >= kv) & (q - kv < window)\n"
     "score: score - slopes[h] * abs(q - kv)",
     lambda window, slopes: (sliding_window(window)[0], alibi(slopes)[1]), {"window": 24, "slopes": SLOPES}),
    ("tensor doc: int32[KV]\nparam cap: float\nmask: (doc[q] == doc[kv]) & (q >= kv)\n"
     "score: cap * tanh(score / cap)",
     lambda doc, cap: (document(doc)[0], softcap(cap)[1]), {"doc": DOC, "cap": 5.0}),
], ids=["window_alibi", "document_softcap"])
def test_the_kernel_runs_a_text_variant_like_the_python_form(text, mods, values):
    q, k, v = qkv()
    values = {name: t.to(DEVICE) if isinstance(t, torch.Tensor) else t for name, t in values.items()}
    out, lse = attnc.compile(text)(q, k, v, return_lse=True, backend="triton", **values)
    expected, expected_lse = attnc.compile(*mods(**values))(q, k, v, return_lse=True, backend="reference")
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(lse, expected_lse, atol=2e-5, rtol=2e-5)


def test_changing_a_param_reuses_the_kernel():
    attn = attnc.compile("param window: int = 8\nmask: (q >= kv) & (q - kv < window)")
    q, k, v = qkv()
    first = attn(q, k, v, backend="triton")
    kernel = attn.kernel()
    wider = attn(q, k, v, backend="triton", window=20)
    assert attn.kernel() is kernel
    assert not torch.allclose(first, wider)
    for window, out in ((8, first), (20, wider)):
        expected = attnc.compile(*sliding_window(window))(q, k, v, backend="reference")
        torch.testing.assert_close(out, expected, atol=2e-5, rtol=2e-5)


def test_gradients_reach_a_tensor_bound_by_name():
    q, k, v = qkv(requires_grad=True)
    slopes = SLOPES.clone().to(DEVICE).requires_grad_()
    attnc.compile("tensor slopes: float32[H]\nscore: score - slopes[h] * abs(q - kv)")(
        q, k, v, backend="reference", slopes=slopes).sum().backward()
    ours = slopes.grad.clone()
    slopes.grad = None
    attnc.compile(*alibi(slopes))(q, k, v, backend="reference").sum().backward()
    torch.testing.assert_close(ours, slopes.grad)


# -- binding by name ------------------------------------------------------------------------------------------

ALIBI_WINDOW = ("param window: int\ntensor slopes: float32[H]\ntensor unused: int32[4]\n"
                "mask: (q >= kv) & (q - kv < window)\nscore: score - slopes[h] * abs(q - kv)")


def test_values_bound_when_compiling_are_defaults_for_each_call():
    q, k, v = qkv()
    attn = attnc.compile(ALIBI_WINDOW, slopes=SLOPES.to(DEVICE), window=16)
    expected = attnc.compile(*sliding_window(16))
    plain = attn(q, k, v, backend="reference", slopes=torch.zeros(4, device=DEVICE))  # the call's value wins
    torch.testing.assert_close(plain, expected(q, k, v, backend="reference"))
    assert not torch.allclose(attn(q, k, v, backend="reference"), plain)


@pytest.mark.parametrize(("values", "match"), [
    ({"window": 16}, r"no value for `tensor slopes: float32\[H\]` \(declared on line 2\)"),
    ({"slopes": SLOPES}, r"no value for `param window: int`"),
    ({"window": 16, "slopes": SLOPES, "slope": SLOPES}, r"unknown name `slope` for this variant; it declares "
                                                        r"param window: int, tensor slopes"),
    ({"window": 16, "slopes": SLOPES.half()}, r"`tensor slopes: float32\[H\]` got a torch.float16 tensor"),
    ({"window": 16, "slopes": SLOPES[None]}, r"`tensor slopes: float32\[H\]` got a tensor of shape \[1, 4\]"),
    ({"window": 16, "slopes": [0.5, 0.25]}, r"`tensor slopes: float32\[H\]` needs a torch.Tensor, got list"),
    ({"window": 16, "slopes": SLOPES, "unused": torch.zeros(5, dtype=torch.int32)}, r"`tensor unused: int32\[4\]` "
                                                                                    r"got a tensor of shape \[5\]"),
    ({"window": 2.5, "slopes": SLOPES}, r"`param window: int` needs a Python int, got float 2.5"),
    ({"window": True, "slopes": SLOPES}, r"`param window: int` needs a Python int, got bool"),
    ({"window": 2**31, "slopes": SLOPES}, r"`window` = 2147483648 does not fit in int32"),
])
def test_binding_errors_name_the_culprit(values, match):
    attn = attnc.compile(ALIBI_WINDOW)
    with pytest.raises(ValueError, match=match):
        attn(*qkv(), backend="reference", **values)


def test_unused_declarations_need_no_value_and_floats_take_ints():
    bound = parse("param cap: float\ntensor unused: float32[H]\nscore: cap * tanh(score / cap)").bind({"cap": 30})
    assert bound.params == (30.0,) and isinstance(bound.params[0], float) and bound.tensors == ()


def test_bad_bindings_are_rejected_when_compiling():
    with pytest.raises(ValueError, match="unknown name `windw`"):
        attnc.compile(ALIBI_WINDOW, windw=3)


def test_python_variants_take_no_bindings():
    with pytest.raises(ValueError, match=r"unexpected keyword arguments \['window'\].*text syntax"):
        attnc.compile(*causal(), window=3)
    with pytest.raises(ValueError, match=r"unexpected keyword arguments \['window'\].*text syntax"):
        attnc.compile(*causal())(*qkv(), backend="reference", window=3)


def test_declarations_cannot_take_the_names_of_call_arguments():
    taking_values = (attnc.Attention.__call__, attnc.Attention.block_mask, attnc.Attention.tile_stats, attnc.compile)
    names = {name for fn in taking_values for name in inspect.signature(fn).parameters}
    assert names - {"self", "values"} <= CALL_ARGUMENTS <= RESERVED
    with pytest.raises(TextError, match="`scale` is a reserved name"):
        parse("param scale: float\nscore: score * scale")


def test_block_mask_and_tile_stats_take_values_by_name():
    attn = attnc.compile("tensor doc: int32[KV]\nmask: (doc[q] == doc[kv]) & (q >= kv)")
    ours = attn.block_mask(1, 1, 64, 64, device=DEVICE, BLOCK_SIZE=16, doc=DOC.to(DEVICE))
    python_form = attnc.compile(*document(DOC.to(DEVICE)))
    theirs = python_form.block_mask(1, 1, 64, 64, device=DEVICE, BLOCK_SIZE=16)
    assert torch.equal(ours.to_dense(), theirs.to_dense())
    window = attnc.compile("param window: int\nmask: (q >= kv) & (q - kv < window)")
    expected = attnc.compile(*sliding_window(20)).tile_stats(1, 2, 64, 64, BLOCK_M=16, BLOCK_N=16)
    assert window.tile_stats(1, 2, 64, 64, BLOCK_M=16, BLOCK_N=16, window=20) == expected


# -- what compile accepts --------------------------------------------------------------------------------------


def test_a_dot_attn_file_is_loaded_by_path(tmp_path):
    path = tmp_path / "alibi.attn"
    path.write_text("# ALiBi\ntensor slopes: float32[H]\n\nscore: score - slopes[h] * abs(q - kv)\n")
    expected = attnc.compile(*alibi(SLOPES)).program
    assert attnc.compile(path, slopes=SLOPES).program == expected
    assert attnc.compile(str(path)).program == expected
    path.write_text("score: score - slopes[h]\n")
    with pytest.raises(TextError, match=rf"^{path}:1:16: unknown name `slopes`"):
        attnc.compile(path)


@pytest.mark.parametrize("source", ["mask: q >= kv", "  score: score\n", "# comment\nmask: q >= kv"])
def test_strings_with_statements_or_lines_are_text(source):
    assert isinstance(attnc.compile(source).text, TextVariant)


def test_other_strings_and_mixed_forms_are_rejected():
    with pytest.raises(ValueError, match="neither text in the attnc syntax"):
        attnc.compile("causal")
    with pytest.raises(TypeError, match="has its score in the text"):
        attnc.compile("mask: q >= kv", lambda score, b, h, q, kv: score)


def test_a_parsed_variant_compiles():
    parsed = attnc.parse("mask: q >= kv")
    assert attnc.compile(parsed).traced is parsed


def test_layout_comments_and_continuation_lines():
    parsed = parse("\n# a comment line\n\tparam window: int = 4   # trailing comment\n\n"
                   "mask: (\n    (q >= kv)  # inside\n    & (q - kv < window)\n)\n\n")
    assert parsed.program == trace(*sliding_window(4)).program


# -- errors --------------------------------------------------------------------------------------------------


def error_of(text: str, **kwargs: Any) -> TextError:
    with pytest.raises(TextError) as info:
        parse(text, **kwargs)
    return info.value


def test_an_error_shows_file_line_column_source_caret_and_expected():
    error = error_of("param window: int\nmask: (q >= kv) & (q - kv < window) window", filename="sliding.attn")
    assert str(error) == (
        "sliding.attn:2:37: unexpected `window`\n"
        "    mask: (q >= kv) & (q - kv < window) window\n"
        "                                        ^^^^^^\n"
        "expected `(`, `.`, `[`, an operator or the end of the line"
    )
    assert isinstance(error, ValueError) and isinstance(error, attnc.TraceError)
    assert (error.filename, error.line, error.column) == ("sliding.attn", 2, 37)


SYNTAX_ERRORS = [
    ("mask: q >= ", 1, 12, "unexpected end of line", "a name or a number"),
    ("mask: q >=\nscore: score", 1, 11, "unexpected end of line", "a name or a number"),
    ("mask: (q >= kv", 1, 15, "unexpected end of text", "`)`"),
    ("mask: q $ kv", 1, 9, "unexpected character `$`", "an operator"),
    ("mask: __import__('os').system('true')", 1, 18, "unexpected character `'`", "strings are not part"),
    ("mask: q >= kv and q < 8", 1, 15, "unexpected `and`", "combine conditions with `&`"),
    ("mask: not q", 1, 11, "unexpected `q`", "negate a condition with `~`"),
    ("mask: q = kv", 1, 9, "unexpected `=`", "use `==` to compare"),
    ("distance = q - kv\nmask: distance < 8", 1, 10, "unexpected `=`", "write `let distance = ...`"),
    ("param window: int = many", 1, 21, "unexpected `many`", "`+`, `-` or a number"),
    ("tensor t: float32[H\nmask: q >= kv", 2, 1, "unexpected `mask`", "`,` or `]`"),
    ("mask: lambda: 1", 1, 13, "unexpected `:`", "an operator"),
]


@pytest.mark.parametrize(("text", "line", "column", "problem", "expected"), SYNTAX_ERRORS,
                         ids=[e[3] + " " + str(i) for i, e in enumerate(SYNTAX_ERRORS)])
def test_syntax_errors(text, line, column, problem, expected):
    error = error_of(text)
    assert_located(error, text, line, column, problem, expected)
    assert error.expected and not any(name in str(error) for name in ("_LPAR", "NAME", "$END", "_NL", "COMPARE"))


SEMANTIC_ERRORS = [
    ("mask: q >= windo", 1, 12, "unknown name `windo`", "b, h, q, kv"),
    ("mask: score > 0", 1, 7, "`score` is only available in the `score:` statement", "b, h, q and kv"),
    ("param w: int\nmask: w[h] > 0", 2, 7, "`w` is a parameter, not a tensor", "declare it"),
    ("mask: q[h] > 0", 1, 7, "`q` is an index, not a tensor", "tensor bias"),
    ("score: score[h]", 1, 8, "`score` is the raw score, not a tensor", "tensor bias"),
    ("tensor t: int32[B]\nmask: (t)[b][b] > 0", 2, 7, "this value, not a tensor", "tensor bias"),
    ("tensor t: float32[H]\nmask: t[h, q] > 0", 2, 9, "`t` has 1 dimension(s) but 2 index(es)", "float32[H]"),
    ("tensor t: float32[H]\nscore: t[h * 0.5]", 2, 10, "an index must be an integer expression, not float32", "//"),
    ("tensor t: float32[H]\nscore: t[-1]", 2, 10, "negative index -1", "clamped"),
    ("tensor t: float32[H]\nscore: score + t", 2, 16, "`t` is a tensor of rank 1: index it", "t[h]"),
    ("mask: q - kv", 1, 7, "the mask must be a condition (bool), but this is int32", "q >= kv"),
    ("score: score & 1", 1, 14, "`&` needs bool or integer operands, not float32", "compare first"),
    ("mask: (q >= kv) - (q < 3)", 1, 17, "`-` on two bool values is not supported", "`&`"),
    ("mask: q >= kv & q < 8", 1, 19, "chained comparisons are not supported", "parenthesise each comparison"),
    ("mask: foo(q) > 0", 1, 7, "unknown function `foo`", "abs, exp"),
    ("mask: torch.foo(q) > 0", 1, 13, "unknown function `torch.foo`", "abs, exp"),
    ("mask: q.__class__(1)", 1, 9, "unknown method `.__class__()`", "float"),
    ("mask: q.shape > 0", 1, 9, "attributes are not supported: `.shape`", "x.float()"),
    ("score: clamp(score, lo=3)", 1, 8, "wrong arguments for `clamp`", "clamp(input, min=None, max=None)"),
    ("score: where(q > kv, score)", 1, 8, "wrong arguments for `where`", "where(condition, input, other)"),
    ("score: clamp(min=0, score)", 1, 21, "a positional argument after keyword arguments", ""),
    ("score: where(q, score, 0.0)", 1, 8, "torch.where needs a bool condition, not int32", "x != 0"),
    ("mask: exp < 3", 1, 7, "`exp` is a function: call it", ""),
    ("score: score + float32", 1, 14, "`+` cannot be applied to the dtype torch.float32", ".to"),
    ("mask: q >= kv\nmask: q < 8", 2, 1, "a second `mask:` statement", "one mask"),
    ("masks: q >= kv", 1, 1, "unknown statement `masks:`", "`mask: EXPR`"),
    ("parm window: int", 1, 1, "unknown statement `parm`", "`param NAME"),
    ("param q: int", 1, 7, "`q` is a reserved name", "an index"),
    ("param w: int\ntensor w: int32[B]", 2, 8, "`w` is declared twice (first on line 1)", ""),
    ("param w: int32", 1, 10, "unknown param type `int32`", "int or float"),
    ("param w: int = 2.5", 1, 16, "an int param cannot default to 2.5", "`float`"),
    ("param w: int[H]", 1, 13, "a param is a scalar and has no dims", "tensor w"),
    ("tensor t: float33[H]", 1, 11, "unknown dtype `float33`", "float32"),
    ("tensor t: float32[H] = 1", 1, 24, "a tensor has no default", ""),
    ("param n: int\nscore: score * 2 ** n", 2, 18, "an integer parameter as the exponent", "float"),
    ("mask: q < 10 ** 100", 1, 14, "the constant 10 ** 100 is too large", ""),
    ("score: score + 1 / 0", 1, 18, "the constant expression fails: division by zero", ""),
    ("mask: q < 3000000000", 1, 11, "the constant 3000000000 does not fit in int32", ""),
    ("mask: q < 0x_", 1, 11, "invalid number `0x_`", ""),
    ("let d = q - kv\nlet d = kv - q\nmask: d > 0", 2, 5, "`d` is defined twice (first on line 1)", ""),
    ("let a = b2 + 1\nlet b2 = q\nmask: a > 0", 1, 9, "`b2` is used before its definition (line 2)",
     "definitions above it"),
    ("let x = x + 1\nmask: x > 0", 1, 9, "`x` is used before its definition (line 1)", "definitions above it"),
    ("mask: q >= kv\nlet d = q - kv", 2, 1, "a `let` after `mask:` or `score:`", "define names before"),
    ("let q = kv\nmask: q > 0", 1, 5, "`q` is a reserved name", "an index"),
    ("let score = 1.0\nscore: score", 1, 5, "`score` is a reserved name", "the score"),
    ("param w: int\nlet w = 3\nmask: q < w", 2, 5, "`w` is already declared (line 1)", "`param w: int`"),
    ("tensor t: float32[H]\nlet t = 3\nmask: q < 3", 2, 5, "`t` is already declared (line 1)",
     "`tensor t: float32[H]`"),
    ("let s = score * 2\nmask: s > 0", 2, 7, "`s` reads `score`: it can be used only in `score:`", "b, h, q and kv"),
    ("let s = score * 2\nlet t = abs(s)\nmask: t > 0", 3, 7, "`t` reads `score`", "b, h, q and kv"),
    ("let d = q - kv\nmask: d[h] > 0", 2, 7, "`d` is a `let`, not a tensor", "declare it"),
    ("let d = q - windo\nmask: d > 0", 1, 13, "unknown name `windo`", "b, h, q, kv"),
    ("let dist = q - kv\nmask: dst > 0", 2, 7, "unknown name `dst`", "(dist)"),
    ("let d = q - kv\nmask: d", 2, 7, "the mask must be a condition (bool), but this is int32", "q >= kv"),
    ("let x: int = 3", 1, 1, "unknown statement `let`", "a `let` has no type: `let NAME = EXPR`"),
    ("lett x = 3", 1, 1, "unknown statement `lett`", "`let NAME = EXPR`"),
]


@pytest.mark.parametrize(("text", "line", "column", "problem", "hint"), SEMANTIC_ERRORS,
                         ids=[e[3][:40] for e in SEMANTIC_ERRORS])
def test_semantic_errors(text, line, column, problem, hint):
    assert_located(error_of(text), text, line, column, problem, hint)


def assert_located(error: TextError, text: str, line: int, column: int, problem: str, extra: str) -> None:
    rendered = str(error).splitlines()
    source_line = text.splitlines()[line - 1]
    assert rendered[0].startswith(f"<text>:{line}:{column}: {problem}")
    assert rendered[1] == f"    {source_line}"
    assert rendered[2].startswith(" " * (4 + column - 1) + "^") and not rendered[2].strip(" ^")
    assert extra in "\n".join(rendered[3:])


def test_nothing_in_the_text_is_executed(monkeypatch):
    parse("mask: q >= kv")  # the parser is built before eval and exec are taken away

    def forbidden(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("user text reached eval or exec")

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    for text in ("mask: __import__('os').system('true')", "mask: __import__(q) > 0", "mask: eval(q) > 0",
                 "mask: q.__class__.__bases__", "mask: exec > 0", "score: score.__add__(1)", "mask: globals"):
        with pytest.raises(TextError):
            parse(text)
    assert parse("mask: q >= kv").program == trace(*causal()).program
