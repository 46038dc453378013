"""`torch.nn` modules over attnc: `Attention` (projections, GQA, RoPE, QK-norm, a variant with learnable
position biases, KV-cache decoding) and its parts. See docs/nn.md.

    import attnc.nn
    layer = attnc.nn.Attention(256, 8, 2, variant=["causal", attnc.nn.ALiBi(learnable=True)], rope=False)
    y = layer(x)                                      # x [B, L, 256]
"""

from attnc.nn.attention import NAMED_VARIANTS, Attention
from attnc.nn.kv_cache import KVCache
from attnc.nn.position_bias import ALiBi, RelativeBias, T5Bias
from attnc.nn.rope import RotaryEmbedding, rotate_half

__all__ = ["NAMED_VARIANTS", "ALiBi", "Attention", "KVCache", "RelativeBias", "RotaryEmbedding", "T5Bias",
           "rotate_half"]
