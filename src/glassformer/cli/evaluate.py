"""``glassformer evaluate RUN --data FILE``: score a classifier on a labelled file it never saw.

    glassformer evaluate runs/reviews --data test.csv             # accuracy, macro-F1, confusion, misses
    glassformer evaluate runs/reviews --data test.csv --json      # the same, one JSON object

The columns default to the run's own (``--text-column`` ... in its ``train_config.json``). The
computation is the library's (:func:`glassformer.training.heldout.evaluate_file`).
"""

from __future__ import annotations

import argparse
import json

from glassformer.cli.common import emit


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("evaluate", help="score a classifier on a labelled file",
                              description=cmd_evaluate.__doc__)
    p.add_argument("model_dir", metavar="RUN", help="a classifier's run or model directory")
    p.add_argument("--data", required=True, metavar="FILE", help="a labelled CSV/TSV or JSON Lines file")
    p.add_argument("--text-column", default=None, help="the text column (default: the run's, else 'text')")
    p.add_argument("--label-column", default=None, help="the label column (default: the run's, else 'label')")
    p.add_argument("--text-pair-column", default=None, help="a second text per row (default: the run's, if any)")
    p.add_argument("--worst", type=int, default=5, help="how many of the most confident misses to list (default 5)")
    p.add_argument("--batch-size", type=int, default=32, help="rows run together (default 32)")
    p.add_argument("--errors", choices=("strict", "replace"), default="strict",
                   help="what to do with bytes that are not UTF-8 (default strict)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Accuracy, macro-F1, each class's precision and recall, the confusion matrix and the worst misses
    of a classifier on a labelled file."""
    from glassformer.training.heldout import evaluate_file, format_scores  # torch: only when running

    scores = evaluate_file(args.model_dir, args.data, text_column=args.text_column, label_column=args.label_column,
                           text_pair_column=args.text_pair_column, batch_size=args.batch_size, worst=args.worst,
                           errors=args.errors)
    emit((json.dumps(scores.to_dict(), ensure_ascii=False) if args.json else format_scores(scores)) + "\n")
    return 0
