"""``glassformer train gpt|bert|seq2seq|classifier|embed``: flags are the :class:`TrainConfig` fields
that apply to the task.

    glassformer train gpt --data notes.txt --n-layers 4 --d-model 128 --max-steps 2000 --out runs/notes
    glassformer train gpt --config run.yaml --lr 3e-4          # flags win over the file
    glassformer train gpt --out runs/notes --resume --max-steps 4000
    glassformer train classifier --init all-MiniLM-L6-v2/ --data reviews.csv --text-column review
    glassformer train embed --init all-MiniLM-L6-v2/ --data pairs.csv      # anchor,positive columns

The run itself is the library's (:mod:`glassformer.training.run`): everything that can be wrong
with the input is checked before the run directory is touched, so a bad flag, file or ``--init``
leaves ``--out`` exactly as it was.
"""

from __future__ import annotations

import argparse
import shlex
import typing
from collections.abc import Callable
from typing import Any, Literal

from glassformer.errors import GlassformerError
from glassformer.training.config import (
    TASK_DEFAULTS,
    TASKS,
    ConfigError,
    TrainConfig,
    applies_to,
    field_help,
    field_types,
)
from glassformer.training.config_io import parse_value

TASK_HELP = {
    "gpt": "a decoder-only language model (next-token prediction)",
    "bert": "a bidirectional encoder (masked-language modelling)",
    "seq2seq": "the paper's encoder-decoder on (source, target) pairs, label smoothing 0.1",
    "classifier": "BERT with a classification head; start from a trained model with --init DIR",
    "embed": "sentence embeddings from (anchor, positive) pairs, in-batch negatives; saved for sentence-transformers",
}

RECIPE_NOTE = ("With --init (a pretrained model), the fine-tuning recipe applies: lr 3e-4 for a 384-wide model "
               "(less for wider ones), linear decay after a 10%% warm-up, 4 epochs, batch 16, early stopping on the "
               "validation loss (--patience 2); flags win over it.")

def _flag_type(name: str) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse_value(name, text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e).split(": ", 1)[-1]) from None

    convert.__name__ = name
    return convert


class NotForThisTask(argparse.Action):
    """A flag of another task: not in this task's ``--help``; given anyway, one warning line, no effect."""

    def __init__(self, option_strings, dest, task: str, nargs=None, **kwargs) -> None:
        super().__init__(option_strings, argparse.SUPPRESS, nargs="?", **kwargs)
        self.task = task

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        import logging

        logging.getLogger(__name__).warning("%s does not apply to `train %s`; ignored", option_string, self.task)


def add_config_flags(parser: argparse.ArgumentParser, task: str = "gpt", skip: tuple[str, ...] = ("task",)) -> None:
    """One flag per TrainConfig field (``--d-model``), its help from the field's metadata; unset flags
    stay absent from the namespace."""
    import dataclasses

    for f in dataclasses.fields(TrainConfig):
        if f.name in skip:
            continue
        if not applies_to(f.name, task):  # kept off the help, and accepted with a warning (scripts share flag sets)
            parser.add_argument("--" + f.name.replace("_", "-"), action=NotForThisTask, task=task, help=argparse.SUPPRESS)
            continue
        hint = field_types()[f.name]
        flag = "--" + f.name.replace("_", "-")
        default = TASK_DEFAULTS[task].get(f.name, f.default)
        help_text = field_help(f.name) + ("" if default is None and hint == bool | None else f" (default: {default})")
        if hint is bool or hint == bool | None:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=help_text)
        elif typing.get_origin(hint) is Literal:
            parser.add_argument(flag, dest=f.name, choices=typing.get_args(hint), default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, type=_flag_type(f.name), default=argparse.SUPPRESS, help=help_text,
                                metavar=f.name.upper())


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train a model (gpt, bert, seq2seq, classifier, embed)",
                                   description="Train a model. Flags are the config field names with dashes.")
    tasks = parser.add_subparsers(dest="task", metavar="TASK", parser_class=type(parser))
    for task in TASKS:
        p = tasks.add_parser(task, help=TASK_HELP[task], description=f"Train {TASK_HELP[task]}. {RECIPE_NOTE}")
        p.add_argument("--config", dest="config_file", default=None, metavar="FILE",
                       help="a YAML or TOML file with config fields; flags given here win over it")
        add_config_flags(p, task)
        p.set_defaults(func=run_command)
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields given on the command line (unset flags are absent from the namespace)."""
    return {k: v for k, v in vars(args).items() if k in field_types() and k != "task"}


def run_command(args: argparse.Namespace) -> int:
    """Resolve the config from the flags, train (:func:`~glassformer.training.run.run_training`), report."""
    from glassformer.training.run import (  # torch: only when running
        next_commands,
        resolve_run_config,
        run_training,
    )

    try:
        config = resolve_run_config(args.task, flag_values(args), getattr(args, "config_file", None))
    except ValueError as e:
        if isinstance(e, GlassformerError):
            raise
        raise ConfigError(str(e)) from None
    result, setup, trainer = run_training(config, echo=lambda s: print(s, flush=True))
    if not trainer.process.is_main:  # under torchrun, rank 0 reports
        return 0
    out = config.run_dir
    if result.stopped_by:
        print(f"stopped by {result.stopped_by} at step {result.step}; continue with: "
              f"glassformer train {config.task} --out {shlex.quote(str(out))} --resume", flush=True)
        return 0
    best = f"{result.best_val_loss:.4f}" if result.best_val_loss is not None else "n/a"
    early = " (stopped early)" if result.early_stopped else ""
    print(f"done: {result.step} steps{early}, best val loss {best}; model in {out}/, metrics in {out}/metrics.jsonl, "
          f"curve in {out}/loss.png", flush=True)
    print(next_commands(config.task, out, setup.example), flush=True)
    return 0


