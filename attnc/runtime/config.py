"""Settings read in one place, and the default tile configuration per head dim.

`Settings` is the only reader of the environment; `KernelConfig` is the tile shape and launch
parameters of one kernel (`attnc.runtime.autotune` picks among them per GPU). A `KernelConfig` checks its
fields when it is made, so no invalid config (from a user's `kernel_options` or a tuning file) can reach a
launch: tiles are powers of two from 16 (the smallest `tl.dot`) to 256, warps one of NUM_WARPS, stages 1-8,
the Hopper options booleans.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any


@dataclasses.dataclass(frozen=True)
class Settings:
    cache_dir: Path

    @staticmethod
    def from_environment() -> Settings:
        override = os.environ.get("ATTNC_CACHE_DIR")
        if override:
            return Settings(Path(override).expanduser())
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        return Settings(Path(base) / "attnc")


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    # Hopper options: stream the looped operands through tensor descriptors (TMA), and split the loops
    # without branches into producer and consumer warps. Both are ignored where they cannot apply (TMA
    # needs unit last strides and 16-byte aligned rows; the launcher checks).
    tma: bool = False
    warp_specialize: bool = False

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            problem = field_problem(field.name, value)
            if problem is not None:
                raise ValueError(f"attnc: invalid kernel config: {field.name}={value!r}: {problem}")

    def fit_to_blocks(self, q_block: int, kv_block: int) -> KernelConfig:
        """Shrink the tiles so they divide a BlockMask's block sizes."""
        block_m = _largest_dividing_power_of_two(q_block, self.block_m)
        block_n = _largest_dividing_power_of_two(kv_block, self.block_n)
        if block_m < 16 or block_n < 16:
            raise ValueError(
                f"attnc: BlockMask BLOCK_SIZE {(q_block, kv_block)} is too small for the kernel's tiles: "
                "each block size must be a multiple of 16"
            )
        return dataclasses.replace(self, block_m=block_m, block_n=block_n)


MIN_TILE, MAX_TILE = 16, 256
NUM_WARPS = (1, 2, 4, 8, 16)
MAX_STAGES = 8
_TILE_FIELDS = ("block_m", "block_n")
_FLAG_FIELDS = ("tma", "warp_specialize")


def field_problem(name: str, value: Any) -> str | None:
    """What is wrong with `value` for the KernelConfig field `name`, or None when it is valid."""
    if name in _FLAG_FIELDS:
        return None if type(value) is bool else "must be True or False"
    if type(value) is not int:  # bool is an int subclass: True is not a tile size
        return "must be an integer"
    if name in _TILE_FIELDS:
        in_range = MIN_TILE <= value <= MAX_TILE and value & (value - 1) == 0
        return None if in_range else f"must be a power of two from {MIN_TILE} to {MAX_TILE}"
    if name == "num_warps":
        return None if value in NUM_WARPS else f"must be one of {', '.join(map(str, NUM_WARPS))}"
    if name == "num_stages":
        return None if 1 <= value <= MAX_STAGES else f"must be from 1 to {MAX_STAGES}"
    return "is not a kernel config field"


def _largest_dividing_power_of_two(n: int, cap: int) -> int:
    size = cap
    while size > 1 and n % size:
        size //= 2
    return size


def next_power_of_two(n: int) -> int:
    return max(16, 1 << (n - 1).bit_length())


INTERPRETER_TILES = KernelConfig(block_m=64, block_n=64, num_warps=4, num_stages=1)
