"""attnc: an attention compiler.

Write an attention variant as FlexAttention-style `mask_mod` / `score_mod` functions; attnc traces them
to an IR, optimises it, generates a fused Triton kernel and checks it against a reference interpreter.

Importing the package is cheap: the public names below are imported from their modules on first use
(PEP 562), so `attnc --help` does not pay for torch and triton. Every name of `__all__` still works as
`from attnc import X` and as `attnc.X`, and subpackages (`attnc.variants`, `attnc.nn`, ...) load on
attribute access.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import os
import sys
from typing import Any

__version__ = "0.1.0"

# Where each public name lives. AuxOutput / AuxRequest are FlexAttention's own types for return_aux, so code
# importing them from here works.
_EXPORTS: dict[str, str] = {
    "Attention": "attnc.api",
    "AuxOutput": "attnc.api",
    "AuxRequest": "attnc.api",
    "compile": "attnc.api",
    "create_block_mask": "attnc.api",
    "flex_attention": "attnc.api",
    "TextError": "attnc.dsl.text",
    "TextVariant": "attnc.dsl.text",
    "parse": "attnc.dsl.text",
    "TraceError": "attnc.dsl.trace",
    "BlockMask": "attnc.runtime.block_mask",
    "merge_attention": "attnc.runtime.merge",
    "visualize": "attnc.runtime.visualize",
    "kvcache_attention": "attnc.serving.kvcache",
    "varlen_attention": "attnc.serving.varlen",
    "and_masks": "attnc.variants.combinators",
    "noop_mask": "attnc.variants.combinators",
    "or_masks": "attnc.variants.combinators",
}

__all__ = [
    "Attention", "AuxOutput", "AuxRequest", "BlockMask", "TextError", "TextVariant", "TraceError", "and_masks",
    "compile", "create_block_mask", "flex_attention", "kvcache_attention", "merge_attention", "noop_mask",
    "or_masks", "parse", "varlen_attention", "visualize",
]


class _InterpreterSwitch(importlib.abc.MetaPathFinder):
    """Runs `attnc.runtime.interpreter.enable_if_no_gpu` just before triton is first imported.

    Triton reads TRITON_INTERPRET once, at its own import (see attnc/runtime/interpreter.py), and deciding
    needs torch (is there a CUDA GPU?). Doing it here, on the way into triton, keeps `import attnc` free of
    torch and triton while every path to triton, through any attnc module or the user's own `import triton`
    after `import attnc`, still sees the decision first."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "triton":
            _remove_interpreter_switch()
            from attnc.runtime.interpreter import enable_if_no_gpu

            enable_if_no_gpu()
        return None  # never finds anything itself: the regular finders import triton


def _remove_interpreter_switch() -> None:
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _InterpreterSwitch)]


def _install_interpreter_switch() -> None:
    # Nothing to decide once triton is imported or the user chose; a re-imported attnc installs one switch.
    if "triton" in sys.modules or "TRITON_INTERPRET" in os.environ:
        return
    _remove_interpreter_switch()
    sys.meta_path.insert(0, _InterpreterSwitch())


_install_interpreter_switch()


def __getattr__(name: str) -> Any:
    """A public name from its module, or a subpackage (attnc.variants, attnc.nn, ...), on first use."""
    module_name = _EXPORTS.get(name)
    if module_name is not None:
        value = getattr(importlib.import_module(module_name), name)
    elif not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    # the package's own dunders, its public names and subpackages; not the helpers above
    return sorted({*(n for n in globals() if n.startswith("__")), *__all__, *_subpackages()})


def _subpackages() -> list[str]:
    import pkgutil

    return [info.name for info in pkgutil.iter_modules(__path__) if not info.name.startswith("_")]
