"""The kernel cache: generated source on disk, imported modules in memory.

Each kernel's source is written to `<dir>/attnc_<sha256>.py`, named by the hash of its content (which
includes a header naming the codegen, triton and torch versions). A file is trusted only after its first
line's checksum matches its body and its name matches its content; anything else (truncated, corrupt,
foreign, a link, a FIFO) is rewritten. Writes go to a temporary file in the same directory and are renamed
into place, so concurrent writers of the same kernel are safe and a reader never sees half a file. The
directory must be owned by the current user and not writable by anyone else.

What runs is exactly the verified text: the module is compiled from the text attnc generated (equal, by its
hash, to the file's), never through Python's import system, so no bytecode is read from or written to
`__pycache__` (a forged `.pyc` there would run without our checksum). `@triton.jit` reads a kernel's source
with `inspect`, which finds it in `linecache`, primed with the same text under the file's path.

When the directory cannot be written (read-only, full, a directory in a kernel file's place) the kernel is
kept in memory, named `<attnc in memory>/attnc_<sha256>.py`, with one warning naming the path; only the
ahead-of-time compiles, which hand a path to another process, need the file (`ensure_file` raises).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import hashlib
import linecache
import os
import stat
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from types import ModuleType

import torch
import triton

from attnc.codegen.skeleton import CODEGEN_VERSION
from attnc.runtime.config import Settings

CHECKSUM_LINE = "# attnc-kernel sha256="
KERNEL_PREFIX = "attnc_"
# A generated kernel is tens of kilobytes; anything far larger in a kernel's place is not ours to read.
MAX_KERNEL_BYTES = 16 << 20


class CacheError(Exception):
    """The cache directory cannot be trusted or written."""


class CacheUnavailable(CacheError):
    """The cache directory or a file in it cannot be read or written (a fault, not a trust decision): kernels
    can still be kept in memory."""


class CacheWarning(UserWarning):
    """The kernel cache directory could not be used, and kernels are kept in memory instead."""


@dataclasses.dataclass
class CacheStats:
    """Counters that tests and `explain` read: how often each level of the cache missed."""

    sources_written: int = 0
    modules_imported: int = 0
    rejected_files: int = 0
    kept_in_memory: int = 0  # modules imported without a file, because the directory could not be used


def version_header() -> str:
    return f"# codegen {CODEGEN_VERSION}, triton {triton.__version__}, torch {torch.__version__}\n"


def content_hash(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()


def kernel_name(digest: str) -> str:
    return f"{KERNEL_PREFIX}{digest}.py"


def file_text(digest: str, body: str) -> str:
    """The whole kernel file: the checksum line, then the body."""
    return f"{CHECKSUM_LINE}{digest}\n{body}"


class KernelCache:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.stats = CacheStats()
        self._modules: dict[str, ModuleType] = {}
        self._lock = threading.Lock()
        self._checked = False
        self._warned = False

    def module(self, source: str) -> ModuleType:
        """The imported module for `source`: from its verified file, or from memory when the directory cannot
        be used (warned once)."""
        body = version_header() + source
        digest = content_hash(body)
        with self._lock:
            found = self._modules.get(digest)
            if found is None:
                found = self._modules[digest] = self._load(digest, body)
                self.stats.modules_imported += 1
            return found

    def ensure_file(self, source: str) -> Path:
        """The verified file holding `source`, written if missing or invalid; CacheError (naming the path)
        when it cannot be."""
        body = version_header() + source
        with self._lock:
            return self._ensure_file(content_hash(body), body)

    def _load(self, digest: str, body: str) -> ModuleType:
        try:
            filename = str(self._ensure_file(digest, body))
        except CacheUnavailable as error:
            self._warn_in_memory(error)
            self.stats.kept_in_memory += 1
            # not "<...>", which linecache never asks the module's loader about once its entry is dropped
            filename = f"<attnc in memory>/{kernel_name(digest)}"
        return _import(filename, file_text(digest, body), digest)

    def _warn_in_memory(self, error: CacheUnavailable) -> None:
        if not self._warned:  # once: every later kernel would say the same
            self._warned = True
            warnings.warn(f"{error}; attnc keeps its kernels in memory for this process instead (set "
                          "ATTNC_CACHE_DIR to a writable directory to keep them across processes)",
                          CacheWarning, stacklevel=4)

    def _ensure_file(self, digest: str, body: str) -> Path:
        self._check_directory()
        path = self.directory / kernel_name(digest)
        text = read_kernel(path)
        if text is not None and is_verified(text, digest):
            return path
        if text is not None:
            self.stats.rejected_files += 1
        try:
            atomic_write(path, file_text(digest, body))
        except OSError as e:
            self._checked = False  # the directory may have gone; the next kernel makes it again
            raise CacheUnavailable(f"attnc: cannot write the kernel file {path}: {_reason(e)}") from e
        self.stats.sources_written += 1
        return path

    def _check_directory(self) -> None:
        if self._checked:
            return
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            require_private(self.directory)
        except OSError as e:
            raise CacheUnavailable(f"attnc: cannot use the kernel cache directory {self.directory}: "
                                   f"{_reason(e)}") from e
        self._checked = True


@functools.cache
def kernel_cache() -> KernelCache:
    """The process-wide kernel cache, in the directory `Settings` names."""
    return KernelCache(Settings.from_environment().cache_dir)


def _reason(error: OSError) -> str:
    if error.errno == errno.EISDIR:
        return "a directory is in the way"
    if error.errno == errno.EEXIST:  # mkdir of a path that is a file
        return "it exists and is not a directory"
    return error.strerror or str(error)


def require_private(path: Path) -> None:
    """Raise CacheError unless `path` belongs to this user and nobody else may write to it."""
    if not is_private(path.stat()):
        raise CacheError(
            f"attnc: refusing to import kernels from {path}: it is owned by another user or writable by "
            "others. Use a private directory (chmod 700) or set ATTNC_CACHE_DIR to one."
        )


def is_private(info: os.stat_result) -> bool:
    return info.st_uid == os.getuid() and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def read_private_file(path: Path, limit: int) -> bytes | None:
    """The content of `path`, or None if nothing is there. CacheUnavailable (naming the path and why) unless it
    is a regular file (a link is not followed), owned by this user, writable by nobody else and at most `limit`
    bytes. Never blocks: a FIFO is opened without waiting for a writer and then refused by its type."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        reason = "a symbolic link" if e.errno == errno.ELOOP else _reason(e)
        raise CacheUnavailable(f"attnc: cannot read {path}: {reason}") from e
    try:
        problem = _file_problem(os.fstat(fd), limit)
        if problem is not None:
            raise CacheUnavailable(f"attnc: cannot read {path}: {problem}")
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read(limit + 1)
    except OSError as e:
        raise CacheUnavailable(f"attnc: cannot read {path}: {_reason(e)}") from e
    finally:
        os.close(fd)


def _file_problem(info: os.stat_result, limit: int) -> str | None:
    if stat.S_ISDIR(info.st_mode):
        return "it is a directory"
    if not stat.S_ISREG(info.st_mode):
        return "it is not a regular file (a FIFO, socket or device)"
    if not is_private(info):
        return "it is owned by another user or writable by others"
    if info.st_size > limit:
        return f"it is larger than {limit >> 20} MiB"
    return None


def read_kernel(path: Path) -> str | None:
    """The text of the kernel file at `path`: None if there is none, "" if something unusable is there."""
    try:
        data = read_private_file(path, MAX_KERNEL_BYTES)
        return None if data is None else data.decode()
    except (CacheUnavailable, UnicodeDecodeError):
        return ""


def is_verified(text: str, digest: str) -> bool:
    """The file text is exactly what its name (`digest`) and checksum line say."""
    first, _, body = text.partition("\n")
    return first == f"{CHECKSUM_LINE}{digest}" and content_hash(body) == digest


def atomic_write(path: Path, text: str) -> None:
    """Write `text` to `path` so that a reader sees the old file or the whole new one, never a part:
    a private temporary file beside it, flushed, then renamed into place (replacing a link or FIFO at `path`
    itself, never what it points to)."""
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


class _VerifiedSource:
    """The module's loader, for `linecache` (and so `inspect`) should its entry be dropped: the verified text,
    never the file again."""

    def __init__(self, text: str) -> None:
        self.text = text

    def get_source(self, name: str) -> str:
        return self.text


def _import(filename: str, text: str, digest: str) -> ModuleType:
    """A module compiled from `text` under `filename`, registered so `inspect.getsource` finds `text`."""
    name = f"attnc_kernels.k{digest[:24]}"
    module = ModuleType(name)
    module.__file__ = filename
    module.__loader__ = _VerifiedSource(text)  # type: ignore[assignment]
    # mtime None: `linecache.checkcache` keeps the entry, so the file on disk is never read back
    linecache.cache[filename] = (len(text), None, text.splitlines(keepends=True), filename)
    code = compile(text, filename, "exec", dont_inherit=True)  # not this module's `from __future__` flags
    sys.modules[name] = module
    try:
        exec(code, module.__dict__)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module
