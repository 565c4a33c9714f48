"""Data: corpora, token storage, and datasets for the four training objectives.

    text   = load_corpus("python-docs")                  # or a file, a directory, a glob
    tokens = encode_corpus("python-docs", tokenizer)     # np.memmap, encoded once and cached
    train, val = split_tokens(tokens, 0.1)               # the tail is validation
    data   = CausalLMDataset(train, context=64)
    batch  = data.batch(8, torch.Generator().manual_seed(0))
    loss   = model(**batch).loss

Every dataset's ``batch(batch_size, generator)`` returns exactly the keyword arguments of its
model's ``forward`` and draws all randomness from ``generator``:

| dataset                 | model         | keys                                                   |
| ----------------------- | ------------- | ------------------------------------------------------ |
| CausalLMDataset         | GPT           | input_ids, labels                                      |
| MLMDataset              | BERT (MLM)    | input_ids, attention_mask, labels                      |
| Seq2SeqDataset          | Transformer   | src_ids, tgt_ids, src_mask, tgt_mask, labels           |
| ClassificationDataset   | BERT + head   | input_ids, attention_mask, labels (B,)                 |
"""

from glassformer.data.batching import IGNORE_INDEX, BucketSampler, pad
from glassformer.data.classification import (
    BUILTIN_LABELS,
    ClassificationDataset,
    Labelled,
    builtin_classification,
    load_labelled,
)
from glassformer.data.corpus import (
    BUILTIN_CORPORA,
    iter_corpus_files,
    iter_corpus_text,
    load_corpus,
    stdlib_files,
)
from glassformer.data.date_order import ORDER_LABELS, date_order
from glassformer.data.dates import date_pairs
from glassformer.data.induction import ALPHABET as INDUCTION_ALPHABET
from glassformer.data.induction import RepeatedTokensDataset, induction_scores
from glassformer.data.lm import CausalLMDataset, MLMDataset, mask_tokens
from glassformer.data.seq2seq import BUILTIN_PAIRS, Seq2SeqDataset, builtin_pairs, load_pairs
from glassformer.data.swaps import SWAP_LABELS, python_swaps
from glassformer.data.tokens import CACHE_ENV, default_cache_dir, encode_corpus, split_tokens, token_dtype

# built-in classification tasks: name -> function(n, seed) -> Labelled
BUILTIN_CLASSIFICATION = {"builtin": builtin_classification, "date-order": date_order, "python-swaps": python_swaps}

__all__ = [
    "BUILTIN_CLASSIFICATION", "BUILTIN_CORPORA", "BUILTIN_LABELS", "INDUCTION_ALPHABET", "ORDER_LABELS", "SWAP_LABELS",
    "RepeatedTokensDataset", "date_order", "induction_scores", "python_swaps", "BUILTIN_PAIRS", "CACHE_ENV", "IGNORE_INDEX", "BucketSampler",
    "CausalLMDataset", "ClassificationDataset", "Labelled", "MLMDataset", "Seq2SeqDataset",
    "builtin_classification", "builtin_pairs", "date_pairs", "default_cache_dir", "encode_corpus",
    "iter_corpus_files", "iter_corpus_text", "load_corpus", "load_labelled", "load_pairs", "mask_tokens", "pad",
    "split_tokens", "stdlib_files", "token_dtype",
]
