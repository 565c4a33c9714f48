"""glassformer: a Transformer you can see through.

Scaled dot-product attention, multi-head attention, the encoder and decoder stacks, and the
three model families built from them (Transformer, BERT, GPT), in readable PyTorch.
"""

import os

# OpenMP threads that spin while waiting at barriers make every op 5-10x slower when other
# processes share the cores (measured on a 2-core CI box); sleeping waiters cost little when
# idle. Takes effect only if torch is not imported yet; set OMP_WAIT_POLICY to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from glassformer.attention import MultiHeadAttention, scaled_dot_product_attention  # noqa: E402
from glassformer.models import (
    BERT,
    GPT,
    BERTConfig,
    GPTConfig,
    ModelOutput,
    Transformer,
    TransformerConfig,
)

__version__ = "0.1.0"

__all__ = [
    "BERT", "BERTConfig", "GPT", "GPTConfig", "ModelOutput", "MultiHeadAttention", "Transformer",
    "TransformerConfig", "scaled_dot_product_attention", "__version__",
]
