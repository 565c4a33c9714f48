"""Regenerate the synthetic tokenizer files in this folder (tests read the files, not this script).

    python tests/data/make_tokenizers.py

Each folder is a tiny Hugging Face tokenizer carrying the settings that change ids or hide
padding as text, so the rules are tested without downloading a real checkpoint:

* ``padded_wordpiece/``: BERT-style WordPiece whose tokenizer.json pads every text to 16 ids and
  truncates at 12 (what all-MiniLM-L6-v2's file does with 128), a [CLS] ... [SEP] template,
  tokenizer_config.json model_max_length 24.
* ``gpt2_template/``: GPT-2-style byte-level BPE with add_prefix_space, a TemplateProcessing
  post-processor that wraps each text in <|bos|> ... <|endoftext|>, added tokens (one special, one
  not), and fixed padding to 20.
* ``unigram_metaspace/``: a SentencePiece-style Unigram model (Metaspace pre-tokenizer, prepend
  scheme "always"), a "... </s>" template, <pad>/<unk>/</s> specials, and padding to 16.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

HERE = Path(__file__).resolve().parent
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world, this is a test of the tokenizer!",
    "Café naïve résumé and ünïcödé text",
    "the cat sat on the mat and the dog sat on the log",
    "tabs and several spaces between words",
] * 4


def write(folder: str, tok: Tokenizer, config: dict) -> None:
    d = HERE / folder
    d.mkdir(exist_ok=True)
    (d / "tokenizer.json").write_text(tok.to_str(pretty=True) + "\n", encoding="utf-8")
    (d / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def padded_wordpiece() -> None:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=120, special_tokens=specials))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tok.enable_truncation(max_length=12)
    tok.enable_padding(length=16, pad_id=tok.token_to_id("[PAD]"), pad_token="[PAD]")
    write("padded_wordpiece", tok, {
        "tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 24,
        "pad_token": "[PAD]", "cls_token": "[CLS]", "sep_token": "[SEP]", "unk_token": "[UNK]", "mask_token": "[MASK]",
    })


def gpt2_template() -> None:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>", "<|bos|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.add_special_tokens(["<|pad|>"])
    tok.add_tokens(["glassformer"])  # an added, non-special token: always one id
    bos, eos = tok.token_to_id("<|bos|>"), tok.token_to_id("<|endoftext|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A <|endoftext|>", pair="<|bos|> $A <|endoftext|> $B:1 <|endoftext|>:1",
        special_tokens=[("<|bos|>", bos), ("<|endoftext|>", eos)])
    tok.enable_padding(length=20, pad_id=tok.token_to_id("<|pad|>"), pad_token="<|pad|>")
    write("gpt2_template", tok, {
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 32, "add_prefix_space": True,
        "bos_token": "<|bos|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|pad|>",
    })


def unigram_metaspace() -> None:
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.train_from_iterator(CORPUS, trainers.UnigramTrainer(
        vocab_size=100, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"))
    eos = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B:1 </s>:1", special_tokens=[("</s>", eos)])
    tok.enable_padding(length=16, pad_id=tok.token_to_id("<pad>"), pad_token="<pad>")
    write("unigram_metaspace", tok, {
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 64,
        "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
    })


if __name__ == "__main__":
    padded_wordpiece()
    gpt2_template()
    unigram_metaspace()
