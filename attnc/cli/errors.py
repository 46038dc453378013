"""Exit codes of the `attnc` command and the error that carries one.

A subcommand raises `CliError` for anything the user can fix; `attnc.cli.main` prints its message as one
line on stderr (no traceback) and exits with its code.
"""

from __future__ import annotations

import enum


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
