"""`kernel_options`: FlexAttention's keys, checked before anything launches, and what each means here.

Tile and launch options set the config of the kernel they name: `BLOCK_M` / `BLOCK_N`, `num_warps`,
`num_stages`, `USE_TMA`, `WARP_SPECIALIZE` the forward (and, unless given separately, bound the backward's
tiles and set its warps, stages and flags); `BLOCK_M1` / `BLOCK_N1` the dK/dV kernel (query and key tile),
`BLOCK_M2` / `BLOCK_N2` the dQ kernel. A `fwd_` or `bwd_` prefix limits an option to one direction, as in
torch. Options that choose between torch's own implementations, or tune code attnc does not generate, are
accepted and do nothing (`ACCEPTED` says why for each). Anything else is an error listing the known keys.
"""

from __future__ import annotations

import contextlib
import dataclasses
import operator
from collections.abc import Mapping
from typing import Any

from attnc.runtime.config import KernelConfig, field_problem

# option -> KernelConfig field
CONFIG_FIELDS = {"BLOCK_M": "block_m", "BLOCK_N": "block_n", "num_warps": "num_warps", "num_stages": "num_stages",
                 "USE_TMA": "tma", "WARP_SPECIALIZE": "warp_specialize"}
FLAG_OPTIONS = ("USE_TMA", "WARP_SPECIALIZE")
# backward tiles: option -> (kernel, field)
BACKWARD_TILES = {"BLOCK_M1": ("dkdv", "block_m"), "BLOCK_N1": ("dkdv", "block_n"),
                  "BLOCK_M2": ("dq", "block_m"), "BLOCK_N2": ("dq", "block_n")}
ACCEPTED = {
    "PRESCALE_QK": "attnc folds the scale into the exponent's multiply-add already",
    "ROWS_GUARANTEED_SAFE": "a row without keys always gives 0 and lse -inf, at no cost in unmasked tiles",
    "BLOCKS_ARE_CONTIGUOUS": "block lists are read as they are given",
    "WRITE_DQ": "dQ is always written by its own kernel",
    "FORCE_USE_FLEX_ATTENTION": "attnc always runs its own kernels",
    "kpack": "an AMD matrix-core option; attnc generates for NVIDIA GPUs",
    "matrix_instr_nonkdim": "an AMD matrix-core option; attnc generates for NVIDIA GPUs",
    "waves_per_eu": "an AMD occupancy option; attnc generates for NVIDIA GPUs",
}


@dataclasses.dataclass(frozen=True)
class CallOptions:
    """How one call runs, apart from its tensors: what `attend` and the custom ops take."""

    scale: float | None = None
    enable_gqa: bool = True
    backend: str = "auto"
    kernel_options: Mapping[str, Any] | None = None
    deterministic: bool = False


BACKENDS = ("AUTO", "TRITON", "FLASH", "TRITON_DECODE")
_INTERNAL = ("OUTPUT_LOGSUMEXP", "OUTPUT_MAX")  # torch sets these itself and refuses them from users


def known_options() -> list[str]:
    base = [*CONFIG_FIELDS, *BACKWARD_TILES]
    return sorted([*base, *(f"fwd_{n}" for n in CONFIG_FIELDS), *(f"bwd_{n}" for n in base if n not in
                                                                 ("BLOCK_M", "BLOCK_N")), *ACCEPTED, "BACKEND"])


@dataclasses.dataclass(frozen=True)
class KernelOptions:
    """Checked options: the KernelConfig fields set for each kernel."""

    forward: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    backward: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # warps, stages, flags of both
    dkdv: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    dq: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    tile_bound: Mapping[str, int] = dataclasses.field(default_factory=dict)  # forward tiles bounding the backward's

    def __bool__(self) -> bool:
        return any((self.forward, self.backward, self.dkdv, self.dq, self.tile_bound))

    def forward_config(self, config: KernelConfig) -> KernelConfig:
        return dataclasses.replace(config, **self.forward) if self.forward else config

    def backward_config(self, kernel: str, config: KernelConfig) -> KernelConfig:
        """The dK/dV (`kernel` "dkdv") or dQ config: tiles given for it, else the forward's tiles as an upper
        bound (a BlockMask's blocks must still divide them), then the backward's warps, stages and flags."""
        own = self.dkdv if kernel == "dkdv" else self.dq
        tiles = {field: min(getattr(config, field), bound) for field, bound in self.tile_bound.items()}
        return dataclasses.replace(config, **{**tiles, **self.backward, **own})


def check_kernel_options(options: Any) -> KernelOptions:
    """A user's `kernel_options`, checked before anything launches; a ValueError names the first option that is
    unknown, out of range, or that torch also refuses."""
    if options is None:
        return KernelOptions()
    if not isinstance(options, Mapping):
        raise ValueError(f"attnc: kernel_options must be a dict of option names to values, got "
                         f"{type(options).__name__}")
    known = set(known_options())
    unknown = sorted(str(n) for n in options if n not in known)
    if unknown:
        internal = [n for n in unknown if n in _INTERNAL]
        if internal:
            raise ValueError(f"attnc: kernel_options {internal} are set by the call itself (return_lse), not by "
                             "the caller")
        raise ValueError(f"attnc: unknown kernel_options {unknown}; known: {sorted(known)}")
    _check_backend(options)
    _check_accepted(options)
    sorted_options = _by_direction(options)
    return KernelOptions(
        forward={CONFIG_FIELDS[n]: v for n, v in sorted_options["fwd"].items()},
        backward={CONFIG_FIELDS[n]: v for n, v in sorted_options["bwd"].items() if n not in ("BLOCK_M", "BLOCK_N")},
        dkdv={BACKWARD_TILES[n][1]: v for n, v in sorted_options["tiles"].items() if BACKWARD_TILES[n][0] == "dkdv"},
        dq={BACKWARD_TILES[n][1]: v for n, v in sorted_options["tiles"].items() if BACKWARD_TILES[n][0] == "dq"},
        tile_bound={CONFIG_FIELDS[n]: v for n, v in sorted_options["bound"].items()},
    )


def _by_direction(options: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Checked values by where they apply: "fwd", "bwd" (both backward kernels), "tiles" (one backward
    kernel's tiles), "bound" (forward tiles bounding the backward's). A prefixed option wins over the plain
    one for its direction."""
    found: dict[str, dict[str, Any]] = {"fwd": {}, "bwd": {}, "tiles": {}, "bound": {}}
    for name, value in sorted(options.items(), key=lambda item: item[0].startswith(("fwd_", "bwd_"))):
        if name in ACCEPTED or name == "BACKEND":
            continue
        direction, base = (name[:3], name[4:]) if name.startswith(("fwd_", "bwd_")) else ("both", name)
        if base in BACKWARD_TILES:
            found["tiles"][base] = _value(name, BACKWARD_TILES[base][1], value)
            continue
        checked = _value(name, CONFIG_FIELDS[base], value)
        if direction in ("fwd", "both"):
            found["fwd"][base] = checked
        if direction in ("bwd", "both"):
            found["bwd"][base] = checked
            if base in ("BLOCK_M", "BLOCK_N"):
                found["bound"][base] = checked
    return found


def _value(name: str, field: str, value: Any) -> Any:
    normalised = value
    if field not in ("tma", "warp_specialize") and type(value) is not bool:
        with contextlib.suppress(TypeError):  # numpy and torch integers are integers; 2.0 and "64" are not
            normalised = operator.index(value)
    problem = field_problem(field, normalised)
    if problem is not None:
        base = name[4:] if name.startswith(("fwd_", "bwd_")) else name
        raise ValueError(f"attnc: kernel_options[{name!r}]={value!r} is invalid: {base} {problem}")
    return normalised


def _check_accepted(options: Mapping[str, Any]) -> None:
    """The accepted options still have torch's types: flags booleans, the AMD tuning knobs integers."""
    for name, value in options.items():
        if name not in ACCEPTED:
            continue
        integer = name in ("kpack", "matrix_instr_nonkdim", "waves_per_eu")
        if (type(value) is not bool) if not integer else (type(value) is bool or not isinstance(value, int)):
            kind = "an integer" if integer else "True or False"
            raise ValueError(f"attnc: kernel_options[{name!r}]={value!r} is invalid: {name} must be {kind}")


def _check_backend(options: Mapping[str, Any]) -> None:
    if "BACKEND" not in options:
        return
    if options["BACKEND"] not in BACKENDS:
        raise ValueError(f"attnc: kernel_options['BACKEND']={options['BACKEND']!r} is invalid: one of {BACKENDS}")
    if options.get("FORCE_USE_FLEX_ATTENTION", False):
        raise ValueError("attnc: kernel_options BACKEND and FORCE_USE_FLEX_ATTENTION cannot be combined (as in "
                         "torch): BACKEND supersedes it")
