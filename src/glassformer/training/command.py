"""``glassformer train gpt|bert|seq2seq|classifier``: flags are the :class:`TrainConfig` fields.

    glassformer train gpt --data notes.txt --n-layers 4 --d-model 128 --max-steps 2000 --out runs/notes
    glassformer train gpt --config run.yaml --lr 3e-4          # flags win over the file
    glassformer train gpt --out runs/notes --resume --max-steps 4000

Everything that can be wrong with the input is checked before the run directory is touched: a
bad flag, file or ``--init`` leaves ``--out`` exactly as it was.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from glassformer.errors import DataError, GlassformerError
from glassformer.training.config import (
    LOCKED_ON_RESUME,
    TASK_DEFAULTS,
    TASKS,
    ConfigError,
    TrainConfig,
    field_help,
    field_types,
    load_run_config,
    parse_value,
    read_config_file,
    resolve_config,
)
from glassformer.training.rundir import RUN_FILES, absolute_spec, check_out_outside_data, same_spec

log = logging.getLogger("glassformer.training")

TASK_HELP = {
    "gpt": "a decoder-only language model (next-token prediction)",
    "bert": "a bidirectional encoder (masked-language modelling)",
    "seq2seq": "the paper's encoder-decoder on (source, target) pairs, label smoothing 0.1",
    "classifier": "BERT with a classification head; start from a trained model with --init DIR",
}

# config fields that name files: stored absolute, so a run resumes from any working directory
PATH_FIELDS = ("data", "tokenizer", "init")
# flags that belong to one invocation and are never taken from a saved run
PER_INVOCATION = ("resume", "overwrite", "task", "allow_data_change")


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
    """One flag per TrainConfig field (``--d-model``), its help from the field's metadata; unset flags
    stay absent from the namespace."""
    import dataclasses

    for f in dataclasses.fields(TrainConfig):
        if f.name in skip:
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
    """defaults < task defaults < --config file < flags; on --resume the run's saved config is the base.

    Nothing is written here. A ``--resume`` of a run that stopped before its first checkpoint
    starts it again from step 0 (with a warning), replacing its partial files.
    """
    flags = flag_values(args)
    file_values = read_config_file(args.config_file) if getattr(args, "config_file", None) else {}
    source = args.config_file or ""
    given = {**file_values, **flags}
    # an --overwrite killed before its first checkpoint left the previous run aside: put it back
    # before the run directory is read (under its lock; rank 0 only)
    from glassformer.training.guard import recover_interrupted

    recover_interrupted(Path(given.get("out") or f"runs/{task}"))
    for name in PATH_FIELDS:
        if name in given:
            flags[name] = given[name] = absolute_spec(given[name])
            if name in file_values:
                file_values[name] = given[name]
    if given.get("resume"):
        out = given.get("out") or f"runs/{task}"
        saved, has_checkpoint = _saved_config(Path(out))
        for name in LOCKED_ON_RESUME:
            if name in given and not same_spec(given[name], saved.get(name)):
                raise ConfigError(f"--{name.replace('_', '-')} {given[name]!r} differs from the run's "
                                  f"{saved.get(name)!r}; a resumed run keeps its data, tokenizer and model")
        base = {k: v for k, v in saved.items() if k not in PER_INVOCATION}
        if not has_checkpoint:
            log.warning("--resume: %s has no checkpoint yet (the run stopped before its first save); "
                        "starting it again from step 0", out)
            flags = {**flags, "resume": False, "overwrite": True}
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


def _saved_config(run_dir: Path) -> tuple[dict[str, Any], bool]:
    """The run's saved config, and whether it has a checkpoint to resume from."""
    from glassformer.training.checkpoint import latest_checkpoint

    if not run_dir.is_dir():
        raise ConfigError(f"--resume: {run_dir} does not exist; there is nothing to resume")
    has_checkpoint = latest_checkpoint(run_dir) is not None
    if not (run_dir / "train_config.json").is_file():
        raise ConfigError(f"--resume: {run_dir} holds no run to resume (no train_config.json, no checkpoint to resume "
                          f"from)")
    return load_run_config(run_dir), has_checkpoint


def check_out(out: Path, data: str | None) -> None:
    """Refuse an --out that is a file or lies inside the data tree (before it is locked)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a directory")
    check_out_outside_data(out, data)


def check_run_dir(config: TrainConfig) -> None:
    """Refuse an --out holding another run without --resume or --overwrite (nothing is changed here)."""
    out = config.run_dir
    if config.resume or config.overwrite or not out.is_dir():
        return
    clash = [name for name in RUN_FILES if (out / name).exists()]
    if clash:
        from glassformer.training.checkpoint import latest_checkpoint

        if latest_checkpoint(out) is None:
            raise ConfigError(f"--out {out}: holds a run that stopped before its first checkpoint ({clash[0]}); start "
                              f"it again with --resume or --overwrite, or choose another --out")
        raise ConfigError(f"--out {out}: already holds a run ({clash[0]}); continue it with --resume, "
                          f"replace it with --overwrite, or choose another --out")


# -------------------------------------------------------------------------------- running


def run_training(config: TrainConfig, echo: Callable[[str], None] = print):
    """Check, prepare and train; returns ``(TrainResult, TrainingSetup, Trainer)``. The CLI and the demos use this.

    The order is the run directory's guarantee: every input is checked (flags, config file, data,
    tokenizer, ``--init``/checkpoint shapes, memory, the attention probe) before ``--out`` is
    created, cleared or written; the directory is locked (one writer) for the whole run;
    ``--overwrite`` keeps the previous run aside until the new one has saved a checkpoint.
    """
    from glassformer.training import guard
    from glassformer.training.distributed import make_trainer, process_context
    from glassformer.training.tasks import prepare

    process = process_context(config)  # one process alone, or this rank of a torchrun job
    if not process.is_main:  # only rank 0 reports
        echo = lambda s: None  # noqa: E731
    out = config.run_dir
    check_out(out, config.data)
    existed = out.is_dir()
    lock = guard.RunGuard(out, process)
    try:
        if existed:  # an existing --out is locked before it is read further: another writer is named first
            lock.acquire()
        check_run_dir(config)
        fingerprint = guard.check_resume_data(config)
        guard.check_memory(config)
        try:
            setup = prepare(config, resume_dir=out if config.resume else None)
        except UnicodeError as e:  # a tokenizer handed bytes that are not text
            raise DataError(f"--data {config.data}: not UTF-8 text ({e}); fix the file or pass --errors replace") from None
        guard.check_probe(config, setup)
        process.barrier()  # every rank has validated before rank 0 writes
        trainer = make_trainer(process, setup.model, config, setup.train_data, setup.val_data, tokenizer=setup.tokenizer,
                               run_dir=out, eval_callbacks=setup.eval_callbacks,
                               generation_config=setup.generation_config, baseline=setup.baseline)
        if config.resume:
            path = trainer.resume()
            echo(f"resuming {out} from {path.name} (step {trainer.step})")
        # input is valid: from here on the run directory is ours (rank 0 writes it)
        if not existed:
            lock.acquire()  # creates --out
            check_run_dir(config)  # another run may have created and filled it while this one was checking
            process.barrier()  # every rank has re-checked before rank 0 writes (else rank 1 may see rank 0's files)
        replaced = guard.start_writing(config, process, setup, fingerprint, trainer)
        n_params = trainer.model.num_parameters()
        echo(f"{config.task}: {n_params / 1e6:.2f}M parameters on {trainer.device.type}"
             f" ({'bf16 autocast' if trainer.amp_dtype is not None else 'fp32'}"
             f"{', compiled' if trainer.compiled else ''}); {setup.summary}")
        if setup.baseline is not None:
            echo(f"unigram baseline (predicting token frequencies): {setup.baseline:.3f} nats/token")
        try:
            result = trainer.fit()
        except BaseException:
            replaced.restore()  # no checkpoint of the new run yet: the previous run comes back
            raise
        replaced.discard()
        return result, setup, trainer
    finally:
        lock.release()


def run_command(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args.task, args)
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
    print(f"done: {result.step} steps, best val loss {best}; model in {out}/, metrics in {out}/metrics.jsonl, "
          f"curve in {out}/loss.png", flush=True)
    print(next_commands(config.task, out), flush=True)
    return 0


def next_commands(task: str, out: Path) -> str:
    """What to try with a trained model (the run directory shell-quoted, ready to paste)."""
    out = shlex.quote(str(out))
    lines = {
        # no trailing space: BPE would end the prompt with a lone-space token (text puts spaces before words)
        "gpt": [f'glassformer generate {out} --prompt "The" --max-new-tokens 200',
                f'glassformer explain {out} "def print(x):" --layer 0 --head 0',
                f'glassformer attention {out} "The quick brown fox" --out attention.html'],
        "bert": [f'glassformer fill-mask {out} --prompt "The <mask> statement"',
                 f"glassformer train classifier --init {out} --out {out}-classifier",
                 f'glassformer explain {out} "import os" --layer 0 --head 0'],
        "seq2seq": [f'glassformer translate {out} --prompt "November 27th, 2026"',
                    f'glassformer attention {out} "27 Nov 2026" --out cross.png'],
        # the built-in default data is date-order; a classifier of other text takes its own kind of line
        "classifier": [f'glassformer classify {out} --prompt "20 July 2019, then 4 July 1996"'],
    }[task]
    return "next, try:\n" + "\n".join(f"  {c}" for c in lines)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: glassformer train ...")
