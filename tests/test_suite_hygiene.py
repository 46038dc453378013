"""The test suite is a reliable tool: no test asserts on wall-clock time (a loaded machine would fail it;
speed belongs in the benchmarks)."""

from __future__ import annotations

import ast
import pathlib

TESTS = pathlib.Path(__file__).parent
CLOCKS = {"time", "perf_counter", "monotonic", "process_time", "perf_counter_ns", "monotonic_ns", "time_ns"}


def clock_reads(tree: ast.AST) -> set[str]:
    """Names bound to a clock reading (`start = ` one of the CLOCKS of the time module)."""
    names = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Assign) and reads_clock(n.value):
            names |= {t.id for t in n.targets if isinstance(t, ast.Name)}
    return names


def reads_clock(expression: ast.AST) -> bool:
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in CLOCKS
               and isinstance(n.func.value, ast.Name) and n.func.value.id == "time" for n in ast.walk(expression))


def wall_clock_asserts(source: str) -> list[int]:
    tree = ast.parse(source)
    timers = clock_reads(tree)
    return [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Assert)
            and (reads_clock(n.test) or any(isinstance(x, ast.Name) and x.id in timers for x in ast.walk(n.test)))]


# the planted examples name the clocks through these, so this file holds no clock call of its own
PERF, WALL = "time." + "perf_counter()", "time." + "time()"


def test_the_checker_finds_wall_clock_asserts() -> None:
    source = f"import time\nstart = {PERF}\nwork()\nassert {PERF} - start < 5.0\n"
    assert wall_clock_asserts(source) == [4]
    assert wall_clock_asserts(f"import time\nt0 = {WALL}\nassert t0 > 0\n") == [3]
    assert wall_clock_asserts("x = compute()\nassert x < 5.0\n") == []


def test_no_test_asserts_on_wall_clock_time() -> None:
    found = {path.name: lines for path in sorted(TESTS.glob("*.py"))
             if (lines := wall_clock_asserts(path.read_text()))}
    assert not found, f"wall-clock assertions (file: lines): {found}"
