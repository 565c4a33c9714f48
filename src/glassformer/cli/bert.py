"""``glassformer fill-mask | classify | embed MODEL_DIR ...``: read texts, load a BERT, print.

The work is the library's (:func:`~glassformer.generation.text.fill_mask_texts`,
``classify_texts``, ``embed_texts``, also what :func:`glassformer.load` runs): texts are wrapped
the way the model was trained and cut to what it reads, with one warning line. ``embed`` on a
sentence-transformers directory follows its ``modules.json`` (pooling, Normalize, max_seq_length).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from glassformer.cli.common import add_input_args, emit, load, read_inputs
from glassformer.errors import DataError

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


def _setup(args, command: str):
    texts = read_inputs(args)
    model, tokenizer = load(args, command)
    return texts, model, tokenizer


def cmd_fill_mask(args: argparse.Namespace) -> int:
    """For each mask token in each text, the most likely tokens and their probabilities."""
    from glassformer.generation.text import fill_mask_texts, mask_id_of  # torch: only when running

    if args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    texts, model, tokenizer = _setup(args, "fill-mask")
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

    fill_mask_texts(model, tokenizer, texts, top_k=args.top_k, batch_size=args.batch_size, on_result=show)
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    """The most likely label of each text, with its probability (--json: every label)."""
    from glassformer.generation.text import classify_texts  # torch: only when running

    texts, model, tokenizer = _setup(args, "classify")

    def show(i: int, result: dict) -> None:
        if args.json:
            emit(json.dumps({"text": texts[i], **result}, ensure_ascii=False) + "\n")
        else:
            label = result["label"]
            emit(f"{label}\t{result['probabilities'][label]:.4f}\t{texts[i]}\n")

    classify_texts(model, tokenizer, texts, batch_size=args.batch_size, on_result=show)
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    """Sentence vectors, one per text (JSON or .npy): what a sentence-transformers directory's
    modules.json declares, else mean-pooled over the real tokens and L2-normalised."""
    import numpy as np

    from glassformer.generation.text import embed_texts  # torch: only when running
    from glassformer.io import atomic_write, atomic_write_json, make_dirs

    out = args.out
    if out is not None and out.suffix not in (".npy", ".json"):
        raise ValueError(f"--out {out}: use a .npy or .json file name")
    if out is not None and out.is_dir():
        raise ValueError(f"--out {out} is a directory; give a file name ending in .npy or .json")
    texts, model, tokenizer = _setup(args, "embed")
    matrix = embed_texts(model, tokenizer, texts, batch_size=args.batch_size, model_dir=args.model_dir)
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
