"""Load a variant from a `.attn` file and bind its tensor and parameter by name at call time.

    python examples/from_text.py
"""

from __future__ import annotations

from pathlib import Path

import torch

import attnc
from attnc import variants as V

heads = 4
slopes = torch.tensor(V.alibi_slopes(heads))
q, k, v = (torch.randn(1, heads, 120, 32) for _ in range(3))

attn = attnc.compile(str(Path(__file__).with_name("alibi_window.attn")))
out = attn(q, k, v, slopes=slopes, backend="triton")            # window: its default, 32
wider = attn(q, k, v, slopes=slopes, window=64, backend="triton")  # a runtime parameter: no recompile

python_form = attnc.compile(mask_mod=V.sliding_window(32), score_mod=V.alibi(heads))
error = (out - python_form(q, k, v, backend="reference")).abs().max()
print(f"text variant vs the library's Python form: max |difference| = {error:.2e}")
print(f"window 32 vs 64 differ: {not torch.allclose(out, wider)}")
