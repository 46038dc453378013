"""The kernel cache: generated source on disk, imported modules in memory.

Each kernel's source is written to `<dir>/attnc_<sha256>.py`, named by the hash of its content (which
includes a header naming the codegen, triton and torch versions), and imported from that file
(`@triton.jit` needs a real file for its source). A file is imported only after its first line's
checksum matches its body and its name matches its content; anything else (truncated, corrupt, foreign)
is rewritten. Writes go to a temporary file in the same directory and are renamed into place, so
concurrent writers of the same kernel are safe and a reader never sees half a file. The directory must be
owned by the current user and not writable by anyone else before anything is imported from it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import os
import stat
import sys
import tempfile
import threading
from pathlib import Path
from types import ModuleType

import torch
import triton

from attnc.codegen.skeleton import CODEGEN_VERSION

_MAGIC = "# attnc-kernel sha256="


class CacheError(Exception):
    """The cache directory cannot be trusted or written."""


@dataclasses.dataclass
class CacheStats:
    """Counters that tests and `explain` read: how often each level of the cache missed."""

    sources_written: int = 0
    modules_imported: int = 0
    rejected_files: int = 0


def version_header() -> str:
    return f"# codegen {CODEGEN_VERSION}, triton {triton.__version__}, torch {torch.__version__}\n"


def content_hash(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()


class KernelCache:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.stats = CacheStats()
        self._modules: dict[str, ModuleType] = {}
        self._lock = threading.Lock()
        self._checked = False

    def module(self, source: str) -> ModuleType:
        """The imported module for `source`."""
        body = version_header() + source
        digest = content_hash(body)
        with self._lock:
            found = self._modules.get(digest)
            if found is None:
                path = self._ensure_file(digest, body)
                found = self._modules[digest] = _import(path, digest)
                self.stats.modules_imported += 1
            return found

    def ensure_file(self, source: str) -> Path:
        """The verified file holding `source`, written if missing or invalid."""
        body = version_header() + source
        with self._lock:
            return self._ensure_file(content_hash(body), body)

    def _ensure_file(self, digest: str, body: str) -> Path:
        self._check_directory()
        path = self.directory / f"attnc_{digest}.py"
        if path.exists():
            if _is_valid(path, digest):
                return path
            self.stats.rejected_files += 1
        atomic_write(path, f"{_MAGIC}{digest}\n{body}")
        self.stats.sources_written += 1
        return path

    def _check_directory(self) -> None:
        if self._checked:
            return
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise CacheError(f"attnc: cannot create the kernel cache directory {self.directory}: {e}") from e
        require_private(self.directory)
        self._checked = True


def require_private(path: Path) -> None:
    """Raise CacheError unless `path` belongs to this user and nobody else may write to it."""
    info = path.stat()
    if info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise CacheError(
            f"attnc: refusing to import kernels from {path}: it is owned by another user or writable by "
            "others. Use a private directory (chmod 700) or set ATTNC_CACHE_DIR to one."
        )


def _is_valid(path: Path, digest: str) -> bool:
    """The file is ours, private, and its content is exactly what its name and checksum say."""
    try:
        require_private(path)
        text = path.read_text()
    except (OSError, UnicodeDecodeError, CacheError):
        return False
    first, _, body = text.partition("\n")
    return first == f"{_MAGIC}{digest}" and content_hash(body) == digest


def atomic_write(path: Path, text: str) -> None:
    """Write `text` to `path` so that a reader sees the old file or the whole new one, never a part:
    a private temporary file beside it, flushed, then renamed into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _import(path: Path, digest: str) -> ModuleType:
    name = f"attnc_kernels.k{digest[:24]}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
