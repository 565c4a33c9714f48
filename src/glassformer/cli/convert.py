"""``glassformer convert SRC DST [--to hf]``: the parser; the conversion is :func:`glassformer.convert.convert`."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert a Hugging Face checkpoint to a glassformer model directory, or back",
        description="Convert a Hugging Face directory (GPT-2, BERT, Marian) into a glassformer model "
        "directory, or with --to hf a glassformer model into a directory transformers loads.",
    )
    p.add_argument("src", metavar="SRC", help="the directory to read")
    p.add_argument("dst", metavar="DST", help="the directory to write (must not exist, unless --overwrite)")
    p.add_argument("--to", choices=("glassformer", "hf"), default="glassformer",
                   help="output format (default: glassformer)")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it already exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from glassformer.convert import convert  # torch: only when running

    model, dst = convert(args.src, args.dst, to=args.to, overwrite=args.overwrite)
    print(f"wrote {dst} ({type(model).__name__}, {model.num_parameters():,} parameters, format: {args.to})")
    return 0
