"""Where `check` and `bench` run kernels: a CUDA GPU, else the CPU through the Triton interpreter."""

from __future__ import annotations

import torch

from attnc.runtime.interpreter import INTERPRETER_UNAVAILABLE, interpreter_active

from .errors import CliError, Exit

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def kernel_device() -> torch.device:
    """The GPU if there is one; otherwise the CPU, which needs the Triton interpreter."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if not interpreter_active():
        raise CliError(INTERPRETER_UNAVAILABLE, Exit.MISSING)
    return torch.device("cpu")


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA)"
    return "the Triton interpreter on the CPU"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
