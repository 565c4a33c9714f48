"""One training run from its settings: what ``glassformer train`` (:mod:`glassformer.cli.train`)
and the demos call.

:func:`resolve_run_config` merges defaults, task defaults, a config file and the given values (on
``--resume`` the run's saved config is the base); :func:`run_training` checks, prepares and
trains. Everything that can be wrong with the input is checked before the run directory is
touched: a bad value, file or ``init`` leaves ``out`` exactly as it was.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

from glassformer.errors import DataError
from glassformer.training.config import LOCKED_ON_RESUME, ConfigError, TrainConfig
from glassformer.training.config_io import load_run_config, read_config_file, resolve_config
from glassformer.training.rundir import RUN_FILES, absolute_spec, check_out_outside_data, same_spec

log = logging.getLogger("glassformer.training")

# config fields that name files: stored absolute, so a run resumes from any working directory
PATH_FIELDS = ("data", "tokenizer", "init")
# flags that belong to one invocation and are never taken from a saved run
PER_INVOCATION = ("resume", "overwrite", "task", "allow_data_change")


# ------------------------------------------------------------------------ config & run dir


def resolve_run_config(task: str, flags: dict[str, Any], config_file: str | None = None) -> TrainConfig:
    """defaults < task defaults < ``config_file`` < ``flags`` (field name -> value, the values typed
    on the command line); on ``resume`` the run's saved config is the base.

    Nothing is written here. A ``--resume`` of a run that stopped before its first checkpoint
    starts it again from step 0 (with a warning), replacing its partial files.
    """
    flags = {k: v for k, v in flags.items() if k != "task"}
    file_values = read_config_file(config_file) if config_file else {}
    source = config_file or ""
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
        for steps, fraction in (("max_steps", "epochs"), ("warmup_steps", "warmup_fraction")):
            if steps in given and fraction not in given:  # `--resume --max-steps 4000` means 4000 steps
                base[fraction] = None
        if not has_checkpoint:
            log.warning("--resume: %s has no checkpoint yet (the run stopped before its first save); "
                        "starting it again from step 0", out)
            flags = {**flags, "resume": False, "overwrite": True}
        return resolve_config(task, {**base, **file_values}, {**flags, "out": out}, source)
    width = None
    if given.get("init"):
        data = _init_config(str(given["init"]))
        width = _first_int(data, ("d_model", "hidden_size", "n_embd"))  # the fine-tuning lr depends on it
        if "context" not in given:  # the default context, capped at the initial model's max_len
            limit = _first_int(data, ("max_len", "n_positions", "max_position_embeddings"))
            default = resolve_config(task, file_values, {}).context
            flags["context"] = min(default, limit) if limit else default
    return resolve_config(task, file_values, flags, source, init_width=width)


def _init_config(init: str) -> dict[str, Any]:
    """The --init model's config.json as a dict ({} when unreadable: reported when the model is loaded)."""
    from glassformer.loading import read_config_dict

    try:
        return read_config_dict(init)
    except (OSError, ValueError):
        return {}


def _first_int(data: dict[str, Any], keys: tuple[str, ...]) -> int | None:
    return next((data[k] for k in keys if isinstance(data.get(k), int) and not isinstance(data.get(k), bool)), None)


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
        config = plan_run(config, setup, process.world_size, echo)
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
        if config.lora_rank:
            trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
            from glassformer.training.lora import default_alpha

            alpha = config.lora_alpha if config.lora_alpha is not None else default_alpha(config.lora_rank)
            echo(f"LoRA rank {config.lora_rank}, alpha {alpha:g}: {trainable:,} trainable parameters "
                 f"({trainable / n_params:.1%}); the rest frozen; saved merged")
        if setup.baseline is not None:
            echo(f"unigram baseline (predicting token frequencies): {setup.baseline:.3f} nats/token")
        try:
            result = trainer.fit()
        except BaseException:
            replaced.restore()  # no checkpoint of the new run yet: the previous run comes back
            raise
        replaced.discard()
        if setup.on_finish is not None and process.is_main:
            setup.on_finish(out)
        return result, setup, trainer
    finally:
        lock.release()


def plan_run(config: TrainConfig, setup, world_size: int = 1, echo: Callable[[str], None] = print) -> TrainConfig:
    """Resolve ``--epochs`` and ``--warmup-fraction`` against the data, and say what the run will do."""
    n = setup.examples if setup.examples is not None else _length(setup.train_data)
    if config.epochs is not None and n is None:
        raise ConfigError(f"--epochs: `train {config.task}` draws random windows of its corpus, which has no "
                          f"epochs; give --max-steps")
    planned = config.planned(n or 0, world_size)
    if config.epochs is not None:
        per_epoch = planned.steps_per_epoch(n, world_size)
        echo(f"{n:,} training examples, {config.epochs:g} epochs of {per_epoch:,} steps (batch "
             f"{config.batch_size * config.grad_accum * world_size}) = {planned.max_steps:,} steps; evaluating every "
             f"{planned.eval_every:,} steps")
    if config.init:
        stop = f", early stopping after {config.patience} evaluations without a lower validation loss" \
            if config.patience else ""
        echo(f"fine-tuning --init {config.init}: lr {config.lr:g}, {config.schedule} schedule after "
             f"{planned.warmup_steps} warm-up steps{stop}; the best model is kept")
    return planned


def _length(dataset) -> int | None:
    try:
        return len(dataset)
    except TypeError:
        return None


def next_commands(task: str, out: Path, example: str | None = None) -> str:
    """What to try with a trained model (the run directory shell-quoted, ready to paste); ``example``
    is a line of the run's own validation data, used as the prompt where it fits."""
    line = " ".join(example.split())[:120] if example and example.strip() else None
    q = shlex.quote
    out = q(str(out))
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
        "embed": [f"glassformer embed {out} --prompt 'A first sentence.' --prompt 'A second sentence.'"],
    }[task]
    if line is not None:
        own = {
            "gpt": f"glassformer generate {out} --prompt {q(line)} --max-new-tokens 200",
            "bert": f"glassformer fill-mask {out} --prompt {q(line)}",  # the line holds the mask token
            "seq2seq": f"glassformer translate {out} --prompt {q(line)}",
            "classifier": f"glassformer classify {out} --prompt {q(line)}",
            "embed": f"glassformer embed {out} --prompt {q(line)}",
        }[task]
        lines = [own, *lines[1:]]
    if task == "classifier":
        lines.append(f"glassformer evaluate {out} --data HELD_OUT.csv")
    return "next, try:\n" + "\n".join(f"  {c}" for c in lines)
