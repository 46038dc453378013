"""Argument preparation and launch of the generated forward kernel.

Validation happens here, before anything reaches Triton, so bad input gets an error that names the
problem instead of a Triton traceback.
"""

from __future__ import annotations

import dataclasses
import math
import struct
from collections.abc import Sequence
from typing import Any

import torch
import triton

from attnc.codegen.skeleton import DIVISORS_ANY, DIVISORS_POSITIVE, DIVISORS_TILED
from attnc.runtime.block_mask import block_size_pair
from attnc.runtime.config import KernelConfig, next_power_of_two

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# float64 inputs (gradcheck's dtype) are computed in float64 throughout; the others in float32
KERNEL_DTYPES = SUPPORTED_DTYPES
MAX_HEAD_DIM = 256


@dataclasses.dataclass(frozen=True)
class Shapes:
    B: int
    Hq: int
    Hkv: int
    Q_LEN: int
    KV_LEN: int
    D: int
    Dv: int

    @property
    def gqa_group(self) -> int:
        return self.Hq // self.Hkv


def check_inputs(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *, enable_gqa: bool) -> Shapes:
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"attnc: {name} must be a 4-D tensor [B, H, L, D], got {_describe(t)}")
        if t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"attnc: {name} has dtype {t.dtype}; supported: float16, bfloat16, float32 and float64")
    if not (query.dtype == key.dtype == value.dtype):
        raise TypeError(f"attnc: query, key and value must share a dtype, got {query.dtype}, {key.dtype}, "
                        f"{value.dtype}")
    if not (query.device == key.device == value.device):
        raise ValueError(f"attnc: query, key and value are on different devices: {query.device}, "
                         f"{key.device}, {value.device}")
    B, Hq, Q_LEN, D = query.shape
    Bk, Hkv, KV_LEN, Dk = key.shape
    if value.shape[:3] != key.shape[:3]:
        raise ValueError(f"attnc: value {tuple(value.shape)} must match key {tuple(key.shape)} in B, H and L")
    if Bk != B:
        raise ValueError(f"attnc: query batch {B} != key batch {Bk}")
    if Dk != D:
        raise ValueError(f"attnc: query head dim {D} != key head dim {Dk}")
    _check_heads(Hq, Hkv, enable_gqa)
    Dv = value.shape[-1]
    if max(D, Dv) > MAX_HEAD_DIM:
        raise ValueError(f"attnc: head dims up to {MAX_HEAD_DIM} are supported, got D={D}, Dv={Dv}")
    return Shapes(B, Hq, Hkv, Q_LEN, KV_LEN, D, Dv)


def check_kernel_dtype(query: torch.Tensor) -> None:
    """The generated kernels take every supported dtype: float64 is computed in float64, the rest in float32."""
    if query.dtype not in KERNEL_DTYPES:
        raise TypeError(f"attnc: the generated kernels take float16, bfloat16, float32 and float64 inputs, got "
                        f"{query.dtype}")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a kernel computes in for inputs of `dtype` (its row statistics and gradient buffers too)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def scalar_argument(value: int | float, dtype: torch.dtype) -> int | float:
    """A scalar kernel argument for inputs of `dtype`. Triton passes a Python float as a float32; a float64
    kernel gets a float's 64 bits as an int64 (`_float_argument` in the kernel helpers reads them back). Bits that
    would fit in int32 (0.0 and doubles below 1e-314) become 0: Triton would pass them as an int32, a number."""
    if dtype != torch.float64 or not isinstance(value, float):
        return value
    bits = struct.unpack("<q", struct.pack("<d", value))[0]
    return bits if not -(2**31) <= bits < 2**31 else 0


def _check_heads(Hq: int, Hkv: int, enable_gqa: bool) -> None:
    if Hq == Hkv:
        return
    if Hkv == 0 or Hq % Hkv:
        raise ValueError(f"attnc: query heads ({Hq}) must be a multiple of key/value heads ({Hkv})")
    if not enable_gqa:
        raise ValueError(f"attnc: query has {Hq} heads but key/value have {Hkv}; pass enable_gqa=True "
                         "for grouped-query attention")


def _describe(t: object) -> str:
    return f"shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__


def check_captures(tensors: Sequence[torch.Tensor], device: torch.device) -> None:
    for slot, t in enumerate(tensors):
        if t.device != device:
            raise ValueError(f"attnc: captured tensor #{slot} (shape {tuple(t.shape)}) is on {t.device} but the "
                             f"inputs are on {device}; move it to {device}")
        if t.numel() == 0:
            raise ValueError(f"attnc: captured tensor #{slot} is empty; a mod cannot read from it")


def tile_divisors(params: Sequence[int | float], slots: Sequence[int], block: int) -> int:
    """What the parameters in `slots` (those dividing a kernel's tile index) are, for the kernel's TILE_DIVISORS
    constexpr (`attnc.codegen.skeleton.TileIndex`): DIVISORS_TILED where every one is a positive multiple of the
    tile length `block` (each tile divides its first index once), DIVISORS_POSITIVE where every one is positive
    (a division without sign fixes), else DIVISORS_ANY (as are kernels without such divisions)."""
    values = [params[s] for s in slots]
    if not values or not all(float(v).is_integer() and v > 0 for v in values):
        return DIVISORS_ANY
    return DIVISORS_TILED if all(int(v) % block == 0 for v in values) else DIVISORS_POSITIVE


def score_factor_positive(params: Sequence[int | float], slot: int | None) -> bool:
    """Whether the parameter in `slot`, the score mod's last factor (`attnc.codegen.skeleton.score_value_lines`),
    is positive, so that the kernel applies it in the exponent's multiply-add instead of once per score."""
    return slot is not None and params[slot] > 0


def aligned_block(block: int, params: Sequence[int | float], slots: Sequence[int]) -> int:
    """The tile length for a kernel whose tile index is divided by the parameters in `slots`: `block`, or half of
    it (at least 64) where that makes the divisions tile-aligned and `block` does not. A 2-D canvas 64 tokens
    wide then gets 64-key tiles, each inside one canvas row: the tile's row is one scalar and its columns an
    offset, instead of a division per column, which costs more than the narrower tile."""
    half = block // 2
    if half >= 64 and DIVISORS_TILED == tile_divisors(params, slots, half) != tile_divisors(params, slots, block):
        return half
    return block


def constexprs(shapes: Shapes, config: KernelConfig, dtype: torch.dtype, *, block_sizes: tuple[int, int] | None,
               has_full: bool, has_mask: bool, interpret: bool, scale: float | None = None,
               divisors: int = DIVISORS_ANY, factor_positive: bool = False) -> dict[str, Any]:
    q_block, kv_block = block_sizes or (config.block_m, config.block_n)
    sm_scale = default_scale(shapes) if scale is None else scale
    return {
        "HEAD_D": shapes.D, "HEAD_DV": shapes.Dv,
        "D_PAD": next_power_of_two(shapes.D), "DV_PAD": next_power_of_two(shapes.Dv),
        "BLOCK_M": config.block_m, "BLOCK_N": config.block_n,
        "SPARSE_Q_BLOCK": q_block, "SPARSE_KV_BLOCK": kv_block,
        "USE_BLOCK_MASK": block_sizes is not None, "HAS_FULL_BLOCKS": has_full, "HAS_MASK": has_mask,
        # every key tile a loop may visit lies inside the sequence: with a BlockMask, a block's later tiles
        # can start past KV_LEN unless the length is a multiple of the block
        "KV_EVEN": shapes.KV_LEN % kv_block == 0,
        # The interpreter's bf16 arithmetic is inexact: it computes on float32 copies.
        "UPCAST": interpret,
        # float32 inputs get exact float32 products, not TF32 (float64 ones float64 products).
        "DOT_PRECISION": "ieee" if dtype in (torch.float32, torch.float64) else "tf32",
        "USE_TMA": config.tma, "WARP_SPECIALIZE": config.warp_specialize,
        # A positive scale keeps the row maximum in place, so it scales the maximum instead of each score.
        "SCALE_POSITIVE": sm_scale > 0,
        # Single-instruction transcendentals where their error is below the inputs' own precision; the
        # interpreter cannot run inline PTX.
        "FAST_MATH": not interpret and dtype in (torch.float16, torch.bfloat16),
        "TILE_DIVISORS": divisors,
        # the score mod's last factor, a parameter, is positive: the exponent applies it (`score_factor_positive`)
        "SCORE_FACTOR_POSITIVE": factor_positive,
    }


def default_scale(shapes: Shapes) -> float:
    return 1.0 / math.sqrt(shapes.D)


def tma_ready(*tensors: torch.Tensor) -> bool:
    """Whether tensor descriptors can stream rows of these [B, H, L, D] tensors: a unit last stride, and
    16-byte aligned base addresses and strides (TMA's requirements)."""
    for t in tensors:
        size = t.element_size()
        if t.stride(-1) != 1 or t.data_ptr() % 16 or any(s * size % 16 for s in t.stride()[:-1]):
            return False
    return True


def with_tma_if_ready(config: KernelConfig, *tensors: torch.Tensor) -> KernelConfig:
    """`config`, without TMA where the tensors do not allow it (the results are the same either way)."""
    if config.tma and not tma_ready(*tensors):
        return dataclasses.replace(config, tma=False)
    if config.tma:
        ensure_allocator()
    return config


def ensure_allocator() -> None:
    """Device-side tensor descriptors live in scratch memory Triton asks an allocator for: give it torch's
    unless the program installed its own."""
    try:
        from triton.runtime import _allocation

        if not isinstance(_allocation._allocator.get(), _allocation.NullAllocator):
            return
    except (ImportError, AttributeError):  # another Triton layout: installing ours is still correct
        pass
    triton.set_allocator(_torch_scratch)


def _torch_scratch(size: int, alignment: int, stream: int | None) -> torch.Tensor:
    return torch.empty(size, dtype=torch.int8, device="cuda")


def block_mask_args(block_mask: Any, shapes: Shapes, dummy: torch.Tensor, side: str = "kv") -> tuple[list[Any], bool]:
    """The BlockMask lists a kernel reads, broadcast to [B, Hq, ...], then their strides; dummies without
    one. `side` "kv": for each query block its key blocks (forward, dQ); "q": the transpose (dK/dV)."""
    if block_mask is None:
        return [dummy, dummy, dummy, dummy] + [0] * 14, False
    B, H = shapes.B, shapes.Hq
    num = getattr(block_mask, f"{side}_num_blocks").expand(B, H, -1)
    idx = getattr(block_mask, f"{side}_indices").expand(B, H, -1, -1)
    full_num, full_idx = getattr(block_mask, f"full_{side}_num_blocks"), getattr(block_mask, f"full_{side}_indices")
    has_full = full_num is not None
    full_num = full_num.expand(B, H, -1) if has_full else num
    full_idx = full_idx.expand(B, H, -1, -1) if has_full else idx
    strides = [*num.stride(), *idx.stride(), *full_num.stride(), *full_idx.stride()]
    return [num, idx, full_num, full_idx, *strides], has_full


def check_block_mask(block_mask: Any, shapes: Shapes, device: torch.device) -> tuple[int, int]:
    q_block, kv_block = block_size_pair(block_mask.BLOCK_SIZE)
    seq = tuple(block_mask.seq_lengths)
    if seq != (shapes.Q_LEN, shapes.KV_LEN):
        raise ValueError(f"attnc: the BlockMask was built for (Q_LEN, KV_LEN) = {seq} but the inputs have "
                         f"{(shapes.Q_LEN, shapes.KV_LEN)}; build it with the inputs' lengths")
    mb, mh = block_mask.kv_num_blocks.shape[:2]
    if mb not in (1, shapes.B) or mh not in (1, shapes.Hq):
        raise ValueError(f"attnc: the BlockMask has B={mb}, H={mh}; the inputs need B in (1, {shapes.B}) and "
                         f"H in (1, {shapes.Hq})")
    if block_mask.kv_num_blocks.shape[2] < triton.cdiv(shapes.Q_LEN, q_block):
        raise ValueError("attnc: the BlockMask has fewer query blocks than the inputs need")
    if block_mask.kv_num_blocks.device != device:
        raise ValueError(f"attnc: the BlockMask is on {block_mask.kv_num_blocks.device} but the inputs are on "
                         f"{device}; call block_mask.to({str(device)!r})")
    return q_block, kv_block


def dimension_order(t: torch.Tensor) -> list[int]:
    """t's dimensions from the outermost in memory to the innermost (ties: in dimension order)."""
    return sorted(range(t.dim()), key=lambda d: (-t.stride(d), d))


def empty_in_order_of(like: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """An empty tensor of `shape` laid out in memory in `like`'s dimension order: an output keeps its query's
    layout (a [B, S, H, D] tensor viewed as [B, H, S, D] gives an output with the same memory order)."""
    order = dimension_order(like)
    physical = like.new_empty([shape[d] for d in order])
    return physical.permute([order.index(d) for d in range(len(order))])


def in_order_of(like: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """`t` (same rank as `like`) laid out in `like`'s dimension order; differentiable, no copy when it is."""
    order = dimension_order(like)
    return t.permute(order).contiguous().permute([order.index(d) for d in range(len(order))])


def capture_args(tensors: Sequence[torch.Tensor], params: Sequence[int | float]) -> list[Any]:
    args: list[Any] = []
    for t in tensors:
        args += [t, *t.stride(), *t.shape]
    return args + list(params)


def launch_forward(kernel: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *,
                   shapes: Shapes, scale: float | None, tensors: Sequence[torch.Tensor],
                   params: Sequence[int | float], block_mask: Any, config: KernelConfig, has_mask: bool,
                   interpret: bool, divisor_slots: Sequence[int] = (),
                   factor_slot: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    out = empty_in_order_of(query, (shapes.B, shapes.Hq, shapes.Q_LEN, shapes.Dv))
    lse = row_statistics_buffer(shapes, query.device, compute_dtype(query.dtype))[0]
    if shapes.Q_LEN == 0:
        return out, lse
    block_sizes = check_block_mask(block_mask, shapes, query.device) if block_mask is not None else None
    if block_sizes is not None:
        config = config.fit_to_blocks(*block_sizes)
    config = with_tma_if_ready(config, key, value)
    bm_args, has_full = block_mask_args(block_mask, shapes, lse)
    sm_scale = scale if scale is not None else default_scale(shapes)
    grid = (triton.cdiv(shapes.Q_LEN, config.block_m), shapes.B * shapes.Hq)
    _run(kernel, grid, config, query, key, value, out, lse, bm_args, scalar_argument(float(sm_scale), query.dtype),
         shapes, capture_args(tensors, [scalar_argument(p, query.dtype) for p in params]),
         constexprs(shapes, config, query.dtype, block_sizes=block_sizes, has_full=has_full,
                    has_mask=has_mask, interpret=interpret, scale=sm_scale,
                    divisors=tile_divisors(params, divisor_slots, config.block_n),
                    factor_positive=score_factor_positive(params, factor_slot)))
    return out, lse


def _run(kernel: Any, grid: tuple[int, int], config: KernelConfig, query: torch.Tensor, key: torch.Tensor,
         value: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, bm_args: list[Any], sm_scale: int | float,
         shapes: Shapes, captured: list[Any], consts: dict[str, Any]) -> None:
    kernel[grid](
        query, key, value, out, lse, *query.stride(), *key.stride(), *value.stride(), *out.stride(),
        *lse.stride(), _plane_stride(lse), *bm_args, sm_scale, shapes.Hq, shapes.gqa_group, shapes.Q_LEN,
        shapes.KV_LEN,
        *captured, **consts, num_warps=config.num_warps, num_stages=config.num_stages,
    )


# The forward's row statistics: the lse it returns is plane 0 of a [3, B, H, Q_LEN] buffer in the compute dtype
# (float32; float64 for float64 inputs) whose planes 1 and 2 hold the base-2 row maximum and log2 of the row sum,
# the two terms the backward needs apart (see the backward skeleton). The lse keeps the buffer alive, and the
# backward finds it again through the lse's storage.
STAT_PLANES = 3


def row_statistics_buffer(shapes: Shapes, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.empty(STAT_PLANES, shapes.B, shapes.Hq, shapes.Q_LEN, device=device, dtype=dtype)


def _plane_stride(lse: torch.Tensor) -> int:
    return lse.numel()


def written_statistics(lse: torch.Tensor) -> torch.Tensor | None:
    """The statistics buffer a forward kernel wrote `lse` into, or None for an lse from elsewhere."""
    storage = lse.untyped_storage()
    if (lse.dtype in (torch.float32, torch.float64) and lse.is_contiguous() and lse.storage_offset() == 0
            and storage.nbytes() == STAT_PLANES * lse.numel() * lse.element_size()):
        return lse.new_empty(0).set_(storage, 0, (STAT_PLANES, *lse.shape))
    return None


def row_statistics(lse: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The statistics buffer the forward wrote `lse` into; for an lse from elsewhere, one rebuilt from it in `dtype`
    (the kernels' compute dtype; the maximum taken as the whole base-2 lse, exact while the logits are small)."""
    written = written_statistics(lse)
    if written is not None:
        return written
    lse = lse.to(dtype)
    base2 = lse * math.log2(math.e)
    rebuilt = torch.where(lse == float("-inf"), float("inf"), base2)
    return torch.stack([lse, rebuilt, torch.zeros_like(rebuilt)]).contiguous()
