"""The README's quickstart and the examples run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_readme_quickstart_runs():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert blocks, "README has no python block"
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {"__name__": "readme"})


def test_demo_runs_and_every_variant_matches():
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "demo.py")], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all variants match the reference" in proc.stdout


def test_sparsity_example_runs(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "sparsity.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".png"] * 4


def _run(script: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _max_error(stdout: str) -> float:
    return max(float(m) for m in re.findall(r"max \|[^|]+\| = ([0-9.e+-]+)", stdout))


@pytest.mark.parametrize("script", ["quickstart.py", "new_variant.py", "alibi_sliding_window.py", "natten_2d.py",
                                    "from_text.py", "decode_paged_cache.py"])
def test_examples_run_and_match_the_reference(script):
    stdout = _run(script)
    assert _max_error(stdout) < 1e-5, stdout


def test_training_example_lowers_the_loss():
    stdout = _run("train_document_masking.py")
    first, last = (float(x) for x in re.search(r"loss fell from ([0-9.]+) to ([0-9.]+)", stdout).groups())
    assert last < first


def test_context_parallel_training_example_lowers_the_loss():
    stdout = _run("train_context_parallel.py")
    first, last = (float(x) for x in re.search(r"loss fell from ([0-9.]+) to ([0-9.]+)", stdout).groups())
    assert last < first / 2
