"""glassformer: a Transformer you can see through.

Scaled dot-product attention, multi-head attention, the encoder and decoder stacks, and the
three model families built from them (Transformer, BERT, GPT), in readable PyTorch.

    import glassformer
    model = glassformer.load("runs/demo-gpt")        # any model directory: text in, text out
    print(model.generate("The meaning of"))

The names below are imported on first use (PEP 562): ``import glassformer`` alone imports
neither torch nor the models, so ``glassformer --help`` answers at once.
"""

from __future__ import annotations

import os

from glassformer.lazy import lazy_exports

# OpenMP threads that spin while waiting at barriers make every op 5-10x slower when other
# processes share the cores (measured on a 2-core CI box); sleeping waiters cost little when
# idle. Takes effect only if torch is not imported yet; set OMP_WAIT_POLICY to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

_EXPORTS = {
    "load": "glassformer.api", "Pipeline": "glassformer.api",
    "GenerationConfig": "glassformer.generation.config",
    "MultiHeadAttention": "glassformer.attention", "scaled_dot_product_attention": "glassformer.attention",
    "BERT": "glassformer.models", "BERTConfig": "glassformer.models", "GPT": "glassformer.models",
    "GPTConfig": "glassformer.models", "ModelOutput": "glassformer.models", "Transformer": "glassformer.models",
    "TransformerConfig": "glassformer.models",
}

__all__ = [*sorted(_EXPORTS), "__version__"]


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
