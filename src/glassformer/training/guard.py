"""The checks ``glassformer train`` makes before it touches ``--out``, and the first writes after.

:func:`glassformer.training.run.run_training` calls these in order:

1. :class:`RunGuard` ``.acquire()`` on an existing ``--out`` (one writer; recovers an
   interrupted ``--overwrite``; removes temporary files a killed run left);
2. :func:`check_resume_data` (the data a ``--resume`` trains on is the data the run started on);
3. :func:`check_memory` (the model and one training step fit, before anything is allocated);
4. the data, tokenizer and model are prepared (``tasks.prepare``), then :func:`check_probe`;
5. only then :func:`start_writing`: ``--overwrite`` moves the old run aside, the resolved config,
   the data fingerprint and the tokenizer are written.

Under torchrun, rank 0 alone locks and writes; every rank learns whether the lock was taken.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

from glassformer.errors import GlassformerError
from glassformer.io import atomic_write_json, make_dirs
from glassformer.memory import (
    TRAIN_BYTES_PER_PARAM,
    MemoryLimitError,
    available_bytes,
    check_hf_weights,
    check_weights_file,
    format_bytes,
    hf_parameter_estimate,
    parameter_count,
    training_bytes,
)
from glassformer.training import checkpoint as ckpt
from glassformer.training.config import ConfigError, TrainConfig
from glassformer.training.objectives import TASK_FAMILY
from glassformer.training.rundir import (
    REPLACED_PREFIX,
    Replaced,
    RunDirError,
    RunLock,
    check_data_unchanged,
    data_fingerprint,
    recover_replaced,
    write_data_fingerprint,
)
from glassformer.training.runtime import ProcessContext, resolve_device

log = logging.getLogger("glassformer.training")

CHAR_VOCAB_GUESS = 1024  # a char vocabulary is the corpus's distinct characters: small


class RunGuard:
    """The run directory's lock, taken by rank 0 and agreed on by every rank."""

    def __init__(self, run_dir: Path, process: ProcessContext) -> None:
        self.run_dir, self.process = run_dir, process
        self.lock = RunLock(run_dir)
        self.acquired = False

    def acquire(self) -> None:
        """Lock (creating ``--out`` if needed); raises :class:`RunDirError` on every rank if rank 0 could not."""
        if self.acquired:
            return
        error: GlassformerError | None = None
        if self.process.is_main:
            try:
                self.lock.acquire()
            except RunDirError as e:
                error = e
        failed = self.process.max_over_ranks([int(error is not None)])[0]
        if failed:
            raise error or RunDirError(f"--out {self.run_dir}: rank 0 could not lock the run directory")
        self.acquired = True
        if self.process.is_main:
            recover_replaced(self.run_dir, has_checkpoint=ckpt.latest_checkpoint(self.run_dir) is not None)
            ckpt.clean_stale(self.run_dir)
        self.process.barrier()

    def release(self) -> None:
        self.lock.release()


def recover_interrupted(run_dir: Path) -> None:
    """Before the run's config is read: undo an ``--overwrite`` killed before its first checkpoint
    (see :func:`rundir.recover_replaced`). Takes the lock for the moment, so a run directory in
    use by another process is refused here already. Only rank 0 of a torchrun job does this."""
    if not run_dir.is_dir() or int(os.environ.get("RANK", "0")) != 0:
        return
    if not any(p.name.startswith(REPLACED_PREFIX) for p in run_dir.iterdir()):
        return
    lock = RunLock(run_dir).acquire()
    try:
        recover_replaced(run_dir, has_checkpoint=ckpt.latest_checkpoint(run_dir) is not None)
    finally:
        lock.release()


def check_resume_data(config: TrainConfig) -> dict[str, Any]:
    """The data's fingerprint now; on ``--resume`` refuse data that changed (see ``rundir``)."""
    if config.resume:
        return check_data_unchanged(config.run_dir, config.data, config.allow_data_change)
    return data_fingerprint(config.data)


# ---------------------------------------------------------------------------------- memory


def _model_config(config: TrainConfig) -> tuple[Any, int | None]:
    """(the config of the model the run will train, or its parameter count) without building it.

    Checks a resumed checkpoint's or a glassformer ``--init``'s weights against their config first.
    """
    from glassformer.io import read_json
    from glassformer.loading import is_glassformer_dir
    from glassformer.models.config import CONFIG_CLASSES

    device = resolve_device(config.device)
    source = ckpt.latest_checkpoint(config.run_dir) if config.resume else None
    if source is None and config.init:
        source = Path(config.init)
        if not is_glassformer_dir(source):
            check_hf_weights(source, device)
            warn_ignored_shape(config, None)
            return None, hf_parameter_estimate(read_json(source / "config.json"))
        warn_ignored_shape(config, read_json(source / "config.json"))
    if source is not None:
        check_weights_file(source, device, training=True)
        return read_json(source / "config.json"), None
    vocab = config.vocab_size if config.tokenizer == "bpe" else CHAR_VOCAB_GUESS
    try:
        return CONFIG_CLASSES[TASK_FAMILY[config.task]](vocab_size=vocab, **config.model_kwargs()), None
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None


SHAPE_FIELDS = ("n_layers", "n_heads", "d_model", "d_ff", "max_len")


def warn_ignored_shape(config: TrainConfig, init_config: dict[str, Any] | None) -> None:
    """``--init`` fixes the model's shape: one warning line naming every shape flag set to another
    value than the ``--init`` model's (``init_config``; None for a Hugging Face directory, whose
    values are not compared), instead of training a model the flags did not ask for in silence."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    ignored = []
    for name in SHAPE_FIELDS:
        value, have = getattr(config, name), (init_config or {}).get(name)
        if value is None or value == defaults[name] or value == have:
            continue
        ignored.append(f"--{name.replace('_', '-')} {value}" + (f" (it has {have})" if have is not None else ""))
    if ignored:
        log.warning("--init %s keeps its own shape; ignored: %s", config.init, ", ".join(ignored))


def check_memory(config: TrainConfig) -> None:
    """Refuse a model or a ``--batch-size`` that cannot fit on the device, with one line saying
    what would be needed; nothing is allocated to find out."""
    model_config, n_params = _model_config(config)
    if model_config is None and n_params is None:  # a model whose size cannot be told from its config
        _check_host(config)
        return
    if n_params is None:
        n_params = parameter_count(model_config)
    get = (model_config.get if isinstance(model_config, dict) else lambda k, d=None: getattr(model_config, k, d)) \
        if model_config is not None else (lambda k, d=None: d)
    d_model, n_heads = get("d_model", 768) or 768, get("n_heads", 12) or 12
    layers = (get("n_layers", 12) or 12) + (get("n_decoder_layers") or (get("n_layers", 0) if config.task == "seq2seq" else 0))
    vocab = get("vocab_size", 50257) or 50257
    device = resolve_device(config.device)
    seq_len = config.context

    def need(batch: int) -> int:
        return training_bytes(n_params, batch_size=batch, seq_len=seq_len, d_model=d_model, n_layers=layers,
                              n_heads=n_heads, vocab_size=vocab)

    _check_step(config, n_params, need, device)
    _check_host(config)


def _check_step(config: TrainConfig, n_params: int, need, device) -> None:
    """Weights, gradients, moments and one step's activations against the device's memory."""
    free = available_bytes(device)
    total = need(config.batch_size)
    if free is None or total <= free:
        return
    fixed = n_params * TRAIN_BYTES_PER_PARAM
    if fixed > free:
        raise MemoryLimitError(f"a model of {n_params:,} parameters needs about {format_bytes(fixed)} to train (weights, "
                               f"gradients, AdamW moments) but {device.type} has {format_bytes(free)} available; "
                               f"use a smaller --d-model, --n-layers, --context (--max-len) or vocabulary")
    per_row = max(need(2) - need(1), 1)
    fits = max(0, (free - need(1)) // per_row + 1) if need(1) <= free else 0
    hint = f"use --batch-size {fits} or less" if fits else "use a shorter --context"
    raise MemoryLimitError(f"--batch-size {config.batch_size} with --context {config.context}: a training step needs about "
                           f"{format_bytes(total)} but {device.type} has {format_bytes(free)} available; {hint} "
                           f"(--grad-accum keeps the effective batch)")


def _check_host(config: TrainConfig) -> None:
    """What the loop holds on the host: a step's ``grad_accum`` micro-batches, masked-LM's fixed
    validation batches, and the examples a built-in task generates (ids and labels as int64; about
    200 bytes per generated example)."""
    host_free = available_bytes("cpu")
    if host_free is None:
        return
    rows = config.batch_size * config.context * 2 * 8
    if rows > host_free:
        fits = host_free // (config.context * 2 * 8)
        hint = f"use --batch-size {fits} or less" if fits else "use a shorter --context"
        raise MemoryLimitError(f"--batch-size {config.batch_size} with --context {config.context}: one batch needs about "
                               f"{format_bytes(rows)} of host memory but {format_bytes(host_free)} is available; {hint}")
    generated = config.num_examples if config.task in ("seq2seq", "classifier") and not config.data else 0
    # validation batches are consecutive windows (bounded by the data) except masked-LM's, drawn at random
    random_eval = config.eval_batches if config.task == "bert" else 0
    for flag, value, per in (("--grad-accum", config.grad_accum, rows), ("--eval-batches", random_eval, rows),
                             ("--num-examples", generated, 200)):
        if value * per > host_free:
            raise MemoryLimitError(f"{flag} {value}: needs about {format_bytes(value * per)} of host memory but "
                                   f"{format_bytes(host_free)} is available; use {flag} {max(1, host_free // per)} "
                                   f"or less")


# ----------------------------------------------------------------------------------- probe


def check_probe(config: TrainConfig, setup: Any) -> None:
    """``--snapshot-attention``: the probe must encode with the run's tokenizer and fit the model."""
    probe = config.snapshot_attention
    if probe is None:
        return
    flag = f"--snapshot-attention {probe!r}"
    if not probe.strip():
        raise ConfigError(f"{flag}: the probe is empty; give a sentence to watch")
    parts = probe.split("\t", 1) if config.task == "seq2seq" else [probe]
    max_len = getattr(getattr(setup.model, "config", None), "max_len", None)
    for part in parts:
        try:
            ids = setup.tokenizer.encode(part, add_special_tokens=False)
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{flag}: {e}") from None
        if not ids:
            raise ConfigError(f"{flag}: encodes to no tokens")
        if max_len is not None and len(ids) + 2 > max_len:
            raise ConfigError(f"{flag}: {len(ids)} tokens, more than the model's {max_len} positions; use a shorter probe")


# ---------------------------------------------------------------------------- first writes


def start_writing(config: TrainConfig, process: ProcessContext, setup: Any, fingerprint: dict[str, Any],
                  trainer: Any) -> Replaced:
    """Rank 0: move a replaced run aside, write the resolved config, the data fingerprint and the
    tokenizer. Returns the :class:`Replaced` run (deleted at the first checkpoint)."""
    out = config.run_dir
    replaced = Replaced(out, fresh=not config.resume)  # a failed fresh start leaves no trace
    if process.is_main:
        if config.overwrite:
            replaced.move_aside()
        make_dirs(out)
        atomic_write_json(out / "train_config.json", config.to_dict())
        write_data_fingerprint(out, fingerprint)
        if setup.tokenizer is not None and not config.resume:
            setup.tokenizer.save(out)
    trainer.after_save.append(lambda path: replaced.discard())
    process.barrier()
    return replaced
