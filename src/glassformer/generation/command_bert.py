"""``glassformer fill-mask | classify | embed MODEL_DIR ...``: the BERT helpers with tokenizers.

Texts are wrapped the way the model was trained: ``bos ... eos`` (``[CLS] ... [SEP]``) for our
tokenizers that have both, the tokenizer's own template for Hugging Face checkpoints. A text
longer than the model reads (its ``max_len``, or the checkpoint's declared maximum) is cut, with
one warning line. ``embed`` on a sentence-transformers directory follows its ``modules.json``
(pooling, Normalize, max_seq_length): see :mod:`glassformer.interop.sentence_transformers`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from glassformer.errors import DataError
from glassformer.generation.cli_common import add_input_args

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fill-mask``, ``classify`` and ``embed``."""
    p = subparsers.add_parser("fill-mask", help="predict the masked tokens with a BERT", description=cmd_fill_mask.__doc__)
    add_input_args(p)
    p.add_argument("--top-k", type=int, default=5, help="candidates per mask (default 5)")
    p.add_argument("--json", action="store_true", help="one JSON object per text")
    p.set_defaults(func=cmd_fill_mask)

    p = subparsers.add_parser("classify", help="label texts with a BERT classifier", description=cmd_classify.__doc__)
    add_input_args(p)
    p.add_argument("--json", action="store_true", help="one JSON object per text, with every label's probability")
    p.set_defaults(func=cmd_classify)

    p = subparsers.add_parser("embed", help="sentence vectors from a BERT", description=cmd_embed.__doc__)
    add_input_args(p)
    p.add_argument("--out", type=Path, default=None,
                   help="write the vectors to FILE.npy (numpy, float32) or FILE.json; default: JSON on stdout")
    p.set_defaults(func=cmd_embed)


def _wrap(tokenizer, ids: list[int], is_hf: bool) -> list[int]:
    if is_hf or tokenizer.bos_id is None or tokenizer.eos_id is None:
        return ids
    return [tokenizer.bos_id, *ids, tokenizer.eos_id]


def _encode(tokenizer, texts: list[str], is_hf: bool, max_len: int) -> list[list[int]]:
    """Wrapped ids of each text, cut to what the model reads (keeping the template) with a warning."""
    from glassformer.generation.cli_common import encode_all
    from glassformer.tokenizers.base import length_limit, warn_truncated

    if is_hf:
        rows = []
        for i, text in enumerate(texts):
            try:
                rows.append(tokenizer.encode_for_model(text, max_len, what=f"text {i + 1}"))
            except DataError as e:
                raise DataError(f"text {i + 1}: {e}") from None
    else:
        rows = [_wrap(tokenizer, r, is_hf) for r in encode_all(tokenizer, texts, "text", add_special_tokens=False)]
    limit = length_limit(max_len, getattr(tokenizer, "model_max_length", None))
    for i, r in enumerate(rows):
        if not r:
            raise ValueError(f"text {i + 1} is empty")
        if len(r) > limit:
            warn_truncated(f"text {i + 1}", len(r), limit)
            rows[i] = r[: limit - 1] + r[-1:]
    return rows


def _padded_batches(rows: list[list[int]], pad_id: int, device, batch_size: int):
    """(offset, ids, mask) for each padded batch of ``batch_size`` rows, on ``device``."""
    from glassformer.data.batching import pad
    from glassformer.generation.cli_common import batches

    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    for start, chunk in batches(rows, batch_size):
        ids, mask = pad(chunk, pad_id)
        yield start, ids.to(device), mask.to(device)


def pad_id_of(model, tokenizer) -> int:
    """The id that pads a batch: the tokenizer's, else the model config's, else 0."""
    return next(v for v in (tokenizer.pad_id, model.config.pad_token_id, 0) if v is not None)


def mask_id_of(model, tokenizer) -> int | None:
    """The mask token's id: the tokenizer's, else the model config's (None: neither has one)."""
    return tokenizer.mask_id if tokenizer.mask_id is not None else model.config.mask_token_id


def _setup(args, command: str):
    from glassformer.generation.cli_common import load, read_inputs

    texts = read_inputs(args)
    model, tokenizer, is_hf = load(args, "bert", command)
    return texts, model, tokenizer, is_hf


# The data: what the commands print and what glassformer.load(path).fill_mask/.classify/.embed return.

def visible_token(text: str) -> str:
    """A candidate as a reader should see it: its text without surrounding spaces, or, when it is
    only whitespace, that whitespace spelt out (``\\n``, ``\\t``, ``␣`` for a space)."""
    if text.strip():
        return text.strip()
    return text.encode("unicode_escape").decode("ascii").replace(" ", "␣")


def fill_mask_texts(model, tokenizer, texts: list[str], *, top_k: int = 5, is_hf: bool = False,
                    batch_size: int = 32, on_result=None) -> list[list[list[dict]]]:
    """For each text, for each of its mask tokens, the ``top_k`` candidates as ``{"token", "id", "p"}``.
    ``on_result(i, masks)`` is called as each text's result is ready."""
    from glassformer.generation.cli_common import device_of

    if top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {top_k}")
    mask_id = mask_id_of(model, tokenizer)
    if mask_id is None:
        raise DataError("the tokenizer has no mask token; fill-mask needs one")
    mask_text = tokenizer.id_to_token(mask_id)
    rows = []
    for i, text in enumerate(texts):
        if mask_text not in text:
            raise ValueError(f"text {i + 1} has no {mask_text} to fill: {text!r}")
        try:
            row = _mask_row(tokenizer, text, mask_text, mask_id, is_hf)
        except DataError as e:
            raise DataError(f"text {i + 1}: {e}") from None
        if len(row) > model.config.max_len:
            raise ValueError(f"text {i + 1} has {len(row)} tokens, more than max_len={model.config.max_len}")
        rows.append(row)
    results: list[list[list[dict]]] = []
    for start, ids, mask in _padded_batches(rows, pad_id_of(model, tokenizer), device_of(model), batch_size):
        for j, per_mask in enumerate(model.fill_mask(ids, mask, mask_token_id=mask_id, top_k=top_k)):
            results.append([[{"token": visible_token(tokenizer.decode([t])) or tokenizer.id_to_token(t), "id": t,
                              "p": round(p, 6)} for t, p in zip(cand, probs)] for cand, probs in per_mask])
            if on_result is not None:
                on_result(start + j, results[-1])
    return results


def classify_texts(model, tokenizer, texts: list[str], *, is_hf: bool = False, batch_size: int = 32,
                   on_result=None) -> list[dict]:
    """For each text, ``{"label", "probabilities"}`` (every label's probability, rounded to 6 places).
    ``on_result(i, result)`` is called as each text's result is ready."""
    from glassformer.generation.cli_common import device_of

    if model.config.num_labels <= 0:
        raise ValueError("this BERT has no classification head (num_labels=0); "
                         "train one with `glassformer train classifier`")
    rows = _encode(tokenizer, texts, is_hf, model.config.max_len)
    results: list[dict] = []
    for start, ids, mask in _padded_batches(rows, pad_id_of(model, tokenizer), device_of(model), batch_size):
        probs, names = model.classify(ids, mask)
        for j, p in enumerate(probs.tolist()):
            best = max(range(len(p)), key=p.__getitem__)
            results.append({"label": names[best], "probabilities": dict(zip(names, (round(x, 6) for x in p)))})
            if on_result is not None:
                on_result(start + j, results[-1])
    return results


def embed_texts(model, tokenizer, texts: list[str], *, is_hf: bool = False, batch_size: int = 32,
                model_dir=None):
    """Sentence vectors, a float32 numpy array (N, C): what ``model_dir``'s sentence-transformers
    ``modules.json`` declares, else mean-pooled over the real tokens and L2-normalised."""
    from glassformer.interop.sentence_transformers import (
        SentenceConfig,
        apply_lower_case,
        embed_ids,
        read_sentence_config,
    )
    from glassformer.tokenizers.base import length_limit

    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    sentence = read_sentence_config(model_dir) if model_dir is not None else None  # None without modules.json
    if sentence is not None:
        lower_text = sentence.do_lower_case and not apply_lower_case(tokenizer)
        inputs = [t.lower() for t in texts] if lower_text else texts
        rows = _encode(tokenizer, inputs, is_hf, length_limit(model.config.max_len, sentence.max_seq_length))
    else:
        rows = _encode(tokenizer, texts, is_hf, model.config.max_len)
    return embed_ids(model, rows, pad_id_of(model, tokenizer), sentence or SentenceConfig(), batch_size)  # (N, C)


# The commands: read the inputs, load, call the functions above, print.

def cmd_fill_mask(args: argparse.Namespace) -> int:
    """For each mask token in each text, the most likely tokens and their probabilities."""
    from glassformer.generation.cli_common import emit

    if args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    texts, model, tokenizer, is_hf = _setup(args, "fill-mask")
    mask_id = mask_id_of(model, tokenizer)
    if mask_id is None:
        raise DataError(f"{args.model_dir}: the tokenizer has no mask token; fill-mask needs one")
    mask_text = tokenizer.id_to_token(mask_id)

    def show(i: int, found: list[list[dict]]) -> None:
        if args.json:
            emit(json.dumps({"text": texts[i], "masks": found}, ensure_ascii=False) + "\n")
            return
        emit(texts[i] + "\n")
        for k, cands in enumerate(found):
            emit(f"  {mask_text} #{k + 1}: " + "  ".join(f"{c['token']} ({c['p']:.3f})" for c in cands) + "\n")

    fill_mask_texts(model, tokenizer, texts, top_k=args.top_k, is_hf=is_hf, batch_size=args.batch_size, on_result=show)
    return 0


def _mask_row(tokenizer, text: str, mask_text: str, mask_id: int, is_hf: bool) -> list[int]:
    """Ids of a text holding mask tokens, wrapped as in training."""
    try:
        ids = tokenizer.encode(text, add_special_tokens=is_hf)
    except DataError:
        ids = []  # e.g. a char tokenizer that never saw "<" or "[": encode around the mask
    if mask_id in ids:  # the tokenizer knows its mask token (WordPiece, BPE)
        return ids if is_hf else _wrap(tokenizer, ids, False)
    # a tokenizer that would read the mask token as plain characters (char-level): encode around it
    pieces = [tokenizer.encode(piece, add_special_tokens=False) for piece in text.split(mask_text)]
    ids = [t for k, piece in enumerate(pieces) for t in ([mask_id] if k else []) + piece]
    return _hf_wrap(tokenizer, ids) if is_hf else _wrap(tokenizer, ids, False)


def _hf_wrap(tokenizer, ids: list[int]) -> list[int]:
    """What the tokenizer's template puts around a text (e.g. [CLS] ... [SEP]), found by encoding ''."""
    around = tokenizer.encode("", add_special_tokens=True)
    if len(around) == 2:
        return [around[0], *ids, around[1]]
    return [*around, *ids] if around else ids


def cmd_classify(args: argparse.Namespace) -> int:
    """The most likely label of each text, with its probability (--json: every label)."""
    from glassformer.generation.cli_common import emit

    texts, model, tokenizer, is_hf = _setup(args, "classify")
    if model.config.num_labels <= 0:
        raise ValueError(f"{args.model_dir}: this BERT has no classification head (num_labels=0); "
                         "train one with `glassformer train classifier`")

    def show(i: int, result: dict) -> None:
        if args.json:
            emit(json.dumps({"text": texts[i], **result}, ensure_ascii=False) + "\n")
        else:
            label = result["label"]
            emit(f"{label}\t{result['probabilities'][label]:.4f}\t{texts[i]}\n")

    classify_texts(model, tokenizer, texts, is_hf=is_hf, batch_size=args.batch_size, on_result=show)
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    """Sentence vectors, one per text (JSON or .npy): what a sentence-transformers directory's
    modules.json declares, else mean-pooled over the real tokens and L2-normalised."""
    import numpy as np

    from glassformer.generation.cli_common import emit
    from glassformer.io import atomic_write, atomic_write_json, make_dirs

    out = args.out
    if out is not None and out.suffix not in (".npy", ".json"):
        raise ValueError(f"--out {out}: use a .npy or .json file name")
    if out is not None and out.is_dir():
        raise ValueError(f"--out {out} is a directory; give a file name ending in .npy or .json")
    texts, model, tokenizer, is_hf = _setup(args, "embed")
    matrix = embed_texts(model, tokenizer, texts, is_hf=is_hf, batch_size=args.batch_size, model_dir=args.model_dir)
    if out is None:
        for text, v in zip(texts, matrix.tolist()):
            emit(json.dumps({"text": text, "embedding": v}, ensure_ascii=False) + "\n")
        return 0
    make_dirs(out.parent)
    if out.suffix == ".npy":
        def save_npy(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.save(f, matrix)

        atomic_write(out, save_npy)
    else:
        atomic_write_json(out, {"texts": texts, "embeddings": matrix.tolist()}, indent=None)
    sys.stderr.write(f"wrote {len(texts)} vectors of size {matrix.shape[1]} to {out}\n")
    return 0
