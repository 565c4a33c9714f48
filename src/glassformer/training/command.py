"""``glassformer train gpt|bert|seq2seq|classifier``: flags are the :class:`TrainConfig` fields.

    glassformer train gpt --data notes.txt --n-layers 4 --d-model 128 --max-steps 2000 --out runs/notes
    glassformer train gpt --config run.yaml --lr 3e-4          # flags win over the file
    glassformer train gpt --out runs/notes --resume --max-steps 4000

Everything that can be wrong with the input is checked before the run directory is touched: a
bad flag, file or ``--init`` leaves ``--out`` exactly as it was.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from glassformer.training.config import (
    LOCKED_ON_RESUME,
    TASK_DEFAULTS,
    TASKS,
    TrainConfig,
    field_types,
    load_run_config,
    parse_value,
    read_config_file,
    resolve_config,
)

log = logging.getLogger("glassformer.training")

# What a run writes at the root of --out; --overwrite removes exactly these, nothing else.
RUN_FILES = ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "metrics.jsonl",
             "train_config.json", "loss.png", "checkpoints", "attention", "attention.png")

TASK_HELP = {
    "gpt": "a decoder-only language model (next-token prediction)",
    "bert": "a bidirectional encoder (masked-language modelling)",
    "seq2seq": "the paper's encoder-decoder on (source, target) pairs, label smoothing 0.1",
    "classifier": "BERT with a classification head; start from a trained model with --init DIR",
}


# -------------------------------------------------------------------------------- the parser


def _flag_type(name: str) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse_value(name, text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e).split(": ", 1)[-1]) from None

    convert.__name__ = name
    return convert


def add_config_flags(parser: argparse.ArgumentParser, task: str = "gpt", skip: tuple[str, ...] = ("task",)) -> None:
    """One flag per TrainConfig field (``--d-model``); unset flags stay absent from the namespace."""
    import dataclasses

    comments = _field_comments()
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip:
            continue
        hint = field_types()[f.name]
        flag = "--" + f.name.replace("_", "-")
        help_text = comments.get(f.name, "") + f" (default: {TASK_DEFAULTS[task].get(f.name, f.default)})"
        if hint is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=help_text)
        elif typing.get_origin(hint) is Literal:
            parser.add_argument(flag, dest=f.name, choices=typing.get_args(hint), default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, type=_flag_type(f.name), default=argparse.SUPPRESS, help=help_text,
                                metavar=f.name.upper())


def _field_comments() -> dict[str, str]:
    """The ``# ...`` comment after each field in config.py, as flag help."""
    import inspect

    from glassformer.training import config as module

    out = {}
    for line in inspect.getsource(module.TrainConfig).splitlines():
        line = line.strip()
        if ":" in line and "#" in line and not line.startswith(("#", '"')):
            name = line.split(":", 1)[0].strip()
            out[name] = line.split("#", 1)[1].strip()
    return out


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train a model (gpt, bert, seq2seq, classifier)",
                                   description="Train a model. Flags are the config field names with dashes.")
    tasks = parser.add_subparsers(dest="task", metavar="TASK", parser_class=type(parser))
    for task in TASKS:
        p = tasks.add_parser(task, help=TASK_HELP[task], description=f"Train {TASK_HELP[task]}.")
        p.add_argument("--config", dest="config_file", default=None, metavar="FILE",
                       help="a YAML or TOML file with config fields; flags given here win over it")
        add_config_flags(p, task)
        p.set_defaults(func=run_command)
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])


# ------------------------------------------------------------------------ config & run dir


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k in field_types() and k != "task"}


def config_from_args(task: str, args: argparse.Namespace) -> TrainConfig:
    """defaults < task defaults < --config file < flags; on --resume the run's saved config is the base."""
    flags = flag_values(args)
    file_values = read_config_file(args.config_file) if getattr(args, "config_file", None) else {}
    source = args.config_file or ""
    given = {**file_values, **flags}
    if given.get("resume"):
        out = given.get("out") or f"runs/{task}"
        saved = _saved_config(Path(out))
        for name in LOCKED_ON_RESUME:
            if name in given and given[name] != saved.get(name):
                raise ValueError(f"--{name.replace('_', '-')} {given[name]!r} differs from the run's "
                                 f"{saved.get(name)!r}; a resumed run keeps its data, tokenizer and model")
        base = {k: v for k, v in saved.items() if k not in ("resume", "overwrite", "task")}
        return resolve_config(task, {**base, **file_values}, {**flags, "out": out}, source)
    if given.get("init") and "context" not in given:
        flags["context"] = _init_context(str(given["init"]), resolve_config(task, file_values, {}).context)
    return resolve_config(task, file_values, flags, source)


def _init_context(init: str, default: int) -> int:
    """With --init and no --context: the default context, capped at the initial model's max_len."""
    from glassformer.loading import read_config_dict

    try:
        data = read_config_dict(init)
    except (OSError, ValueError):
        return default  # reported properly when the model is loaded
    limit = next((data[k] for k in ("max_len", "n_positions", "max_position_embeddings") if isinstance(data.get(k), int)), None)
    return min(default, limit) if limit else default


def _saved_config(run_dir: Path) -> dict[str, Any]:
    from glassformer.training.checkpoint import latest_checkpoint

    if not run_dir.is_dir():
        raise FileNotFoundError(f"--resume: {run_dir} does not exist; there is nothing to resume")
    if latest_checkpoint(run_dir) is None or not (run_dir / "train_config.json").is_file():
        raise ValueError(f"--resume: {run_dir} holds no checkpoint to resume from (no checkpoints/latest)")
    return load_run_config(run_dir)


def check_run_dir(config: TrainConfig) -> None:
    """Refuse an --out holding another run unless --resume or --overwrite (nothing is changed here)."""
    out = config.run_dir
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a directory")
    if config.resume or not out.is_dir():
        return
    clash = [name for name in RUN_FILES if (out / name).exists()]
    if clash and not config.overwrite:
        raise ValueError(f"--out {out}: already holds a run ({clash[0]}); continue it with --resume, "
                         f"replace it with --overwrite, or choose another --out")


def clear_run_dir(out: Path) -> None:
    """--overwrite: remove the previous run's files (and only those)."""
    for name in RUN_FILES:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


# -------------------------------------------------------------------------------- running


def run_training(config: TrainConfig, echo: Callable[[str], None] = print):
    """Check, prepare and train; returns ``(TrainResult, TrainingSetup)``. The CLI and the demo use this."""
    from glassformer.training.checkpoint import write_text_atomic
    from glassformer.training.distributed import make_trainer, process_context
    from glassformer.training.tasks import prepare

    process = process_context(config)  # one process alone, or this rank of a torchrun job
    if not process.is_main:  # only rank 0 reports
        echo = lambda s: None  # noqa: E731
    check_run_dir(config)
    process.barrier()  # every rank has checked --out before rank 0 writes into it
    out = config.run_dir
    setup = prepare(config, resume_dir=out if config.resume else None)
    trainer = make_trainer(process, setup.model, config, setup.train_data, setup.val_data, tokenizer=setup.tokenizer,
                           run_dir=out, eval_callbacks=setup.eval_callbacks, generation_config=setup.generation_config,
                           baseline=setup.baseline)
    if config.resume:
        path = trainer.resume()
        echo(f"resuming {out} from {path.name} (step {trainer.step})")
    elif config.overwrite and process.is_main:
        clear_run_dir(out)
    # input is valid: from here on the run directory is ours (rank 0 writes it)
    if process.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "train_config.json", json.dumps(config.to_dict(), indent=2) + "\n")
        if setup.tokenizer is not None and not config.resume:
            setup.tokenizer.save(out)
    n_params = trainer.model.num_parameters()
    echo(f"{config.task}: {n_params / 1e6:.2f}M parameters on {trainer.device.type}"
         f" ({'bf16 autocast' if trainer.amp_dtype is not None else 'fp32'}); {setup.summary}")
    if setup.baseline is not None:
        echo(f"unigram baseline (predicting token frequencies): {setup.baseline:.3f} nats/token")
    result = trainer.fit()
    return result, setup, trainer


def run_command(args: argparse.Namespace) -> int:
    config = config_from_args(args.task, args)
    result, setup, trainer = run_training(config, echo=lambda s: print(s, flush=True))
    if not trainer.process.is_main:  # under torchrun, rank 0 reports
        return 0
    out = config.run_dir
    if result.stopped_by:
        print(f"stopped by {result.stopped_by} at step {result.step}; continue with: "
              f"glassformer train {config.task} --out {out} --resume", flush=True)
        return 0
    best = f"{result.best_val_loss:.4f}" if result.best_val_loss is not None else "n/a"
    print(f"done: {result.step} steps, best val loss {best}; model in {out}/, metrics in {out}/metrics.jsonl, "
          f"curve in {out}/loss.png", flush=True)
    print(next_commands(config.task, out), flush=True)
    return 0


def next_commands(task: str, out: Path) -> str:
    """What to try with a trained model."""
    lines = {
        "gpt": [f'glassformer generate {out} --prompt "The " --max-new-tokens 200',
                f'glassformer explain {out} "def print(x):" --layer 0 --head 0',
                f'glassformer attention {out} "The quick brown fox" --out attention.html'],
        "bert": [f'glassformer fill-mask {out} --prompt "The <mask> statement"',
                 f"glassformer train classifier --init {out} --out {out}-classifier",
                 f'glassformer explain {out} "import os" --layer 0 --head 0'],
        "seq2seq": [f'glassformer translate {out} --prompt "November 27th, 2026"',
                    f'glassformer attention {out} "27 Nov 2026" --out cross.png'],
        "classifier": [f'glassformer classify {out} --prompt "Return the value of x."'],
    }[task]
    return "next, try:\n" + "\n".join(f"  {c}" for c in lines)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: glassformer train ...")
