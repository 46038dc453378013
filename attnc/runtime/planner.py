"""Block maps of one variant: which key blocks each query block visits, built from the mask's structure,
by the generated builder kernel, or densely (`BUILDERS`), for `create_block_mask` and for the kernels.

A mask that reads tensors at positions moving with q or kv (document ids, lengths) cannot give its kernels
closed-form key ranges; `BlockPlanner.data_plan` builds the block map those kernels walk from per-block
value ranges, and keeps it until a captured tensor changes (its version counter), a parameter or a shape
(`attnc.runtime.launcher` asks for it before each launch without a caller's BlockMask).
"""

from __future__ import annotations

from typing import Any

import torch

from attnc.ir import Program
from attnc.ir.divisors import DivisorCheck
from attnc.ir.interpret import Env, evaluate
from attnc.runtime import launch, sparsity
from attnc.runtime.block_mask import BlockMask, block_size_pair, build_block_mask
from attnc.runtime.device_block_map import device_block_classes
from attnc.runtime.interpreter import INTERPRETER_UNAVAILABLE, interpreter_active
from attnc.runtime.kernels import VariantKernels

# How a block map is built: from the mask's structure (O(blocks) on the host or device, with per-block
# value ranges of the tensors it reads), by the generated builder kernel (pair by pair where the structure
# leaves a block open; on a GPU, or CPU tensors through the Triton interpreter), or densely with torch.
BUILDERS = ("auto", "structure", "kernel", "dense")
PLAN_BLOCK = 128  # the block size of the maps built for masks that read data


class BlockPlanner:
    """Builds the block maps of one optimised program (and the mask_mod the BlockMasks carry)."""

    def __init__(self, program: Program, kernels: VariantKernels, divisors: DivisorCheck, mask_mod: Any) -> None:
        self.program = program
        self.kernels = kernels
        self.divisors = divisors
        self.mask_mod = mask_mod
        self._plan: tuple[Any, BlockMask | None, Any] | None = None  # (key, block map, bindings)

    def build(self, bindings: Any, B: int, H: int, Q_LEN: int, KV_LEN: int, device: Any,
              block_size: int | tuple[int, int], builder: str) -> BlockMask:
        if builder not in BUILDERS:
            raise ValueError(f"attnc: builder must be one of {BUILDERS}, got {builder!r}")
        device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        q_block, kv_block = block_size_pair(block_size)
        mask = self.program.mask
        if builder == "auto":
            builder = ("structure" if mask is None or sparsity.analysable(mask)
                       else "kernel" if device.type == "cuda" else "dense")
        tensors = [t.to(device) for t in bindings.tensors]
        self.divisors.check((B, H, Q_LEN, KV_LEN), tensors, bindings.params, bindings.version_key(), device,
                            score=False)
        shape = {"B": B, "H": H, "Q_LEN": Q_LEN, "KV_LEN": KV_LEN, "q_block": q_block, "kv_block": kv_block,
                 "device": device}
        if builder == "structure":
            if mask is not None and not sparsity.analysable(mask):
                raise ValueError("attnc: this mask reads a tensor at an index argument that depends on both q and kv; "
                                 "its structure cannot classify blocks: use builder='kernel' or 'dense'")
            classes = sparsity.classify_blocks(self.program, tensors, bindings.params, **shape)
        elif builder == "kernel":
            classes = self._kernel_classes(tensors, bindings.params, shape)
        else:
            return self._dense(tensors, bindings.params, shape)
        partial, full = sparsity.split_classes(classes, Q_LEN=Q_LEN, KV_LEN=KV_LEN, q_block=q_block,
                                               kv_block=kv_block)
        return BlockMask.from_block_classes(partial, full, BLOCK_SIZE=(q_block, kv_block),
                                            seq_lengths=(Q_LEN, KV_LEN), mask_mod=self.mask_mod)

    def _kernel_classes(self, tensors: list[torch.Tensor], params: Any, shape: dict[str, Any]) -> torch.Tensor:
        if self.program.mask is None:
            return sparsity.classify_blocks(self.program, tensors, params, **shape)
        interpret = shape["device"].type != "cuda"
        if interpret and not interpreter_active():
            raise RuntimeError(INTERPRETER_UNAVAILABLE)
        launch.check_captures(tensors, shape["device"])
        return device_block_classes(self.kernels.block_map(), tensors, params, interpret=interpret, **shape)

    def _dense(self, tensors: list[torch.Tensor], params: Any, shape: dict[str, Any]) -> BlockMask:
        def mask_fn(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
            return evaluate_mask(self.program, b, h, q, kv, tensors, params)

        return build_block_mask(mask_fn, shape["B"], shape["H"], shape["Q_LEN"], shape["KV_LEN"],
                                device=shape["device"], BLOCK_SIZE=(shape["q_block"], shape["kv_block"]),
                                mask_mod=self.mask_mod)

    def data_plan(self, bindings: Any, shapes: launch.Shapes, device: torch.device) -> BlockMask | None:
        """For a mask that reads tensors (document ids, lengths), the block map attnc builds itself from
        per-block value ranges, reused until a captured tensor changes (its version counter) or a
        parameter or a shape does; None for masks whose kernels find their tiles in closed form."""
        mask = self.program.mask
        if mask is None or not sparsity.reads_data(mask):
            return None
        key = (shapes.B, shapes.Hq, shapes.Q_LEN, shapes.KV_LEN, device, tuple(bindings.params),
               bindings.version_key())
        if self._plan is None or self._plan[0] != key:
            block_map = self.build(bindings, sparsity.broadcast_size(mask, "b", shapes.B),
                                   sparsity.broadcast_size(mask, "h", shapes.Hq), shapes.Q_LEN, shapes.KV_LEN,
                                   device, PLAN_BLOCK, "auto")
            # the bindings keep the key's tensors alive, so their ids cannot be reused by others
            self._plan = (key, block_map, bindings)
        return self._plan[1]


def evaluate_mask(program: Program, b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor,
                  tensors: list[torch.Tensor], params: Any) -> torch.Tensor:
    """The mask at the given index grids, densely (the IR interpreter); all True without a mask."""
    if program.mask is None:
        return torch.ones((), dtype=torch.bool, device=q.device)
    env = Env(b=b, h=h, q=q, kv=kv, score=None, tensors=tensors, params=params)
    return evaluate(program.mask, env)
