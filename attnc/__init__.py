"""attnc: an attention compiler.

Write an attention variant as FlexAttention-style `mask_mod` / `score_mod` functions; attnc traces them
to an IR, optimises it, generates a fused Triton kernel and checks it against a reference interpreter.
"""

from attnc.runtime.interpreter import enable_if_no_gpu

# Must run before triton is first imported (see attnc/runtime/interpreter.py).
enable_if_no_gpu()

# AuxOutput / AuxRequest: FlexAttention's own types for return_aux, so code importing them from here works
from attnc.api import Attention, AuxOutput, AuxRequest, compile, create_block_mask, flex_attention  # noqa: E402
from attnc.dsl.text import TextError, TextVariant, parse  # noqa: E402
from attnc.dsl.trace import TraceError  # noqa: E402
from attnc.runtime.block_mask import BlockMask  # noqa: E402
from attnc.runtime.merge import merge_attention  # noqa: E402
from attnc.runtime.visualize import visualize  # noqa: E402
from attnc.serving.kvcache import kvcache_attention  # noqa: E402
from attnc.serving.varlen import varlen_attention  # noqa: E402
from attnc.variants.combinators import and_masks, noop_mask, or_masks  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "Attention", "AuxOutput", "AuxRequest", "BlockMask", "TextError", "TextVariant", "TraceError", "and_masks",
    "compile", "create_block_mask", "flex_attention", "kvcache_attention", "merge_attention", "noop_mask",
    "or_masks", "parse", "varlen_attention", "visualize",
]
