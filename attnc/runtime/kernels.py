"""The kernels of one variant: generated from its optimised program on first use, imported from the verified
kernel cache (`attnc.runtime.cache`), and kept for the variant's life.

    forward      attnc.codegen.forward     the closed-form tile loops and the BlockMask loop in one kernel
    backward     attnc.codegen.backward    dK/dV and dQ, one module
    block_map    attnc.codegen.block_map   the builder for masks whose structure leaves blocks open
    decode       attnc.codegen.decode      split-KV decoding with GQA packing

A kernel finds its key tiles itself from the mask's closed-form ranges (`structure`) unless the mask reads
tensors at positions that move with q or kv; then it is given a block map (`attnc.runtime.planner`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from attnc.codegen.backward import DKDV_KERNEL, DQ_KERNEL, BackwardSource, generate_backward
from attnc.codegen.block_map import generate_block_map
from attnc.codegen.decode import generate_decode
from attnc.codegen.forward import KernelSource, generate_forward
from attnc.ir import Node, Program
from attnc.ir.passes import optimize
from attnc.ir.tiles import TileTest, kv_full_range, kv_ranges, tile_test
from attnc.ir.transpose import q_full_range, q_ranges
from attnc.runtime import cache as kernel_files
from attnc.runtime import sparsity


class VariantKernels:
    """Sources and imported kernels of one optimised program, each made on first use."""

    def __init__(self, program: Program) -> None:
        self.program = program
        self._sources: dict[str, Any] = {}
        self._kernels: dict[str, Any] = {}

    @property
    def forward_source(self) -> KernelSource:
        if "forward" not in self._sources:
            test, ranges = (None, None) if self.program.mask is None else structure(self.program)
            full = kv_full_range(self.program.mask) if ranges is not None else None
            self._sources["forward"] = generate_forward(self.program, test, ranges, full)
        return self._sources["forward"]

    @property
    def backward_source(self) -> BackwardSource:
        """The dK/dV and dQ kernels' module, for runtime parameters that are finite and not 0 (every launch but
        the rare one `backward_for` gives the module that assumes nothing of them)."""
        return self._backward_source("backward", params_finite_nonzero=True)

    def backward_source_for(self, params: Sequence[int | float]) -> BackwardSource:
        """The backward module a launch with these parameter values runs."""
        source = self.backward_source
        if source.assumes_params and not all(math.isfinite(p) and p != 0 for p in params):
            return self._backward_source("backward_any_params", params_finite_nonzero=False)
        return source

    def _backward_source(self, key: str, *, params_finite_nonzero: bool) -> BackwardSource:
        if key not in self._sources:
            test, ranges = (None, None) if self.program.mask is None else structure(self.program)
            key_ranges = q_ranges(self.program.mask) if ranges is not None else None
            full_keys = kv_full_range(self.program.mask) if ranges is not None else None
            full_queries = q_full_range(self.program.mask) if ranges is not None else None
            self._sources[key] = generate_backward(self.program, test, ranges, key_ranges, full_keys, full_queries,
                                                   params_finite_nonzero=params_finite_nonzero)
        return self._sources[key]

    @property
    def block_map_source(self) -> KernelSource:
        if "block_map" not in self._sources:
            if self.program.mask is None:
                raise ValueError("attnc: this variant has no mask; it has no block map to build")
            self._sources["block_map"] = generate_block_map(self.program, simplified_test(self.program))
        return self._sources["block_map"]

    @property
    def decode_source(self) -> KernelSource:
        if "decode" not in self._sources:
            self._sources["decode"] = generate_decode(self.program)
        return self._sources["decode"]

    def forward(self) -> Any:
        return self._imported("forward", self.forward_source, self.forward_source.kernel_name)

    def backward(self, params: Sequence[int | float] = ()) -> tuple[Any, Any]:
        """(dK/dV kernel, dQ kernel) for a launch with these parameter values (`backward_source_for`)."""
        source = self.backward_source_for(params)
        key = "backward" if source is self.backward_source else "backward_any_params"
        if key not in self._kernels:
            self._kernels[key] = (self._imported(f"dkdv:{key}", source, DKDV_KERNEL),
                                  self._imported(f"dq:{key}", source, DQ_KERNEL))
        return self._kernels[key]

    def block_map(self) -> Any:
        return self._imported("block_map", self.block_map_source, self.block_map_source.kernel_name)

    def decode(self) -> Any:
        return self._imported("decode", self.decode_source, self.decode_source.kernel_name)

    def imported(self, key: str) -> bool:
        """Whether kernel `key` ("forward", "backward", "backward_any_params", "block_map", "decode") has been
        imported yet."""
        return key in self._kernels

    def _imported(self, key: str, source: Any, name: str) -> Any:
        if key not in self._kernels:
            self._kernels[key] = getattr(kernel_files.kernel_cache().module(source.source), name)
        return self._kernels[key]


def structure(program: Program) -> tuple[TileTest | None, list[tuple[Any, Any]] | None]:
    """The mask's tile test and its closed-form key ranges, for the forward kernel to find its tiles itself.
    (None, None) for a mask that reads tensors at q- or kv-dependent positions: such a kernel is given a
    block map (`attnc.runtime.planner`) instead."""
    assert program.mask is not None
    if sparsity.reads_data(program.mask):
        return None, None
    return simplified_test(program), kv_ranges(program.mask)


def simplified_test(program: Program) -> TileTest:
    """The mask's tile test with no per-block value ranges (loads are unknowns), simplified by the passes."""
    assert program.mask is not None
    test = tile_test(program.mask)

    def simplified(condition: Node) -> Node:
        return optimize(program.replace(mask=condition, score=None)).mask

    return TileTest(simplified(test.may_true), simplified(test.may_false))
