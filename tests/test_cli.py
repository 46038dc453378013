"""The `attnc` command line, run in-process through `attnc.cli.main` (one subprocess for `python -m attnc`)."""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import shlex
import stat
import subprocess
import sys

import pytest
import torch

import attnc
from attnc import variants as V
from attnc.cli import Exit, main
from attnc.cli import bench as bench_cli
from attnc.cli.target import load_target
from attnc.codegen.backward import DKDV_KERNEL
from attnc.runtime.cache import KernelCache

ROOT = pathlib.Path(__file__).resolve().parents[1]
WINDOW_ALIBI = """\
# a causal window with an ALiBi-style bias
param window: int = 16
tensor slopes: float32[H]
mask: (q >= kv) & (q - kv < window)
score: score - slopes[h] * (q - kv)
"""
DOCUMENTS = "tensor doc_ids: int32[L]\nmask: doc_ids[q] == doc_ids[kv]\n"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def window_file(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "window.attn"
    path.write_text(WINDOW_ALIBI)
    return path


@pytest.fixture
def documents(tmp_path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """A .attn file reading document ids, and a torch.save file of ids: 3 documents over 96 tokens."""
    path, ids = tmp_path / "documents.attn", tmp_path / "ids.pt"
    path.write_text(DOCUMENTS)
    torch.save(torch.tensor([0] * 40 + [1] * 24 + [2] * 32, dtype=torch.int32), ids)
    return path, ids


def one_error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# -- help and usage ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [[], ["show"], ["viz"], ["check"], ["bench"], ["cache"], ["cache", "ls"],
                                     ["cache", "clear"], ["cache", "info"]])
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: attnc {' '.join(command)}".rstrip())
    if len(command) <= 1:
        assert "examples:" in out


def test_top_level_help_documents_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--help"])
    out = capsys.readouterr().out
    for code in range(4):
        assert re.search(rf"^  {code}  \S", out, re.MULTILINE), code


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == Exit.USAGE
    assert main(["show"]) == Exit.USAGE  # no variant
    assert main(["check", "causal", "--dtype", "float8"]) == Exit.USAGE
    assert main(["show", "causal", "--seq", "0"]) == Exit.USAGE
    assert "must be positive" in capsys.readouterr().err


def test_python_m_attnc() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "attnc", "--help"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage: attnc" in done.stdout and "exit codes:" in done.stdout


# -- show ------------------------------------------------------------------------------------------------------


def tile_counts(out: str) -> dict[str, int]:
    found = re.search(r"empty (\d+)  partial (\d+)  full (\d+)", out)
    assert found, out
    return dict(zip(("empty", "partial", "full"), map(int, found.groups()), strict=True))


@pytest.mark.parametrize(("spec", "mask_mod", "kv_seq"), [("causal", V.causal(), 1000),
                                                          ("sliding_window(64)", V.sliding_window(64), 700)])
def test_show_prints_ir_and_the_tile_stats(spec: str, mask_mod: V.MaskMod, kv_seq: int,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", spec, "--seq", "1000", "--kv-seq", str(kv_seq), "--block", "64"]) == 0
    out = capsys.readouterr().out
    expected = attnc.compile(mask_mod).tile_stats(1, 1, 1000, kv_seq, BLOCK_M=64, BLOCK_N=64)
    assert tile_counts(out) == expected
    assert expected["empty"] > 0 and expected["partial"] > 0
    assert "== IR as traced ==" in out and "== IR optimised ==" in out and "analytic" in out
    assert f"attnc show {shlex.quote(spec)} --source" in out
    assert "def attnc_forward" not in out


def test_show_library_variant_names_its_parameters(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", "sliding_window(64), alibi(4)", "--ir"]) == 0
    out = capsys.readouterr().out
    assert "p0 = window = 64" in out and "t0 = captured tensor float32[4]" in out
    assert "tiles:" not in out


def test_show_text_file_sources(window_file: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", str(window_file), "--source"]) == 0
    out = capsys.readouterr().out
    assert "def attnc_forward" in out and "IR" not in out
    assert main(["show", str(window_file), "--backward"]) == 0
    assert DKDV_KERNEL in capsys.readouterr().out


def test_show_text_file_tiles_need_no_score_tensor(window_file: pathlib.Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", str(window_file), "--seq", "256", "--block", "32", "--param", "window=40"]) == 0
    out = capsys.readouterr().out
    expected = attnc.compile(str(window_file)).tile_stats(1, 1, 256, 256, BLOCK_M=32, BLOCK_N=32,
                                                          slopes=torch.ones(2), window=40)
    assert tile_counts(out) == expected
    assert "t0 = tensor slopes: float32[H]" in out and "p0 = param window: int = 40" in out


def test_show_data_dependent_mask(documents: tuple[pathlib.Path, pathlib.Path],
                                  capsys: pytest.CaptureFixture[str]) -> None:
    path, ids = documents
    assert main(["show", str(path)]) == 0  # no tensor: the IR, and how to get the counts
    assert "pass --tensor doc_ids=PATH" in capsys.readouterr().out
    assert main(["show", str(path), "--tiles"]) == Exit.USAGE
    assert "--tensor doc_ids=PATH" in one_error_line(capsys.readouterr().err)
    assert main(["show", str(path), "--tiles", "--tensor", f"doc_ids={ids}", "--seq", "96", "--block", "16"]) == 0
    out = capsys.readouterr().out
    assert "data-dependent" in out
    ids_tensor = torch.load(ids, weights_only=True)
    assert tile_counts(out) == attnc.compile(str(path)).tile_stats(1, 1, 96, 96, BLOCK_M=16, BLOCK_N=16,
                                                                   doc_ids=ids_tensor)


@pytest.mark.parametrize(("arguments", "message"), [
    (["--param", "window=1.5"], "needs an int"),
    (["--param", "size=3"], "declares no param `size`"),
    (["--tensor", "slopes"], "expected NAME=PATH"),
    (["--tensor", "slopes=missing.pt"], "cannot load missing.pt"),
])
def test_bad_values_for_a_text_file(window_file: pathlib.Path, arguments: list[str], message: str,
                                    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(window_file.parent)
    assert main(["show", str(window_file), *arguments]) == Exit.USAGE
    assert message in one_error_line(capsys.readouterr().err)


def test_text_syntax_errors_are_shown_as_is(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.attn"
    path.write_text("mask: q >= kv and q < 3\n")
    assert main(["show", str(path)]) == Exit.USAGE
    err = capsys.readouterr().err
    assert f"{path}:1:15: unexpected `and`" in err and "^^^" in err and "Traceback" not in err


# -- variants that must be refused -------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "message"), [
    ("os.system('touch {marker}')", "is not a variant"),
    ("__import__('os').system('touch {marker}')", "is not a variant"),
    ("sliding_window(__import__('os').system('touch {marker}'))", "is not a literal"),
    ("__import__('os')", "unknown variant family `__import__`"),
    ("no_such_family(3)", "unknown variant family `no_such_family`"),
    ("key_padding([3, 4])", "`key_padding` needs a tensor `lengths` that a literal cannot give"),
    ("sliding_window", "missing a required argument: 'window'"),
    ("alibi(4) & causal", "is a score mod"),
    ("causal(", "is not a variant"),
    ("sliding_window(-1)", "sliding_window"),
])
def test_invalid_variants_exit_2_and_run_nothing(spec: str, message: str, tmp_path: pathlib.Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "executed"
    assert main(["show", spec.format(marker=marker)]) == Exit.USAGE
    line = one_error_line(capsys.readouterr().err)
    assert message in line
    assert not marker.exists()
    if "needs a tensor" in message:
        assert "--tensor lengths=PATH" in line and ".npy" in line


def test_variant_calls_compose() -> None:
    target = load_target(argparse.Namespace(variant="causal() & ~prefix_lm(8) | sliding_window(4), softcap(20.0)",
                                            tensor=[], param=[]))
    mask_mod, score_mod = target.mods
    assert mask_mod == (V.causal() & ~V.prefix_lm(8)) | V.sliding_window(4)
    assert score_mod == V.softcap(20.0)
    assert load_target(argparse.Namespace(variant="gemma2(1)", tensor=[], param=[])).mods == tuple(V.gemma2(1))


def test_traceback_flag_shows_the_error() -> None:
    with pytest.raises(Exception, match="unknown variant family"):
        main(["--traceback", "show", "nope"])


# -- viz ---------------------------------------------------------------------------------------------------------


def test_viz_writes_pngs(tmp_path: pathlib.Path, documents: tuple[pathlib.Path, pathlib.Path],
                         capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    library, text = tmp_path / "alibi.png", tmp_path / "documents.png"
    assert main(["viz", "causal, alibi(2)", "-o", str(library), "--seq", "96", "--block", "32"]) == 0
    path, ids = documents
    assert main(["viz", str(path), "--tensor", f"doc_ids={ids}", "-o", str(text), "--seq", "96", "--block", "16"]) == 0
    assert library.read_bytes()[:8] == PNG and text.read_bytes()[:8] == PNG
    assert f"wrote {text}" in capsys.readouterr().out
    assert main(["viz", str(path), "-o", str(text)]) == Exit.USAGE
    assert "--tensor doc_ids=PATH" in one_error_line(capsys.readouterr().err)


def test_viz_without_matplotlib(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    assert main(["viz", "causal", "-o", str(tmp_path / "m.png")]) == Exit.MISSING
    assert "pip install" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "m.png").exists()


# -- check -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arguments", [
    ["causal", "--seq", "64"],
    ["sliding_window(32), alibi(2)", "--seq", "48", "--kv-seq", "80", "--kv-heads", "1", "--backward"],
    ["chunked_causal(16)", "--seq", "40", "--dtype", "float16"],
])
def test_check_passes(arguments: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", *arguments, "--head-dim", "16"]) == Exit.OK
    out = capsys.readouterr().out
    assert out.rstrip().endswith("PASS")
    names = ("out", "lse", "dq", "dk", "dv", "grad t0") if "--backward" in arguments else ("out", "lse")
    assert all(re.search(rf"^{re.escape(n)} .* ok$", out, re.MULTILINE) for n in names), out


def test_check_text_file_with_tensor_and_param(window_file: pathlib.Path, tmp_path: pathlib.Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    slopes = tmp_path / "slopes.pt"
    torch.save(torch.tensor(V.alibi_slopes(2)), slopes)
    assert main(["check", str(window_file), "--tensor", f"slopes={slopes}", "--param", "window=24", "--seq", "64",
                 "--head-dim", "16", "--backward"]) == Exit.OK
    out = capsys.readouterr().out
    assert re.search(r"^grad slopes .* ok$", out, re.MULTILINE) and out.rstrip().endswith("PASS")


def test_check_names_missing_tensors(window_file: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(window_file)]) == Exit.USAGE
    assert "--tensor slopes=PATH" in one_error_line(capsys.readouterr().err)


def test_check_fails_on_a_wrong_kernel(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # the kernel and the reference disagree by one everywhere: shifting the reference's output is the same test
    # as shifting the kernel's, and leaves the kernel's call path alone
    from attnc.cli import check as check_cli

    reference = check_cli.reference_attention

    def off_by_one(*args: object, **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
        out, lse = reference(*args, **kwargs)
        return out + 1.0, lse

    monkeypatch.setattr(check_cli, "reference_attention", off_by_one)
    assert main(["check", "causal", "--seq", "32", "--head-dim", "16"]) == Exit.CHECK_FAILED
    out = capsys.readouterr().out
    assert re.search(r"^out .* ABOVE TOLERANCE$", out, re.MULTILINE) and "FAIL: out" in out


# -- bench -------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path; a GPU times peers at full size")
def test_bench_on_cpu_says_it_is_not_performance(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "sliding_window(16)", "--seq", "32", "48", "--heads", "1", "--head-dim", "16"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^\s+32\s+1 attnc\s+\d", out, re.MULTILINE) and re.search(r"^\s+48\s+1 attnc", out, re.M)
    assert "not performance" in out


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_bench_peers_agree_and_count_pairs() -> None:
    """The GPU path's pieces, on the CPU: eager flex_attention and SDPA agree with attnc, FLOPs count pairs."""
    target = load_target(argparse.Namespace(variant="sliding_window(16)", tensor=[], param=[]))
    case = bench_cli.make_case(1, 2, 48, 16, torch.float32, False, torch.device("cpu"))
    notes: list[str] = []
    steps = {"attnc": case.step(lambda: target.attn(case.q, case.k, case.v, backend="triton"))}
    steps |= bench_cli.peer_steps(target, case, target.bindings(), notes, compile_flex=False)
    assert set(steps) == {"attnc", "flex", "sdpa"} and notes == []
    assert bench_cli.agreement(steps, case, 48) == []
    pairs = bench_cli.allowed_pairs(target.attn.program, target.bindings(), 1, 2, 48, 48, torch.device("cpu"))
    assert pairs == 2 * (16 * 17 // 2 + 32 * 16)
    scored = load_target(argparse.Namespace(variant="causal, alibi(2)", tensor=[], param=[]))
    assert bench_cli.sdpa_step(scored, case, scored.bindings()) == "SDPA has no score mod"


# -- cache -------------------------------------------------------------------------------------------------------


@pytest.fixture
def cache_dir(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    """A private cache directory holding one kernel, its compiled copy, and files that are not ours."""
    directory = tmp_path / "cache"
    monkeypatch.setenv("ATTNC_CACHE_DIR", str(directory))
    kernel = KernelCache(directory).ensure_file(attnc.compile(V.causal()).source.source)
    (directory / "__pycache__").mkdir()
    (directory / "__pycache__" / f"{kernel.stem}.cpython-311.pyc").write_bytes(b"compiled")
    (directory / "__pycache__" / "other.cpython-311.pyc").write_bytes(b"not ours")
    (directory / "notes.txt").write_text("not ours")
    return directory


def test_cache_ls_and_info(cache_dir: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    kernel = next(cache_dir.glob("attnc_*.py"))
    assert main(["cache", "ls"]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"^{kernel.name} forward .* yes$", out, re.MULTILINE) and "1 kernel file," in out
    assert "notes.txt" not in out
    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert f"directory: {cache_dir}" in out and "kernel files: 1 " in out and "trusted: yes" in out
    cache_dir.chmod(0o777)
    assert main(["cache", "info"]) == 0
    assert "trusted: no" in capsys.readouterr().out
    cache_dir.chmod(stat.S_IRWXU)


def test_cache_clear_removes_only_kernels(cache_dir: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = sorted(p.relative_to(cache_dir) for p in cache_dir.rglob("*"))
    assert main(["cache", "clear", "--dry-run"]) == 0
    assert "would remove 1 kernel file" in capsys.readouterr().out
    assert sorted(p.relative_to(cache_dir) for p in cache_dir.rglob("*")) == before
    assert main(["cache", "clear"]) == 0
    out = capsys.readouterr().out
    assert out.count("removed ") == 3 and ".cpython-311.pyc" in out  # the kernel, its compiled copy, the total
    left = sorted(str(p.relative_to(cache_dir)) for p in cache_dir.rglob("*"))
    assert left == ["__pycache__", "__pycache__/other.cpython-311.pyc", "notes.txt"]


def test_cache_without_a_directory(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ATTNC_CACHE_DIR", str(tmp_path / "absent"))
    for action in ("ls", "info", "clear"):
        assert main(["cache", action]) == 0
        assert "no kernel cache at" in capsys.readouterr().out
    assert not (tmp_path / "absent").exists()


# ---- attnc tune ----


def test_tune_dry_run_lists_candidates_and_hopper_options(capsys) -> None:
    assert main(["tune", "sliding_window(1024)", "--shape", "4,16,2048,64", "--dry-run", "--backward",
                 "--limit", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("tile candidates for sm_90") == 3
    assert "(default)" in out and "Hopper variants" in out


def test_tune_dry_run_aot_reports_registers_and_spills(capsys) -> None:
    assert main(["tune", "causal", "--shape", "1,1,1024,64", "--dry-run", "--aot", "--limit", "2"]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("registers") == 2 and "spills" in captured.out
    # not a terminal: a line per compiled config instead of a bar
    assert "compiling 2 configs for sm_90" in captured.err
    assert "compiled 1/2" in captured.err and "compiled 2/2" in captured.err


@pytest.mark.parametrize("terminal", [True, False])
def test_tune_compile_progress(terminal: bool, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    from attnc.cli import tune

    pytest.importorskip("tqdm")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal)
    with tune._compile_progress("forward sm_90", 3) as tell:
        for done in (0, 2, 3):  # the compiles of a batch may finish together
            tell(done, 3)
    err = capsys.readouterr().err
    if terminal:
        assert "forward sm_90" in err and "3/3" in err and "compiled" not in err
    else:
        assert [line.strip() for line in err.splitlines()[1:]] == [f"[forward sm_90] compiled {n}/3" for n in (1, 2, 3)]


def test_tune_without_a_gpu_exits_3_and_says_what_to_do(capsys) -> None:
    assert main(["tune", "causal", "--shape", "1,1,64,64"]) == 3
    assert "--dry-run" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["tune", "causal", "--shape", "1,1,64"], ["tune", "causal", "--shape", "0,1,64,64"],
                                  ["tune", "causal", "--shape", "1,1,64,64", "--aot"]])
def test_tune_usage_errors(argv) -> None:
    assert main(argv) == 2


@pytest.mark.parametrize("with_tqdm", [True, False])
def test_tune_progress_reports_each_config(with_tqdm, monkeypatch, capsys) -> None:
    from attnc.cli import tune
    from attnc.runtime.config import KernelConfig

    if with_tqdm:
        monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # a bar is drawn on a terminal only
    else:
        monkeypatch.setitem(sys.modules, "tqdm", None)  # import fails
    config = KernelConfig(64, 32, 4, 2, tma=True)
    with tune._progress("4x16x2048x64") as tell:
        tell("forward", config, 0.25)
        tell("forward", config, None)
    err = capsys.readouterr().err
    if with_tqdm:
        assert "forward0.250ms" in err.replace(" ", "") and "4x16x2048x64" in err
    else:
        assert "0.250 ms" in err and "tma" in err


# ---- start-up: --help and `import attnc` load neither torch nor triton ----


def run_python(code: str, **env: str) -> str:
    environment = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    environment |= {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), **env}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment,
                          timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_help_imports_neither_torch_nor_triton() -> None:
    out = run_python("""
import contextlib, io, sys
from attnc.cli import main
for argv in (["--help"], ["show", "--help"], ["viz", "--help"], ["check", "--help"], ["bench", "--help"],
             ["tune", "--help"], ["inspect", "--help"], ["cache", "--help"], ["cache", "ls", "--help"]):
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(argv) == 0, argv
print(sorted(m for m in ("torch", "triton", "numpy", "sympy", "lark") if m in sys.modules))
""")
    assert out.strip() == "[]"


def test_import_attnc_is_lazy_and_keeps_every_public_name() -> None:
    out = run_python("""
import os, sys
import attnc
print("torch" in sys.modules, "triton" in sys.modules)
from attnc import *  # every name of __all__
from attnc import variants as V
assert all(getattr(attnc, name) is globals()[name] for name in attnc.__all__)
from attnc.dsl.trace import TraceError as trace_error
assert attnc.compile is attnc.api.compile and attnc.TraceError is trace_error
assert callable(attnc.variants.causal) and attnc.__version__
assert set(attnc.__all__) <= set(dir(attnc)) and "variants" in dir(attnc)
try:
    attnc.no_such_name
except AttributeError as error:
    print(error)
""")
    assert out.splitlines() == ["False False", "module 'attnc' has no attribute 'no_such_name'"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter is switched on only without a GPU")
@pytest.mark.parametrize("first_import", ["import attnc; import triton", "import attnc.api",
                                          "import attnc.runtime.cache", "from attnc import flex_attention"])
def test_interpreter_is_on_whichever_way_triton_is_reached(first_import: str) -> None:
    out = run_python(f"""
{first_import}
import os
from attnc.runtime.interpreter import interpreter_active
print(os.environ.get("TRITON_INTERPRET"), interpreter_active())
""")
    assert out.split() == ["1", "True"]


def test_subpackages_load_on_attribute_access() -> None:
    out = run_python("""
import importlib.util, sys
import attnc
names = [n for n in ("variants", "nn", "natten", "integrations", "serving")
         if importlib.util.find_spec(f"attnc.{n}") is not None]  # the ones that are there
assert not [n for n in names if f"attnc.{n}" in sys.modules]  # nothing loaded yet
for name in names:
    assert getattr(attnc, name) is sys.modules[f"attnc.{name}"], name
    assert name in dir(attnc), name
print("ok")
""")
    assert out.strip() == "ok"


def test_import_attnc_leaves_a_chosen_interpreter_setting() -> None:
    out = run_python("import attnc, triton, os; print(os.environ['TRITON_INTERPRET'])", TRITON_INTERPRET="0")
    assert out.strip() == "0"


# ---- "did you mean" ----


@pytest.mark.parametrize(("argv", "hint"), [
    (["show", "causl"], "did you mean `causal`"),
    (["show", "sliding_windw(64)"], "did you mean `sliding_window`"),
    (["show", "sliding_window(64, causl=False)"], "did you mean `causal`"),
    (["show", "document", "--tensor", "doc_id=ids.pt"], "did you mean `doc_ids`"),
])
def test_misspellings_get_a_suggestion(argv: list[str], hint: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == Exit.USAGE
    assert hint in one_error_line(capsys.readouterr().err)


def test_window_file_param_names_get_a_suggestion(window_file: pathlib.Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", str(window_file), "--param", "windw=3"]) == Exit.USAGE
    assert "declares no param `windw` (did you mean `window`?)" in one_error_line(capsys.readouterr().err)


def test_the_parser_offers_the_dtypes_and_passes_the_commands_know() -> None:
    from attnc.cli import bench, devices, inspect_cmd, parsers

    assert tuple(devices.DTYPES) == parsers.DTYPE_NAMES
    assert tuple(inspect_cmd.DTYPES) == parsers.INSPECT_DTYPE_NAMES
    assert tuple(bench.FLOPS_PER_PAIR) == parsers.PASSES


@pytest.mark.parametrize(("argv", "hint"), [
    (["shwo", "causal"], "did you mean `show`"),
    (["check", "causal", "--dtype", "float23"], "did you mean `float32`"),
    (["show", "causal", "--sqe", "64"], "`--seq`"),
])
def test_misspelled_commands_and_options_get_a_suggestion(argv: list[str], hint: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == Exit.USAGE
    assert hint in capsys.readouterr().err


# ---- tensors of library variants ----


def dense_tile_counts(allowed: torch.Tensor, block: int) -> dict[str, int]:
    """Tile classes counted from a dense boolean mask, independently of attnc's analysis."""
    counts = {"empty": 0, "partial": 0, "full": 0}
    for q0 in range(0, allowed.shape[0], block):
        for k0 in range(0, allowed.shape[1], block):
            tile = allowed[q0:q0 + block, k0:k0 + block]
            counts["full" if bool(tile.all()) else "empty" if not bool(tile.any()) else "partial"] += 1
    return counts


@pytest.mark.parametrize("suffix", [".pt", ".npy"])
def test_library_variant_takes_a_tensor_from_a_file(suffix: str, tmp_path: pathlib.Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    import numpy

    ids = torch.tensor([0] * 20 + [1] * 4 + [2] * 24, dtype=torch.int32)
    path = tmp_path / f"ids{suffix}"
    torch.save(ids, path) if suffix == ".pt" else numpy.save(path, ids.numpy())
    assert main(["show", "causal() & document", "--tensor", f"doc_ids={path}", "--seq", "48", "--block", "8",
                 "--tiles"]) == 0
    out = capsys.readouterr().out
    assert "synthetic" not in out
    positions = torch.arange(48)
    allowed = (ids[:, None] == ids[None, :]) & (positions[:, None] >= positions[None, :])
    assert tile_counts(out) == dense_tile_counts(allowed, 8)
    assert main(["check", "document", "--tensor", f"document.doc_ids={path}", "--seq", "48", "--head-dim", "16"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("PASS")


def test_show_uses_a_synthetic_tensor_and_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", "document", "--seq", "64", "--block", "8", "--tiles"]) == 0
    out = capsys.readouterr().out
    assert "note: document: no --tensor doc_ids=PATH given; using a synthetic doc_ids: 4 documents" in out
    ids = torch.arange(64) // 16  # the documented stand-in: 4 documents of equal length
    assert tile_counts(out) == dense_tile_counts(ids[:, None] == ids[None, :], 8)


@pytest.mark.parametrize("spec", ["document", "key_padding", "bigbird(16)", "moba(block=16, top_k=1)",
                                  "causal, relative_bias", "causal, t5_bias", "t5_bias_lookup(num_buckets=16)",
                                  "document_from_lengths"])
def test_every_tensor_family_has_a_stand_in(spec: str, tmp_path: pathlib.Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    picture = tmp_path / "v.png"
    assert main(["viz", spec, "--seq", "64", "--block", "16", "-o", str(picture)]) == 0
    assert "using a synthetic" in capsys.readouterr().out and picture.read_bytes().startswith(PNG)


def test_bench_announces_its_synthetic_tensor(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "document", "--seq", "32", "--head-dim", "16", "--heads", "1"]) == 0
    assert "note: document: no --tensor doc_ids=PATH given; using a synthetic" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "message"), [
    (["check", "document"], "--tensor doc_ids=PATH"),
    (["show", "document", "--tensor", "doc_ids=missing.pt"], "--tensor doc_ids: cannot load missing.pt"),
    (["show", "causal", "--tensor", "doc_ids=ids.pt"], "the tensor arguments it takes: none"),
    (["show", "causal", "--param", "w=1"], "--param binds the params of a .attn file"),
])
def test_library_tensor_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == Exit.USAGE
    assert message in one_error_line(capsys.readouterr().err)


def test_a_file_holding_a_wrong_tensor_is_named(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    floats = tmp_path / "floats.pt"
    torch.save(torch.zeros(8), floats)
    assert main(["show", "document", "--tensor", f"doc_ids={floats}"]) == Exit.USAGE
    assert "document: doc_ids is an integer tensor" in one_error_line(capsys.readouterr().err)


def test_tune_compile_reports_tell_their_progress() -> None:
    """The dry run's compile reports each config as it finishes."""
    from attnc.runtime import autotune, tuning

    attn = attnc.compile(V.causal())
    configs = autotune.tile_candidates("forward", "sm_90", 32, 32, 2, 2)
    told: list[tuple[int, int]] = []
    report = tuning.aot_report(attn, "forward", configs, arch="sm_90", dtype=torch.bfloat16, D=32, Dv=32,
                               progress=lambda done, total: told.append((done, total)))
    assert set(report) == set(configs) and all("spills" in facts for facts in report.values())
    assert told[-1] == (2, 2) and all(total == 2 for _, total in told)
