"""The kernel cache: atomic, verified, private; runtime parameters never recompile."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest
import torch

import attnc
from attnc.api import kernel_cache
from attnc.runtime.cache import CacheError, KernelCache
from tests.zoo import DEVICE

SOURCE = "import triton\nimport triton.language as tl\n\n\n@triton.jit\ndef k(X):\n    pass\n"


def test_writes_then_reuses_a_verified_file(tmp_path):
    cache = KernelCache(tmp_path / "c")
    path = cache.ensure_file(SOURCE)
    assert path.read_text().endswith(SOURCE) and cache.stats.sources_written == 1
    cache.ensure_file(SOURCE)
    assert cache.stats.sources_written == 1
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)
    assert oct((tmp_path / "c").stat().st_mode & 0o777) == oct(0o700)


@pytest.mark.parametrize("damage", ["truncate", "corrupt", "foreign", "empty", "binary"])
def test_damaged_files_are_rewritten_never_imported(tmp_path, damage):
    cache = KernelCache(tmp_path / "c")
    path = cache.ensure_file(SOURCE)
    text = path.read_text()
    damaged = {
        "truncate": text[: len(text) // 2],
        "corrupt": text.replace("pass", "raise SystemExit(3)"),
        "foreign": "raise SystemExit(3)\n",
        "empty": "",
        "binary": None,
    }[damage]
    if damaged is None:
        path.write_bytes(b"\xff\xfe\x00garbage")
    else:
        path.write_text(damaged)
    fresh = KernelCache(tmp_path / "c")
    module = fresh.module(SOURCE)  # would exit the test process if the damaged file were imported
    assert hasattr(module, "k")
    assert fresh.stats.rejected_files == 1 and fresh.stats.sources_written == 1
    assert path.read_text() == text


def test_refuses_a_directory_others_can_write(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    with pytest.raises(CacheError, match="writable by others"):
        KernelCache(shared).module(SOURCE)


def _source(i: int) -> str:
    return SOURCE.replace("def k(", f"def k{i}(")


def _import_many(directory: str, n: int) -> list[str]:
    """Import n kernels that other processes are creating at the same moment."""
    names = []
    for i in range(n):
        module = KernelCache(Path(directory)).module(_source(i))
        names.append(getattr(module, f"k{i}").__name__)
    return names


def test_concurrent_writers_are_safe(tmp_path):
    directory = tmp_path / "c"
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        results = pool.starmap(_import_many, [(str(directory), 12)] * 4)
    assert all(names == [f"k{i}" for i in range(12)] for names in results)
    assert not [p for p in directory.iterdir() if p.name.startswith(".tmp-")]
    verifier = KernelCache(directory)
    for i in range(12):
        verifier.ensure_file(_source(i))
    assert verifier.stats.rejected_files == 0 and verifier.stats.sources_written == 0


def test_runtime_parameter_change_does_not_recompile():
    window = 8

    def mask(b, h, q, kv):
        return (q >= kv) & (q - kv < window)

    attn = attnc.compile(mask)
    q, k, v = (torch.randn(1, 1, 40, 16, device=DEVICE) for _ in range(3))
    first = attn(q, k, v, backend="triton")
    stats = kernel_cache().stats
    imported, written, program = stats.modules_imported, stats.sources_written, attn.program
    window = 30
    second = attn(q, k, v, backend="triton")
    assert (stats.modules_imported, stats.sources_written) == (imported, written)
    assert attn.program is program
    assert not torch.allclose(first, second)
    torch.testing.assert_close(second, attn(q, k, v, backend="reference"), atol=2e-5, rtol=2e-5)
