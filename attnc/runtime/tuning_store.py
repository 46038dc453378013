"""`tuning.json`: the tuned configs persisted beside the kernel cache.

Reading checks everything before a config can reach a launch: the file must be a private regular file (a
FIFO is never waited on, a link never followed) of this format's version, and each entry's key, config
(`KernelConfig`'s own checks: tile sizes, warps, stages, flags; unknown fields named), time and count must be
exactly what `TuneEntry.to_json` writes. Invalid entries are ignored with one warning naming the file, and
dropped when it is next written.

Writing never loses another process's entries: under an exclusive lock on `tuning.json.lock` the file is
read again, this process's new entries merged in, and the result renamed into place (`atomic_write`). A lock
held too long, or a directory that cannot be written, is reported (`TuningStoreError`) rather than waited on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import stat
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from attnc.runtime.cache import CacheUnavailable, atomic_write, is_private, read_private_file
from attnc.runtime.config import KernelConfig, field_problem

TUNING_FILE = "tuning.json"
TUNING_VERSION = 2  # 2: configs carry the Hopper options
LOCK_SUFFIX = ".lock"
# Far more than any real tuning file (an entry is about 200 bytes); a larger one is not read.
MAX_TUNING_BYTES = 64 << 20
# How long a writer waits for another to finish its read-merge-write (milliseconds in practice).
LOCK_TIMEOUT_S = 30.0
_LOCK_POLL_S = 0.005
_CONFIG_FIELDS = tuple(field.name for field in dataclasses.fields(KernelConfig))
_SHOWN_PROBLEMS = 3  # how many invalid entries a warning describes
_REWRITTEN = "; it is rewritten at the next tuning"


class TuningStoreError(Exception):
    """The tuning file could not be written (the message names the path and why)."""


class TuningWarning(UserWarning):
    """Part or all of the tuning file was ignored, or a tuned config could not be saved."""


@dataclasses.dataclass(frozen=True)
class TuneEntry:
    config: KernelConfig
    ms: float
    tried: int

    def to_json(self) -> dict[str, Any]:
        return {"config": dataclasses.asdict(self.config), "ms": self.ms, "tried": self.tried}

    @staticmethod
    def from_json(raw: Any) -> TuneEntry | None:
        """The entry, or None if `raw` is not exactly what `to_json` writes."""
        return None if entry_problem(raw) is not None else _entry(raw)


def _entry(raw: dict[str, Any]) -> TuneEntry:
    return TuneEntry(KernelConfig(**raw["config"]), float(raw["ms"]), raw["tried"])


def entry_problem(raw: Any) -> str | None:
    """Why `raw` is not a valid entry, or None."""
    if not isinstance(raw, dict):
        return f"an entry must be an object, not {type(raw).__name__}"
    names = _name_problem(raw, ("config", "ms", "tried"), "")
    if names is not None:
        return names
    ms, tried = raw["ms"], raw["tried"]
    if type(ms) not in (int, float) or not math.isfinite(ms) or ms < 0:
        return f"ms={ms!r} must be a finite non-negative number"
    if type(tried) is not int or tried < 1:
        return f"tried={tried!r} must be a positive integer"
    return _config_problem(raw["config"])


def _config_problem(config: Any) -> str | None:
    if not isinstance(config, dict):
        return f"config must be an object, not {type(config).__name__}"
    names = _name_problem(config, _CONFIG_FIELDS, "config.")
    if names is not None:
        return names
    for name in _CONFIG_FIELDS:
        problem = field_problem(name, config[name])
        if problem is not None:
            return f"config.{name}={config[name]!r} {problem}"
    return None


def _name_problem(raw: dict[str, Any], expected: tuple[str, ...], prefix: str) -> str | None:
    unknown = sorted(map(str, set(raw) - set(expected)))
    if unknown:
        return f"unknown key{'s' * (len(unknown) > 1)} {', '.join(prefix + name for name in unknown)}"
    missing = [name for name in expected if name not in raw]
    if missing:
        return f"missing {', '.join(prefix + name for name in missing)}"
    return None


def key_problem(key: str) -> str | None:
    """Why `key` is not a serialized `TuneKey` ([gpu, kernel, [five positive integers]]), or None."""
    try:
        parsed = json.loads(key)
    except (ValueError, RecursionError):
        return "the key is not JSON"
    valid = (isinstance(parsed, list) and len(parsed) == 3 and all(isinstance(p, str) for p in parsed[:2])
             and isinstance(parsed[2], list) and len(parsed[2]) == 5
             and all(type(n) is int and n > 0 for n in parsed[2]))
    return None if valid else "the key is not [gpu, kernel, [batch_heads, q_len, kv_len, head_dim, head_dim_v]]"


@dataclasses.dataclass(frozen=True)
class Contents:
    """What a read of the tuning file found: the valid entries, and what was wrong (nothing when it is
    missing or entirely valid)."""

    entries: dict[str, TuneEntry]
    problems: tuple[str, ...] = ()
    ignored: int = 0  # invalid entries (0 when the whole file was ignored)


def read(path: Path) -> Contents:
    """The tuning file's valid entries and its problems; never raises for the file's content or type."""
    try:
        if not is_private(path.parent.stat()):  # its configs would be someone else's choice
            return Contents({}, (f"its directory {path.parent} is owned by another user or writable by others",))
        data = read_private_file(path, MAX_TUNING_BYTES)
    except FileNotFoundError:  # no directory yet
        return Contents({})
    except OSError as error:
        return Contents({}, (f"its directory cannot be read ({error.strerror or error})",))
    except CacheUnavailable as error:  # a directory, FIFO, link or oversized file in its place
        return Contents({}, (str(error).removeprefix("attnc: "),))
    if data is None:
        return Contents({})
    try:
        document = json.loads(data)
    except RecursionError:
        return Contents({}, (f"it is nested too deeply to be a tuning file{_REWRITTEN}",))
    except ValueError as error:  # UnicodeDecodeError and JSONDecodeError included
        return Contents({}, (f"it is not valid JSON ({error}){_REWRITTEN}",))
    return _contents(document)


def _contents(document: Any) -> Contents:
    if not isinstance(document, dict) or not isinstance(document.get("entries"), dict):
        return Contents({}, ('it is not {"version": ..., "entries": {...}}' + _REWRITTEN,))
    if document.get("version") != TUNING_VERSION:
        found = document.get("version")
        return Contents({}, (f"it has version {found!r}, this attnc reads {TUNING_VERSION}{_REWRITTEN}",))
    entries, problems = {}, []
    for key, raw in document["entries"].items():
        problem = key_problem(key) or entry_problem(raw)
        if problem is None:
            entries[key] = _entry(raw)
        else:
            problems.append(f"entry {_short(key)}: {problem}")
    return Contents(entries, tuple(problems), len(problems))


def _short(key: str, width: int = 72) -> str:
    return repr(key if len(key) <= width else key[: width - 3] + "...")


def describe(path: Path, contents: Contents) -> str | None:
    """The warning for what `read` found, or None when there is nothing to say."""
    if not contents.problems:
        return None
    if not contents.ignored:
        return f"attnc: ignoring the tuning file {path}: {contents.problems[0]}"
    shown = "; ".join(contents.problems[:_SHOWN_PROBLEMS])
    more = f"; and {contents.ignored - _SHOWN_PROBLEMS} more" if contents.ignored > _SHOWN_PROBLEMS else ""
    total = contents.ignored + len(contents.entries)
    return (f"attnc: ignoring {contents.ignored} invalid entr{'ies' if contents.ignored > 1 else 'y'} of {total} in "
            f"the tuning file {path} ({shown}{more}); they are dropped at the next write")


def save(path: Path, added: Mapping[str, TuneEntry]) -> dict[str, TuneEntry]:
    """Merge `added` into the tuning file under its lock (read again, merge, atomic replace) and return the
    merged entries: entries other processes saved since this one read the file are kept, invalid ones
    dropped. TuningStoreError, naming the path, when it cannot be written."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with _locked(path.with_name(path.name + LOCK_SUFFIX)):
            merged = {**read(path).entries, **added}
            document = {"version": TUNING_VERSION, "entries": {k: e.to_json() for k, e in merged.items()}}
            atomic_write(path, json.dumps(document, indent=1, sort_keys=True))
    except OSError as e:
        reason = "a directory is in the way" if isinstance(e, IsADirectoryError) else e.strerror or str(e)
        raise TuningStoreError(f"attnc: cannot write the tuning file {path}: {reason}") from e
    return merged


@contextlib.contextmanager
def _locked(lock: Path) -> Iterator[None]:
    """An exclusive `flock` on `lock` (a private regular file, created if missing) while the block runs;
    TuningStoreError if another process holds it for more than LOCK_TIMEOUT_S."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    fd = os.open(lock, flags, 0o600)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise TuningStoreError(f"attnc: cannot lock the tuning file with {lock}: it is not a regular file")
        _acquire(fd, lock)
        yield
    finally:
        os.close(fd)  # releases the lock


def _acquire(fd: int, lock: Path) -> None:
    # Polled, not blocking: a process that hangs while holding the lock must not hang every other one.
    deadline = time.monotonic() + LOCK_TIMEOUT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise TuningStoreError(f"attnc: cannot lock the tuning file: {lock} has been held by another "
                                       f"process for over {LOCK_TIMEOUT_S:.0f} s") from None
            time.sleep(_LOCK_POLL_S)
