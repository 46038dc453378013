"""Exit codes of the `attnc` command and the error that carries one.

A subcommand raises `CliError` for anything the user can fix; `attnc.cli.main` prints its message as one
line on stderr (no traceback) and exits with its code.
"""

from __future__ import annotations

import difflib
import enum
from collections.abc import Iterable


class Exit(enum.IntEnum):
    OK = 0
    CHECK_FAILED = 1  # check (or bench's comparison) found errors above tolerance; inspect could not compile
    USAGE = 2  # a usage error, an invalid variant or file, a value attnc rejects
    MISSING = 3  # a missing optional dependency, or no GPU where one is required


EXIT_CODES = """\
exit codes:
  0  success
  1  check found errors above tolerance (bench: attnc disagrees with a peer; inspect: a kernel failed to compile)
  2  usage error, or an invalid variant, file, tensor or parameter
  3  a missing optional dependency (matplotlib for viz), or no GPU / Triton interpreter where one is needed"""


class CliError(Exception):
    """A problem the user can fix, reported as its message alone."""

    def __init__(self, message: str, code: Exit = Exit.USAGE) -> None:
        super().__init__(message)
        self.code = code


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean `x`?)' for the choices closest to a misspelled `word`, or '' when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.6)
    if not close:
        return ""
    return f" (did you mean {' or '.join(f'`{c}`' for c in close)}?)"
