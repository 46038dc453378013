"""Fault injection for the kernel cache, the tuning file and kernel options: each fault is injected and the
behaviour pinned (issue 13, items 2, 3, 6 and 7).

- Only verified code runs: a forged or truncated `.pyc` beside a kernel is never loaded, and loading writes
  no `__pycache__`; what `@triton.jit` reads through `inspect` is the verified text.
- Options are checked before anything launches: bad `kernel_options` name the option; bad `tuning.json`
  entries are ignored with a warning and dropped at the next write.
- No lost writes: concurrent tuners keep every entry; `attnc cache clear` removes only attnc's files.
- Faults are reported, never hung on: a FIFO, a directory, a full or read-only directory, a deeply nested
  tuning file each give a message naming the path, and kernels or tunings stay in memory.
"""

from __future__ import annotations

import errno
import fcntl
import importlib.util
import inspect
import json
import linecache
import marshal
import multiprocessing
import os
import re
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import triton.runtime.jit

import attnc
from attnc.cli import main
from attnc.runtime import cache as cache_module
from attnc.runtime import launch, tuning, tuning_store
from attnc.runtime.autotune import TuneKey, Tuner, default_ladder, shape_bucket
from attnc.runtime.cache import CacheError, CacheWarning, KernelCache
from attnc.runtime.config import KernelConfig
from attnc.runtime.tuning_store import TUNING_FILE, TuningWarning

SOURCE = ("import triton\nimport triton.language as tl\n\n\n@triton.jit\ndef k(X):\n    pass\n\n\n"
          "def plain(x):\n    return x + 1\n")
# Long enough for any of these operations; reached only if one hangs, which is the failure being tested.
HANG_GUARD_S = 120
CONFIG = KernelConfig(64, 32, 4, 2)
KEY = TuneKey("NVIDIA H200", "kernel-abc", shape_bucket(2, 8, 1000, 1000, 64, 64))


def _source(i: int) -> str:
    return SOURCE.replace("def plain(", f"def plain{i}(")


def _kernel_path(directory: Path, source: str = SOURCE) -> Path:
    body = cache_module.version_header() + source
    return directory / cache_module.kernel_name(cache_module.content_hash(body))


def _without_hanging(fn: Callable[[], Any]) -> Any:
    """fn(), run in a thread so that a hang fails the test instead of stalling the suite."""
    result: list[Any] = []
    worker = threading.Thread(target=lambda: result.append(fn()), daemon=True)
    worker.start()
    worker.join(HANG_GUARD_S)
    assert not worker.is_alive(), "the operation hung"
    assert result, "the operation raised (see the thread's traceback)"
    return result[0]


# ---- item 2: only verified code runs ----


def _forge_pyc(kernel: Path, code: str) -> Path:
    """A `.pyc` for `kernel` that Python's import system would accept: its header carries the kernel file's
    modification time and size."""
    info = kernel.stat()
    header = importlib.util.MAGIC_NUMBER + (0).to_bytes(4, "little")
    header += int(info.st_mtime).to_bytes(4, "little") + (info.st_size & 0xFFFFFFFF).to_bytes(4, "little")
    pyc = Path(importlib.util.cache_from_source(str(kernel)))
    pyc.parent.mkdir(exist_ok=True)
    pyc.write_bytes(header + marshal.dumps(compile(code, str(kernel), "exec")))
    return pyc


def test_a_forged_pyc_beside_a_kernel_never_runs(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    kernel = KernelCache(directory).ensure_file(SOURCE)
    pyc = _forge_pyc(kernel, "forged = True\n")
    module = KernelCache(directory).module(SOURCE)
    assert not hasattr(module, "forged") and module.plain(1) == 2
    assert pyc.read_bytes().startswith(importlib.util.MAGIC_NUMBER)  # left alone, never read


def test_a_truncated_pyc_does_not_break_loads(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    kernel = KernelCache(directory).ensure_file(SOURCE)
    _forge_pyc(kernel, "forged = True\n").write_bytes(importlib.util.MAGIC_NUMBER[:2])
    for _ in range(2):
        assert KernelCache(directory).module(SOURCE).plain(2) == 3


def test_loading_writes_no_bytecode(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    KernelCache(directory).module(SOURCE)
    assert [p.name for p in directory.iterdir()] == [_kernel_path(directory).name]


def test_a_kernel_file_corrupted_after_loading_is_repaired_for_later_loads(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    KernelCache(directory).module(SOURCE)
    kernel = _kernel_path(directory)
    kernel.write_text(kernel.read_text()[:40])
    fresh = KernelCache(directory)
    assert fresh.module(SOURCE).plain(0) == 1 and fresh.stats.rejected_files == 1
    later = KernelCache(directory)
    later.module(SOURCE)
    assert later.stats.rejected_files == later.stats.sources_written == 0


def test_jit_reads_the_verified_text_not_the_file(tmp_path: Path) -> None:
    """`@triton.jit` (the GPU's JITFunction, not the interpreter's) takes its source from `inspect`: it
    gets the verified text even when the file changes after the import."""
    directory = tmp_path / "c"
    module = KernelCache(directory).module(SOURCE)
    _kernel_path(directory).write_text("def plain(x):\n    return 'tampered'\n")
    assert inspect.getsource(module.plain) == "def plain(x):\n    return x + 1\n"
    jitted = triton.runtime.jit.JITFunction(module.plain)
    assert jitted.src == "def plain(x):\n    return x + 1\n"
    assert jitted.file_name == str(_kernel_path(directory))


# ---- item 3: options are validated before anything launches ----


@pytest.mark.parametrize(("options", "message"), [
    ({"BLOCK_M": -16}, "kernel_options['BLOCK_M']=-16 is invalid: BLOCK_M must be a power of two from 16 to 256"),
    ({"BLOCK_N": 48}, "kernel_options['BLOCK_N']=48 is invalid: BLOCK_N must be a power of two from 16 to 256"),
    ({"BLOCK_M": 512}, "kernel_options['BLOCK_M']=512 is invalid: BLOCK_M must be a power of two from 16 to 256"),
    ({"BLOCK_M": 32.0}, "kernel_options['BLOCK_M']=32.0 is invalid: BLOCK_M must be an integer"),
    ({"BLOCK_M": True}, "kernel_options['BLOCK_M']=True is invalid: BLOCK_M must be an integer"),
    ({"num_warps": 3}, "kernel_options['num_warps']=3 is invalid: num_warps must be one of 1, 2, 4, 8, 16"),
    ({"num_stages": 0}, "kernel_options['num_stages']=0 is invalid: num_stages must be from 1 to 8"),
    ({"num_stages": 9}, "kernel_options['num_stages']=9 is invalid: num_stages must be from 1 to 8"),
    ({"USE_TMA": "yes"}, "kernel_options['USE_TMA']='yes' is invalid: USE_TMA must be True or False"),
    ({"WARP_SPECIALIZE": 1}, "kernel_options['WARP_SPECIALIZE']=1 is invalid: WARP_SPECIALIZE must be True or False"),
    ({"BLOCK_K": 64}, "unknown kernel_options ['BLOCK_K']; known: ['BACKEND', 'BLOCKS_ARE_CONTIGUOUS', 'BLOCK_M'"),
    ([("BLOCK_M", 16)], "kernel_options must be a dict of option names to values, got list"),
])
def test_invalid_kernel_options_are_named_before_any_launch(options: Any, message: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def launched(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a kernel launched with invalid options")

    monkeypatch.setattr(launch, "launch_forward", launched)
    q = torch.randn(1, 1, 20, 16)
    with pytest.raises(ValueError, match=f"^attnc: {re.escape(message)}"):
        attnc.flex_attention(q, q, q, backend="triton", kernel_options=options)


def test_integer_types_are_accepted_as_options() -> None:
    q = torch.randn(1, 1, 20, 16)
    options = {"BLOCK_M": np.int64(16), "BLOCK_N": torch.tensor(32), "USE_TMA": False}
    out = attnc.flex_attention(q, q, q, backend="triton", kernel_options=options)
    torch.testing.assert_close(out, attnc.flex_attention(q, q, q, backend="reference"), atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize(("field", "value"), [("block_m", 3), ("block_n", 0), ("num_warps", 32),
                                              ("num_stages", -1), ("tma", 1)])
def test_no_invalid_kernel_config_can_be_made(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=f"invalid kernel config: {field}={value!r}"):
        KernelConfig(**{**{"block_m": 64, "block_n": 64, "num_warps": 4, "num_stages": 2}, field: value})


def _tuned_file(directory: Path, entries: dict[str, Any]) -> Path:
    path = directory / TUNING_FILE
    path.write_text(json.dumps({"version": tuning_store.TUNING_VERSION, "entries": entries}))
    return path


FIELDS = {"block_m": 64, "block_n": 32, "num_warps": 4, "num_stages": 2, "tma": False, "warp_specialize": False}


def _raw(**config: Any) -> dict[str, Any]:
    """An entry as `TuneEntry.to_json` writes it (CONFIG, unless fields are given)."""
    return {"config": {**FIELDS, **config}, "ms": 1.0, "tried": 4}


@pytest.mark.parametrize(("raw", "reason"), [
    (_raw(block_m=3), "config.block_m=3 must be a power of two from 16 to 256"),
    (_raw(num_warps=6), "config.num_warps=6 must be one of 1, 2, 4, 8, 16"),
    (_raw(num_stages=12), "config.num_stages=12 must be from 1 to 8"),
    (_raw(tma="true"), "config.tma='true' must be True or False"),
    (_raw(blockm=64), "unknown key config.blockm"),
    ({**_raw(), "note": "x"}, "unknown key note"),
    ({"config": FIELDS, "ms": -1.0, "tried": 4}, "ms=-1.0 must be a finite non-negative number"),
    ({"config": FIELDS, "ms": 1.0}, "missing tried"),
    ([1, 2], "an entry must be an object, not list"),
])
def test_invalid_tuning_entries_are_ignored_named_and_dropped_at_the_next_write(tmp_path: Path, raw: Any,
                                                                                 reason: str) -> None:
    other = TuneKey("NVIDIA A100", "kernel-abc", KEY.bucket)
    path = _tuned_file(tmp_path, {KEY.serialize(): raw, other.serialize(): _raw()})
    tuner = Tuner(tmp_path)
    with pytest.warns(TuningWarning, match="ignoring 1 invalid entry of 2") as caught:
        assert tuner.lookup(KEY) is None
    assert str(path) in str(caught[0].message) and reason in str(caught[0].message)
    assert tuner.lookup(other) == CONFIG
    assert tuner.tune(KEY, [CONFIG], lambda config: None, lambda fn: 2.0) == CONFIG  # runs: nothing stored
    entries = json.loads(path.read_text())["entries"]
    assert entries[KEY.serialize()]["ms"] == 2.0 and entries[other.serialize()] == _raw()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the repaired file reads without a warning
        assert Tuner(tmp_path).lookup(KEY) == CONFIG


def test_an_invalid_key_is_dropped_at_the_next_write(tmp_path: Path) -> None:
    path = _tuned_file(tmp_path, {"not a key": _raw()})
    tuner = Tuner(tmp_path)
    with pytest.warns(TuningWarning, match="entry 'not a key': the key is not JSON"):
        tuner.lookup(KEY)
    tuner.tune(KEY, [CONFIG], lambda config: None, lambda fn: 1.0)
    assert list(json.loads(path.read_text())["entries"]) == [KEY.serialize()]


# ---- item 6: no lost writes ----


def _tune_many(directory: str, worker: int, count: int) -> None:
    tuner = Tuner(Path(directory))
    for i in range(count):
        key = TuneKey(f"gpu-{worker}", f"kernel-{i}", KEY.bucket)
        tuner.tune(key, [CONFIG], lambda config: None, lambda fn: 1.0)


def test_concurrent_tuners_lose_no_entries(tmp_path: Path) -> None:
    workers, each = 4, 25
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pool.starmap(_tune_many, [(str(tmp_path), w, each) for w in range(workers)])
    entries = json.loads((tmp_path / TUNING_FILE).read_text())["entries"]
    assert len(entries) == workers * each
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_a_lock_held_too_long_is_reported_not_waited_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tuning_store, "LOCK_TIMEOUT_S", 0.05)
    lock = tmp_path / (TUNING_FILE + tuning_store.LOCK_SUFFIX)
    with lock.open("w") as held:  # another process's lock: flock conflicts across open files
        fcntl.flock(held, fcntl.LOCK_EX)
        tuner = Tuner(tmp_path)
        with pytest.warns(TuningWarning, match=f"{lock} has been held by another process.*this process only"):
            tuner.tune(KEY, [CONFIG], lambda config: None, lambda fn: 1.0)
    assert tuner.lookup(KEY) == CONFIG and not (tmp_path / TUNING_FILE).exists()


def _kernel_for_clear(directory: Path) -> Path:
    return KernelCache(directory).ensure_file(SOURCE)


def test_cache_clear_keeps_files_attnc_did_not_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    directory, outside = tmp_path / "cache", tmp_path / "outside"
    monkeypatch.setenv("ATTNC_CACHE_DIR", str(directory))
    kernel = _kernel_for_clear(directory)
    outside.mkdir()
    theirs = {
        directory / "attnc_notes.py": "# my notes\n",
        directory / f"attnc_{'0' * 64}.py": "print('mine, not a kernel')\n",  # our name, not our checksum
        outside / f"{kernel.stem}.cpython-311.pyc": "outside the cache",
        outside / f"attnc_{'1' * 64}.py": _kernel_path(directory).read_text(),
    }
    for path, text in theirs.items():
        path.write_text(text)
    (directory / "__pycache__").symlink_to(outside)  # a link out of the cache is never followed
    (directory / f"attnc_{'1' * 64}.py").symlink_to(outside / f"attnc_{'1' * 64}.py")
    assert main(["cache", "clear"]) == 0
    assert "removed 1 kernel file" in capsys.readouterr().out
    assert not kernel.exists()
    assert all(path.read_text() == text for path, text in theirs.items())
    assert (directory / "__pycache__").is_symlink() and (directory / f"attnc_{'1' * 64}.py").is_symlink()


def test_cache_ls_lists_only_attnc_kernels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "cache"
    monkeypatch.setenv("ATTNC_CACHE_DIR", str(directory))
    kernel = _kernel_for_clear(directory)
    (directory / "attnc_notes.py").write_text("# my notes\n")
    os.mkfifo(directory / f"attnc_{'2' * 64}.py")
    assert _without_hanging(lambda: main(["cache", "ls"])) == 0
    out = capsys.readouterr().out
    assert kernel.name in out and "attnc_notes" not in out and "1 kernel file," in out


# ---- item 7: faults are reported, never hung on ----


def test_a_fifo_in_a_kernels_place_is_replaced_without_blocking(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    directory.mkdir(mode=0o700)
    os.mkfifo(_kernel_path(directory))
    cache = KernelCache(directory)
    module = _without_hanging(lambda: cache.module(SOURCE))
    assert module.plain(1) == 2 and cache.stats.rejected_files == 1
    assert _kernel_path(directory).is_file()


def test_a_directory_in_a_kernels_place_keeps_the_kernel_in_memory(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    directory.mkdir(mode=0o700)
    _kernel_path(directory).mkdir()
    cache = KernelCache(directory)
    with pytest.warns(CacheWarning, match=f"cannot write the kernel file {_kernel_path(directory)}: a directory is "
                      "in the way; attnc keeps its kernels in memory"):
        module = cache.module(SOURCE)
    assert module.plain(1) == 2 and cache.stats.kept_in_memory == 1
    with pytest.raises(CacheError, match=f"cannot write the kernel file {_kernel_path(directory)}"):
        cache.ensure_file(SOURCE)  # ahead-of-time compiles hand a path to another process: no fallback


def test_an_unusable_directory_keeps_kernels_in_memory_with_one_warning(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    cache = KernelCache(tmp_path / "file" / "cache")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        modules = [cache.module(_source(i)) for i in range(2)]
    assert [str(w.message).split(";")[0] for w in caught] == [
        f"attnc: cannot use the kernel cache directory {tmp_path / 'file' / 'cache'}: Not a directory"]
    assert [m.plain0(1) if i == 0 else m.plain1(1) for i, m in enumerate(modules)] == [2, 2]
    assert cache.stats.kept_in_memory == 2
    # what `@triton.jit` would read on a GPU: the verified text, though no file exists, even once linecache
    # has dropped it (the interpreter reads the source again at each call)
    assert triton.runtime.jit.JITFunction(modules[0].plain0).src == "def plain0(x):\n    return x + 1\n"
    linecache.clearcache()
    assert inspect.getsource(modules[1].plain1) == "def plain1(x):\n    return x + 1\n"


@pytest.mark.parametrize(("code", "reason"), [(errno.ENOSPC, "No space left on device"),
                                              (errno.EROFS, "Read-only file system")])
def test_a_full_or_read_only_directory_keeps_kernels_in_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               code: int, reason: str) -> None:
    directory = tmp_path / "c"
    directory.mkdir(mode=0o700)

    def fail(fd: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(cache_module.os, "fsync", fail)  # the write of the temporary file fails
    cache = KernelCache(directory)
    with pytest.warns(CacheWarning, match=f"cannot write the kernel file {_kernel_path(directory)}: {reason}"):
        assert cache.module(SOURCE).plain(1) == 2
    assert list(directory.iterdir()) == []  # no temporary file left behind


def test_attnc_check_passes_with_an_unwritable_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("")
    monkeypatch.setattr(cache_module, "kernel_cache", lambda: cached)
    cached = KernelCache(tmp_path / "file" / "cache")
    assert main(["check", "sliding_window(8)", "--seq", "24", "--heads", "1", "--head-dim", "16"]) == 0
    captured = capsys.readouterr()
    assert "PASS" in captured.out
    assert captured.err.splitlines() == [
        f"attnc check: warning: cannot use the kernel cache directory {tmp_path / 'file' / 'cache'}: Not a "
        "directory; attnc keeps its kernels in memory for this process instead (set ATTNC_CACHE_DIR to a "
        "writable directory to keep them across processes)"]


def test_a_deeply_nested_tuning_file_is_ignored_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / TUNING_FILE
    path.write_text("[" * 200_000 + "]" * 200_000)
    tuner = Tuner(tmp_path)
    with pytest.warns(TuningWarning, match=f"ignoring the tuning file {path}: it is nested too deeply"):
        assert tuner.lookup(KEY) is None
    tuner.tune(KEY, [CONFIG], lambda config: None, lambda fn: 1.0)
    assert Tuner(tmp_path).lookup(KEY) == CONFIG  # rewritten


def test_a_fifo_as_the_tuning_file_is_never_waited_on(tmp_path: Path) -> None:
    path = tmp_path / TUNING_FILE
    os.mkfifo(path)
    tuner = Tuner(tmp_path)
    with pytest.warns(TuningWarning, match=f"cannot read {path}: it is not a regular file"):
        assert _without_hanging(lambda: tuner.lookup(KEY)) is None
    _without_hanging(lambda: tuner.tune(KEY, [CONFIG], lambda config: None, lambda fn: 1.0))
    assert path.is_file() and Tuner(tmp_path).lookup(KEY) == CONFIG


def test_a_directory_as_the_tuning_file_keeps_tunings_in_memory(tmp_path: Path) -> None:
    path = tmp_path / TUNING_FILE
    path.mkdir()
    tuner = Tuner(tmp_path)
    with pytest.warns(TuningWarning, match=f"cannot read {path}: it is a directory"):
        assert tuner.lookup(KEY) is None
    with pytest.warns(TuningWarning, match=f"cannot write the tuning file {path}: a directory is in the way; the "
                      "tuned configs are used by this process only"):
        tuner.tune(KEY, [CONFIG], lambda config: None, lambda fn: 1.0)
    assert tuner.lookup(KEY) == CONFIG and path.is_dir()


def test_a_read_only_tuning_directory_keeps_tunings_in_memory(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = os.open

    def read_only(path: Any, flags: int, *args: Any) -> int:
        if flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only)  # files can be read, none created (the lock file first)
    tuner = Tuner(tmp_path)
    with pytest.warns(TuningWarning, match=f"cannot write the tuning file {tmp_path / TUNING_FILE}: Read-only"):
        tuner.tune(KEY, [CONFIG], lambda config: None, lambda fn: 1.0)
    assert tuner.lookup(KEY) == CONFIG


def test_gpu_defaults_need_no_kernel_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A launch on a GPU picks its spill-free default by compiling the kernel file ahead of time; without a
    writable cache it takes the ladder's first rung instead of failing."""
    (tmp_path / "file").write_text("")
    monkeypatch.setattr(cache_module, "kernel_cache", lambda: KernelCache(tmp_path / "file" / "cache"))
    attn = attnc.compile(lambda b, h, q, kv: q - kv <= 37)  # a variant no other test compiles
    chosen = tuning.spill_free_default(attn, "forward", arch="sm_90", dtype=torch.float16, D=64, Dv=64)
    assert chosen == default_ladder("forward", "sm_90", 64, 64)[0]


def test_cache_clear_reports_a_file_it_cannot_remove(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "cache"
    monkeypatch.setenv("ATTNC_CACHE_DIR", str(directory))
    kernel = _kernel_for_clear(directory)

    def read_only(self: Path, missing_ok: bool = False) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(Path, "unlink", read_only)
    assert main(["cache", "clear"]) == 2
    assert capsys.readouterr().err == f"attnc cache: cannot remove {kernel}: Read-only file system\n"


def test_attnc_check_reports_an_environment_failure_with_the_usage_code(monkeypatch: pytest.MonkeyPatch,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    class Failing:
        def module(self, source: str) -> Any:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/full/attnc_x.py")

    monkeypatch.setattr(cache_module, "kernel_cache", Failing)
    assert main(["check", "causal", "--seq", "16", "--heads", "1", "--head-dim", "16"]) == 2  # not 1: no verdict
    assert capsys.readouterr().err == ("attnc check: could not run the check: [Errno 28] No space left on device: "
                                       "'/full/attnc_x.py'\n")


def test_a_file_as_the_cache_directory_keeps_kernels_in_memory(tmp_path: Path) -> None:
    (tmp_path / "cache").write_text("not a directory")
    with pytest.warns(CacheWarning, match=f"cannot use the kernel cache directory {tmp_path / 'cache'}: it exists "
                      "and is not a directory"):
        assert KernelCache(tmp_path / "cache").module(SOURCE).plain(1) == 2
    assert (tmp_path / "cache").read_text() == "not a directory"
