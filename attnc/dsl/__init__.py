"""Front ends: Python mods traced into IR (`trace`); the text syntax parses into the same IR."""

from attnc.dsl.captures import Bindings, Captures
from attnc.dsl.errors import StaleTrace, TraceError
from attnc.dsl.symbolic import Sym
from attnc.dsl.trace import Traced, trace

__all__ = ["Bindings", "Captures", "StaleTrace", "Sym", "TraceError", "Traced", "trace"]
