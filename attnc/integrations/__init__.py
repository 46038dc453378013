"""Thin layers that let other libraries run their attention through attnc kernels.

Each integration imports its library lazily, inside the module named after it, so `import attnc` never
needs them: `attnc.integrations.transformers` (Hugging Face transformers, the `attnc[hf]` extra).
"""
