"""``glassformer serve [MODEL_DIR ...] [--port 8000] [--host 127.0.0.1]``: the live explorer."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="the live explorer in the browser: type, click a head, see inside",
        description="Serve an explorer of the given model directories (runs, demos, Hugging Face GPT-2/BERT/"
        "Marian, sentence-transformers) on a local web page: tokens, every head's attention and role, the four "
        "steps, the logit lens, attribution, ablation and generation step by step. With no directory, the "
        "demo runs under runs/. The JSON API under /api is documented in the README.",
    )
    p.add_argument("model_dirs", nargs="*", metavar="MODEL_DIR", help="model directories to open (several: a picker)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default: 127.0.0.1, this machine only; 0.0.0.0 serves every network, "
                   "with a warning)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from glassformer.serve.server import check_port, demo_runs, open_models, serve

    check_port(args.host, args.port)
    dirs = args.model_dirs or demo_runs()
    serve(open_models(dirs), args.host, args.port)
    return 0
