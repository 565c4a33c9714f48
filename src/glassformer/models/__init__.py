"""The three families: ``Transformer`` (encoder-decoder), ``BERT`` (encoder), ``GPT`` (decoder)."""

from glassformer.models.bert import BERT
from glassformer.models.config import BERTConfig, GPTConfig, ModelConfig, TransformerConfig, load_config
from glassformer.models.decoder import Decoder
from glassformer.models.encoder import Encoder
from glassformer.models.gpt import GPT
from glassformer.models.outputs import AttentionMap, ModelOutput
from glassformer.models.transformer import Transformer

MODEL_CLASSES = {"gpt": GPT, "bert": BERT, "transformer": Transformer}

__all__ = [
    "BERT", "BERTConfig", "Decoder", "Encoder", "GPT", "GPTConfig", "MODEL_CLASSES", "ModelConfig",
    "AttentionMap", "ModelOutput", "Transformer", "TransformerConfig", "load_config",
]
