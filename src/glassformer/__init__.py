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

from glassformer.lazy import lazy_exports
from glassformer.threads import configure as configure_threads

# OpenMP waiters spin briefly when the cores are ours and sleep when other processes want them
# (glassformer/threads.py). Takes effect only if torch is not imported yet; OMP_WAIT_POLICY or
# GOMP_SPINCOUNT in the environment always wins.
THREADS = configure_threads()

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
