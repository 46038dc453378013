"""Errors the front end raises, located at the user's own source line.

A mod runs inside attnc and torch machinery, so the frame that matters is the innermost one outside
both packages: that is the line the user wrote. Messages quote it, say what is unsupported and what to
write instead.
"""

from __future__ import annotations

import dataclasses
import linecache
import os
import sys
from types import CodeType, FrameType, TracebackType

import torch

_ATTNC_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep


@dataclasses.dataclass(frozen=True)
class Location:
    filename: str
    lineno: int

    @property
    def source(self) -> str:
        return linecache.getline(self.filename, self.lineno).strip()


class TraceError(Exception):
    """A mod uses something the tracer cannot turn into IR. The message names the user's file:line."""

    def __init__(self, problem: str, hint: str = "", location: Location | None = None) -> None:
        self.problem = problem
        self.hint = hint
        self.location = location
        super().__init__(self._render())

    @classmethod
    def here(cls, problem: str, hint: str = "") -> TraceError:
        """An error located at the user's line currently executing."""
        return cls(problem, hint, location_in_stack(sys._getframe(1)))

    def _render(self) -> str:
        lines = [self.problem]
        if self.location is not None:
            lines = [f"{self.location.filename}:{self.location.lineno}: {self.problem}"]
            if self.location.source:
                lines.append(f"    {self.location.source}")
        if self.hint:
            lines.append(self.hint)
        return "\n".join(lines)


class StaleTrace(Exception):
    """The mods' closures no longer have the shape they had when traced: the caller must trace again."""


def _is_user_file(filename: str) -> bool:
    path = os.path.abspath(filename) if not filename.startswith("<") else filename
    return not (path.startswith(_ATTNC_DIR) or path.startswith(_TORCH_DIR))


def location_in_stack(frame: FrameType | None) -> Location | None:
    """The innermost user frame at or above `frame`."""
    while frame is not None:
        if _is_user_file(frame.f_code.co_filename):
            return Location(frame.f_code.co_filename, frame.f_lineno)
        frame = frame.f_back
    return None


def location_in_traceback(tb: TracebackType | None) -> Location | None:
    """The innermost user frame of an exception's traceback."""
    found = None
    while tb is not None:
        if _is_user_file(tb.tb_frame.f_code.co_filename):
            found = Location(tb.tb_frame.f_code.co_filename, tb.tb_lineno)
        tb = tb.tb_next
    return found


def location_of_code(code: CodeType | None) -> Location | None:
    return None if code is None else Location(code.co_filename, code.co_firstlineno)


def wrap_exception(exc: Exception, what: str) -> TraceError:
    """A TraceError for an exception a mod raised while being traced."""
    return TraceError(
        f"calling {what} on traced values raised {type(exc).__name__}: {exc}",
        location=location_in_traceback(exc.__traceback__),
    )
