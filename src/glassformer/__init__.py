"""glassformer: a Transformer you can see through.

Scaled dot-product attention, multi-head attention, the encoder and decoder stacks, and the
three model families built from them (Transformer, BERT, GPT), in readable PyTorch.
"""

from glassformer.attention import MultiHeadAttention, scaled_dot_product_attention
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
