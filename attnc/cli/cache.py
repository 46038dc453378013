"""`attnc cache ls | clear | info`: the generated kernel files in the cache directory.

Only the kernel files attnc wrote are listed or removed: regular files named `attnc_<sha256>.py` whose first
line is attnc's checksum line for that name (and their compiled copies in `__pycache__`, which older versions
of attnc left). The directory may hold anything else, and `clear` never touches it; a link is never followed.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import re
import stat
from pathlib import Path

from attnc.runtime import cache as kernel_cache
from attnc.runtime.config import Settings

from .errors import CliError

_KIND = re.compile(r"# attnc ([\w-]+)")
_KERNEL_NAME = re.compile(r"attnc_([0-9a-f]{64})\.py")
_HEAD_BYTES = 4096  # the checksum, version and kind lines


@dataclasses.dataclass(frozen=True)
class KernelFile:
    path: Path
    size: int  # with its compiled copies
    modified: float
    kind: str  # forward, backward, block-map
    current: bool  # written by this codegen, triton and torch (older ones are never loaded again)
    compiled: tuple[Path, ...]  # __pycache__ copies

    def row(self) -> str:
        when = datetime.datetime.fromtimestamp(self.modified).strftime("%Y-%m-%d %H:%M:%S")
        current = "yes" if self.current else "no"
        return f"{self.path.name:<73} {self.kind:<9} {human(self.size):>10}  {when}  {current}"


def directory() -> Path:
    return Settings.from_environment().cache_dir


def kernel_files(where: Path) -> list[KernelFile]:
    """The kernel files attnc wrote in `where`, oldest first."""
    try:
        found = [_describe(Path(entry.path), head, entry.stat(follow_symlinks=False))
                 for entry in os.scandir(where) if (head := _kernel_head(entry)) is not None]
    except OSError as e:
        raise CliError(f"cannot read the kernel cache directory {where}: {e.strerror or e}") from e
    return sorted(found, key=lambda f: (f.modified, f.path.name))


def _kernel_head(entry: os.DirEntry[str]) -> list[str] | None:
    """The first lines of `entry` if it is a kernel file attnc wrote (a regular file, not a link, named by the
    digest its checksum line carries); else None."""
    match = _KERNEL_NAME.fullmatch(entry.name)
    if match is None or not entry.is_file(follow_symlinks=False):
        return None
    try:
        fd = os.open(entry.path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as f:
            head = f.read(_HEAD_BYTES).decode(errors="replace").split("\n")[:3]
    except OSError:  # a FIFO opened without blocking reads nothing; a directory or device may refuse
        return None
    head += [""] * (3 - len(head))
    return head if head[0] == f"{kernel_cache.CHECKSUM_LINE}{match.group(1)}" else None


def _compiled_copies(path: Path) -> tuple[Path, ...]:
    """The `__pycache__` copies of a kernel file older versions of attnc made (`__pycache__` must be a real
    directory: a link out of the cache is never followed)."""
    pycache = path.parent / "__pycache__"
    if not stat.S_ISDIR(_lstat_mode(pycache)):
        return ()
    return tuple(Path(entry.path) for entry in os.scandir(pycache)
                 if entry.name.startswith(f"{path.stem}.") and entry.name.endswith(".pyc")
                 and entry.is_file(follow_symlinks=False))


def _lstat_mode(path: Path) -> int:
    try:
        return path.lstat().st_mode
    except OSError:
        return 0


def _describe(path: Path, head: list[str], info: os.stat_result) -> KernelFile:
    compiled = _compiled_copies(path)
    kind = _KIND.match(head[2])
    return KernelFile(path, info.st_size + sum(p.lstat().st_size for p in compiled), info.st_mtime,
                      kind.group(1) if kind else "unknown", head[1] == kernel_cache.version_header().rstrip("\n"),
                      compiled)


def human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _existing() -> Path | None:
    where = directory()
    if not where.exists():
        print(f"no kernel cache at {where} (nothing has been cached yet)")
        return None
    if not where.is_dir():
        raise CliError(f"the kernel cache path {where} is not a directory")
    return where


def list_files(args: argparse.Namespace) -> int:
    where = _existing()
    if where is None:
        return 0
    files = kernel_files(where)
    print(f"{where}:")
    if files:
        print(f"{'file':<73} {'kind':<9} {'size':>10}  {'modified':<19}  current")
        for f in files:
            print(f.row())
    print(f"{len(files)} kernel file{'s' * (len(files) != 1)}, {human(sum(f.size for f in files))}")
    return 0


def clear_files(args: argparse.Namespace) -> int:
    where = _existing()
    if where is None:
        return 0
    files = kernel_files(where)
    verb = "would remove" if args.dry_run else "removed"
    for f in files:
        for path in (f.path, *f.compiled):
            if not args.dry_run:
                _remove(path)
            print(f"{verb} {path}")
    pycache = where / "__pycache__"
    if not args.dry_run and stat.S_ISDIR(_lstat_mode(pycache)) and not any(pycache.iterdir()):
        pycache.rmdir()  # only when it is empty: it may hold someone else's files
    print(f"{verb} {len(files)} kernel file{'s' * (len(files) != 1)} ({human(sum(f.size for f in files))}) "
          f"from {where}")
    return 0


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)  # a link put in its place since the listing is removed, not followed
    except OSError as e:
        raise CliError(f"cannot remove {path}: {e.strerror or e}") from e


def show_info(args: argparse.Namespace) -> int:
    where = _existing()
    if where is None:
        return 0
    files = kernel_files(where)
    stale = sum(not f.current for f in files)
    print(f"directory: {where}")
    print(f"kernel files: {len(files)} ({stale} from other codegen, Triton or torch versions, never loaded again)")
    print(f"total size: {human(sum(f.size for f in files))}")
    print(f"trusted: {trust(where)}")
    return 0


def trust(where: Path) -> str:
    """Whether attnc imports kernels from `where` (its own check), and why not."""
    mode = stat.S_IMODE(where.stat().st_mode)
    try:
        kernel_cache.require_private(where)
    except kernel_cache.CacheError:
        return (f"no: owned by another user or writable by others (mode {mode:o}); attnc refuses to import "
                "kernels from it (chmod 700, or set ATTNC_CACHE_DIR to a private directory)")
    return f"yes: private to you (mode {mode:o})"
