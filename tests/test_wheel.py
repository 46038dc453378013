"""`pip install attnc` from a built wheel: the wheel holds the kernel skeletons and the grammar, and the
installed `attnc` command runs outside the checkout.

The wheel is built from a copy of the package (so concurrent edits and build/ stay out of the checkout) and
installed without dependencies into a virtual environment that sees this interpreter's packages
(--system-site-packages), so torch is not downloaded again. Build isolation fetches setuptools from the
package index. `slow` (about half a minute) but selected by default, so CI runs it.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TEMPLATES = sorted(p.name for p in (ROOT / "attnc" / "codegen" / "templates").glob("*.py"))
TEXT_VARIANT = "param window: int = 8\nmask: (q >= kv) & (q - kv < window)\n"

pytestmark = pytest.mark.slow


def run(command: list[str | pathlib.Path], cwd: pathlib.Path, timeout: int = 600) -> str:
    environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run([str(part) for part in command], cwd=cwd, capture_output=True, text=True,
                          env=environment, timeout=timeout)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    source = tmp_path_factory.mktemp("source")
    shutil.copytree(ROOT / "attnc", source / "attnc", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("wheels")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", out, source], cwd=source)
    (built,) = out.glob("attnc-*.whl")
    return built


def test_the_wheel_holds_the_skeletons_and_the_grammar(wheel: pathlib.Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert TEMPLATES and {f"attnc/codegen/templates/{t}" for t in TEMPLATES} <= names
    assert "attnc/dsl/grammar.lark" in names
    assert "attnc/cli/__init__.py" in names and "attnc/runtime/aot_worker.py" in names
    assert not any(name.startswith(("tests/", "examples/", "benchmarks/")) for name in names)


def test_the_installed_command_runs_outside_the_checkout(wheel: pathlib.Path, tmp_path: pathlib.Path) -> None:
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv], cwd=tmp_path)
    python, attnc = venv / "bin" / "python", venv / "bin" / "attnc"
    # this interpreter's pip installs into the venv: no pip bootstrapped there, nothing downloaded
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--quiet", wheel], cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    location = run([python, "-c", "import attnc; print(attnc.__file__)"], cwd=elsewhere).strip()
    assert pathlib.Path(location).is_relative_to(venv), location  # the wheel's copy, not the checkout's
    assert attnc.exists()
    assert "usage: attnc" in run([attnc, "--help"], cwd=elsewhere)
    # the skeletons and the grammar are found where the wheel put them
    source = run([attnc, "show", "causal", "--source"], cwd=elsewhere)
    assert "@triton.jit" in source
    (elsewhere / "window.attn").write_text(TEXT_VARIANT)
    assert "IR optimised" in run([attnc, "show", "window.attn"], cwd=elsewhere)
