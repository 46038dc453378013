"""The Triton interpreter, which runs generated kernels on CPU tensors.

Triton decides once, when `triton` is imported, whether its standard library (tl.zeros, reductions, ...)
is compiled or interpreted, from TRITON_INTERPRET. attnc therefore turns the interpreter on just before
triton is first imported (a hook `attnc/__init__.py` installs) when no CUDA GPU is present; on a GPU
machine kernels compile for the GPU and CPU tensors cannot use the Triton backend in the same process.
"""

from __future__ import annotations

import os
import sys

import torch


def enable_if_no_gpu() -> None:
    if "triton" in sys.modules or "TRITON_INTERPRET" in os.environ:
        return
    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"


def interpreter_active() -> bool:
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(tl.zeros, InterpretedFunction)


INTERPRETER_UNAVAILABLE = (
    "attnc: the Triton interpreter is not active in this process, so backend='triton' cannot run on CPU "
    "tensors. Set TRITON_INTERPRET=1 before importing triton or attnc, or move the tensors to a CUDA device, "
    "or use backend='reference'."
)
