"""From a :class:`TrainConfig` to what the trainer needs: tokenizer, datasets, model, callbacks.

Each objective reads its own kind of data:

| task       | data (default)                      | dataset                       | model               |
| ---------- | ----------------------------------- | ----------------------------- | ------------------- |
| gpt        | a corpus (``python-docs``)          | random windows, next token    | GPT                 |
| bert       | a corpus (``python-docs``)          | dynamic 80/10/10 masking      | BERT + MLM head     |
| seq2seq    | pairs file or built-in (``dates``)  | padded, length-bucketed pairs | Transformer         |
| classifier | labelled file or built-in           | text (or pair) + label        | BERT + class head   |
| embed      | (anchor, positive) file             | pairs, in-batch negatives     | BERT, mean pooling  |

Classification and embedding examples are split for validation at random with the run's seed,
stratified by class (or come from ``--val-data``).

Everything that can be wrong with the input (files, flags, ``--init``) is found here, before the
trainer touches the run directory.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glassformer.errors import CheckpointError, DataError
from glassformer.models import BERT, GPT, BERTConfig, GPTConfig, Transformer, TransformerConfig
from glassformer.models.base import PretrainedModel
from glassformer.training import lora
from glassformer.training.callbacks import attention_snapshot, gpt_sampler, induction_probe, seq2seq_sampler
from glassformer.training.config import TrainConfig
from glassformer.training.objectives import TASK_FAMILY

log = logging.getLogger("glassformer.training")

DEFAULT_DATA = {"gpt": "python-docs", "bert": "python-docs", "seq2seq": "dates", "classifier": "date-order"}


@dataclass
class TrainingSetup:
    """What :func:`prepare` builds for a run."""

    model: PretrainedModel
    tokenizer: Any
    train_data: Any
    val_data: Any
    eval_callbacks: list[Callable] = field(default_factory=list)
    generation_config: dict[str, Any] | None = None
    baseline: float | None = None  # unigram cross-entropy on the validation tokens (LM tasks), nats
    summary: str = ""  # one line about the data, for the start-of-run report
    label_names: list[str] | None = None  # classification: the class names, in label order
    examples: int | None = None  # training examples (classification, pairs), for --epochs
    example: str | None = None  # a line of the validation data, for the "next, try" hints
    on_finish: Callable[[Path], None] | None = None  # called with the run directory when training ends (rank 0)


def prepare(config: TrainConfig, resume_dir: Path | None = None) -> TrainingSetup:
    """Tokenizer, data, model and eval callbacks for ``config``.

    With ``resume_dir`` (a run directory with a checkpoint) the tokenizer and the model's shape
    come from that run, not from ``--init`` or the flags; the trainer then loads the weights.
    """
    from glassformer.training.checkpoint import latest_checkpoint

    init_model, tokenizer = None, None
    resume_from = latest_checkpoint(resume_dir) if resume_dir is not None else None
    if resume_from is not None:
        tokenizer = _load_tokenizer(resume_dir if (resume_dir / "tokenizer.json").is_file() else resume_from)
    elif config.init:
        init_model, tokenizer = _load_init(config)
    builders = {"gpt": _lm_data, "bert": _lm_data, "seq2seq": _seq2seq_data, "classifier": _classifier_data,
                "embed": _embed_data}
    setup = builders[config.task](config, tokenizer)
    torch.manual_seed(config.seed)  # the model's initial weights come from the run's seed
    if resume_from is not None and config.lora_rank:  # the checkpoint holds W, A and B unmerged: loaded by the trainer
        setup.model = lora.model_for_resume(resume_from, config.lora_rank, config.lora_alpha, config.task)
    elif resume_from is not None:
        from glassformer.loading import load_model

        setup.model = load_model(resume_from)
    else:
        setup.model = _build_model(config, setup, init_model)
        if config.lora_rank:
            lora.apply_lora(setup.model, config.lora_rank, config.lora_alpha, train=lora.TASK_HEADS.get(config.task, ()))
    if config.snapshot_attention:
        setup.eval_callbacks.append(attention_snapshot(config.snapshot_attention))
    return setup


# ------------------------------------------------------------------------------ tokenizers


def _load_tokenizer(path: str | Path):
    from glassformer.tokenizers import load_tokenizer

    return load_tokenizer(path)


def make_tokenizer(config: TrainConfig, text_or_texts):
    """The tokenizer ``--tokenizer`` asks for: train char/BPE on the data, or load a file/directory."""
    from glassformer.tokenizers import CharTokenizer, build_tokenizer

    if config.tokenizer == "char":  # text the run never saw (a fine-tuning set, a prompt) reads as <unk>
        tok = build_tokenizer("char", text_or_texts)
        return CharTokenizer(tok.chars, tok.specials, unk=True, special_roles=tok.special_tokens)
    if config.tokenizer == "bpe":
        return build_tokenizer("bpe", text_or_texts, config.vocab_size)
    if not Path(config.tokenizer).exists():
        raise DataError(f"--tokenizer {config.tokenizer}: not 'char' or 'bpe', and no such file or directory")
    return _load_tokenizer(config.tokenizer)


def unigram_cross_entropy(train: np.ndarray, val: np.ndarray, vocab_size: int) -> float:
    """Loss (nats/token) of predicting every validation token from training token frequencies.

    The bar a model must clear to show it learnt anything beyond "which tokens are common";
    add-one smoothing keeps unseen tokens finite.
    """
    counts = np.bincount(np.asarray(train, dtype=np.int64), minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[np.asarray(val, dtype=np.int64)].mean())


# ------------------------------------------------------------------------------------ data


def _lm_data(config: TrainConfig, tokenizer) -> TrainingSetup:
    from glassformer.data import CausalLMDataset, MLMDataset, encode_corpus, load_corpus, split_tokens

    spec = config.data or DEFAULT_DATA[config.task]
    if spec == "induction" and config.task == "gpt":
        return _induction_data(config, tokenizer)
    if tokenizer is None:
        tokenizer = make_tokenizer(config, load_corpus(spec, config.errors))
    tokens = encode_corpus(spec, tokenizer, progress=config.progress != "none", errors=config.errors, is_text=False)
    train, val = split_tokens(tokens, config.val_fraction)
    if config.task == "gpt":
        train_data = CausalLMDataset(train, config.context, source=f"{spec} (training split)")
        val_data = CausalLMDataset(val, config.context, source=f"{spec} (validation split, --val-fraction {config.val_fraction})")
        callbacks = [gpt_sampler(tokenizer, val, config)]
        gen = {"max_new_tokens": 200, "temperature": 0.8, "top_k": 40, "eos_token_id": tokenizer.eos_id}
    else:
        train_data = MLMDataset(train, tokenizer, config.context, config.mask_prob, source_name=f"{spec} (training split)")
        val_data = MLMDataset(val, tokenizer, config.context, config.mask_prob,
                              source_name=f"{spec} (validation split, --val-fraction {config.val_fraction})")
        callbacks, gen = [], None
    baseline = unigram_cross_entropy(train, val, tokenizer.vocab_size)
    words = tokenizer.decode([int(t) for t in val[:48]], skip_special_tokens=True).split()[:8]
    if config.task == "bert" and len(words) >= 2 and tokenizer.mask_id is not None:  # a fill-mask prompt
        words[len(words) // 2] = tokenizer.id_to_token(tokenizer.mask_id)
    example = " ".join(words) or None
    summary = f"{spec}: {len(train):,} training and {len(val):,} validation tokens ({tokenizer.kind}, vocab {tokenizer.vocab_size})"
    # an epoch of a corpus: its training tokens once, as windows of --context tokens
    return TrainingSetup(None, tokenizer, train_data, val_data, callbacks, gen, baseline, summary,
                         examples=max(1, len(train) // config.context), example=example)


def _induction_data(config: TrainConfig, tokenizer) -> TrainingSetup:
    """``--data induction``: random letters, a segment of distinct letters twice, random letters (Olsson et al., 2022)."""
    from glassformer.data.induction import ALPHABET, RepeatedTokensDataset
    from glassformer.tokenizers import CharTokenizer

    if tokenizer is None:
        tokenizer = CharTokenizer.train(ALPHABET)
    ids = tokenizer.encode(ALPHABET)
    # the loss counts every token: the random ones cannot be predicted, but learning that they are
    # not the segment's letters teaches the heads to match tokens, the first half of induction
    train_data = RepeatedTokensDataset(ids, config.context)
    val_data = RepeatedTokensDataset(ids, config.context)
    baseline = math.log(len(ids))  # a uniform guess over the letters
    summary = (f"induction: random letters, a segment of {train_data.min_period}-{train_data.max_period} distinct "
               f"letters (of {len(ids)}) written twice, then random letters, generated at load time")
    return TrainingSetup(None, tokenizer, train_data, val_data, [induction_probe(val_data, config)], None,
                         baseline, summary)


def split_examples(examples: list, val_fraction: float, what: str) -> tuple[list, list]:
    n_val = max(1, int(round(len(examples) * val_fraction)))
    if len(examples) - n_val < 1:
        raise DataError(f"{what}: {len(examples)} examples leave nothing for training after the validation split")
    return examples[:-n_val], examples[-n_val:]


def _seq2seq_data(config: TrainConfig, tokenizer) -> TrainingSetup:
    from glassformer.data import BUILTIN_PAIRS, Seq2SeqDataset, builtin_pairs, load_pairs

    spec = config.data or DEFAULT_DATA["seq2seq"]
    if spec in BUILTIN_PAIRS:
        pairs = builtin_pairs(spec, config.num_examples, seed=config.seed)
    else:
        pairs = load_pairs(spec, errors=config.errors)
    train, val = split_examples(pairs, config.val_fraction, spec)
    if tokenizer is None:
        tokenizer = make_tokenizer(config, [s for p in pairs for s in p])
    train_data = Seq2SeqDataset(train, tokenizer, config.context, source=f"{spec} (training)")
    val_data = Seq2SeqDataset(val, tokenizer, config.context, source=f"{spec} (validation)")
    gen = {"max_new_tokens": config.context, "beam": 1, "eos_token_id": tokenizer.eos_id}
    summary = f"{spec}: {len(train):,} training and {len(val):,} validation pairs ({tokenizer.kind}, vocab {tokenizer.vocab_size})"
    return TrainingSetup(None, tokenizer, train_data, val_data, [seq2seq_sampler(tokenizer, val[:3], config)], gen,
                         None, summary, examples=len(train), example=val[0][0])


def _texts_of(examples: list) -> list[str]:
    """Every string of ``(text or pair, label)`` examples, for training a tokenizer."""
    return [s for text, _ in examples for s in (text if isinstance(text, tuple) else (text,))]


def _labelled_file(config: TrainConfig, path: str):
    from glassformer.data import load_labelled

    return load_labelled(path, text_column=config.text_column, label_column=config.label_column,
                         errors=config.errors, pair_column=config.text_pair_column)


def _classifier_data(config: TrainConfig, tokenizer) -> TrainingSetup:
    from glassformer.data import BUILTIN_CLASSIFICATION, ClassificationDataset
    from glassformer.data.classification import stratified_split

    spec = config.data or DEFAULT_DATA["classifier"]
    if spec in BUILTIN_CLASSIFICATION:
        examples, names = BUILTIN_CLASSIFICATION[spec](config.num_examples, seed=config.seed)
    else:
        examples, names = _labelled_file(config, spec)
    if config.val_data:
        train, (val, val_names) = examples, _labelled_file(config, config.val_data)
        unknown = sorted(set(val_names) - set(names))
        if unknown:
            raise DataError(f"--val-data {config.val_data}: label {unknown[0]!r} is not in --data {spec} "
                            f"(its labels: {', '.join(names)})")
        index = {name: i for i, name in enumerate(names)}
        val = [(text, index[val_names[y]]) for text, y in val]
        where = config.val_data
    else:
        train_idx, val_idx = stratified_split([y for _, y in examples], config.val_fraction, config.seed)
        train, val = [examples[i] for i in train_idx], [examples[i] for i in val_idx]
        where = f"{spec} (a stratified {config.val_fraction:g} of it, --seed {config.seed})"
    if tokenizer is None:
        tokenizer = make_tokenizer(config, _texts_of(examples))
    train_data = ClassificationDataset(train, tokenizer, config.context, label_names=names, source=f"{spec} (training)")
    val_data = ClassificationDataset(val, tokenizer, config.context, label_names=names, source=f"{where} (validation)")
    summary = (f"{spec}: {len(train):,} training examples, {len(val):,} validation examples from {where}; "
               f"{len(names)} classes ({', '.join(names)})")
    example = val[0][0] if isinstance(val[0][0], str) else None  # `classify` reads single texts
    return TrainingSetup(None, tokenizer, train_data, val_data, [], None, None, summary, list(names),
                         examples=len(train), example=example)


def _embed_data(config: TrainConfig, tokenizer) -> TrainingSetup:
    """(anchor, positive) rows of ``--data`` (columns ``--text-column``, ``--text-pair-column``)."""
    from glassformer.data.classification import SentencePairDataset, read_columns, stratified_split

    if not config.data:
        raise DataError("train embed needs --data: a CSV/TSV or JSON Lines file of (anchor, positive) pairs")
    columns = (config.text_column, config.text_pair_column)
    pairs = [tuple(r) for r in read_columns(config.data, columns, errors=config.errors)]
    if config.val_data:
        train, val = pairs, [tuple(r) for r in read_columns(config.val_data, columns, errors=config.errors)]
        where = config.val_data
    else:
        train_idx, val_idx = stratified_split([0] * len(pairs), config.val_fraction, config.seed)
        train, val = [pairs[i] for i in train_idx], [pairs[i] for i in val_idx]
        where = f"{config.data} (a random {config.val_fraction:g} of it, --seed {config.seed})"
    if tokenizer is None:
        tokenizer = make_tokenizer(config, [s for p in pairs for s in p])
    train_data = SentencePairDataset(train, tokenizer, config.context, source=f"{config.data} (training)")
    val_data = SentencePairDataset(val, tokenizer, config.context, source=f"{where} (validation)")
    summary = (f"{config.data}: {len(train):,} training pairs, {len(val):,} validation pairs from {where}; "
               f"in-batch negatives, batch {config.batch_size}")
    return TrainingSetup(None, tokenizer, train_data, val_data, [], None, None, summary, None,
                         examples=len(train), example=val[0][0], on_finish=_sentence_transformers_saver(config))


def _sentence_transformers_saver(config: TrainConfig) -> Callable[[Path], None]:
    """Rewrite the best model at the run's root as a sentence-transformers directory."""

    def save(run_dir: Path) -> None:
        from glassformer.interop.sentence_transformers import save_sentence_transformers
        from glassformer.loading import load_model_and_tokenizer

        if not (run_dir / "model.safetensors").is_file():
            return  # stopped before its first evaluation: nothing to export
        model, tokenizer = load_model_and_tokenizer(run_dir)
        save_sentence_transformers(model, tokenizer, run_dir, like=config.init)

    return save


# ----------------------------------------------------------------------------------- model


def _load_init(config: TrainConfig):
    """The ``--init`` model and its tokenizer, checked against the task."""
    from glassformer.loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(config.init, require_tokenizer=True)
    family = getattr(model.config, "model_type", "?")
    want = TASK_FAMILY[config.task]
    if family != want:
        raise CheckpointError(f"--init {config.init}: holds a {family} model; `train {config.task}` needs a {want} model")
    if config.context > model.config.max_len:
        raise ValueError(f"--context {config.context} is above max_len {model.config.max_len} of the --init model")
    if tokenizer.vocab_size > model.config.vocab_size:
        raise CheckpointError(f"--init {config.init}: its tokenizer has {tokenizer.vocab_size} ids but the model only "
                              f"{model.config.vocab_size}")
    return model, tokenizer


def _build_model(config: TrainConfig, setup: TrainingSetup, init_model: PretrainedModel | None) -> PretrainedModel:
    tok = setup.tokenizer
    if config.task == "classifier":
        return _classifier_model(config, setup, init_model)
    if config.task == "embed":
        return _encoder_model(config, setup, init_model)
    if init_model is not None:
        log.info("model from --init %s; the model-shape flags are ignored", config.init)
        return init_model
    common = dict(vocab_size=tok.vocab_size, **config.model_kwargs(),
                  pad_token_id=tok.pad_id, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id)
    if config.task == "gpt":
        return GPT(GPTConfig(**common))
    if config.task == "bert":
        return BERT(BERTConfig(**common, mask_token_id=tok.mask_id))
    return Transformer(TransformerConfig(**common, decoder_start_token_id=tok.bos_id))


def _encoder_model(config: TrainConfig, setup: TrainingSetup, init_model: PretrainedModel | None) -> BERT:
    """A BERT without heads for sentence vectors: ``--init``'s encoder, or a new one."""
    tok = setup.tokenizer
    if init_model is None:
        return BERT(BERTConfig(vocab_size=tok.vocab_size, **config.model_kwargs(), pad_token_id=tok.pad_id,
                               mask_token_id=tok.mask_id, mlm_head=False, num_labels=0))
    base = init_model.config.to_dict()
    base.update(num_labels=0, label_names=[], mlm_head=False)
    model = BERT(BERTConfig.from_dict(base))
    missing, _ = model.load_state_dict(init_model.state_dict(), strict=False)
    if missing:
        raise CheckpointError(f"--init {config.init}: has no weight {missing[0]!r}; not a compatible BERT")
    return model


def _classifier_model(config: TrainConfig, setup: TrainingSetup, init_model: PretrainedModel | None) -> BERT:
    names = setup.label_names or []
    tok = setup.tokenizer
    if init_model is None:
        return BERT(BERTConfig(vocab_size=tok.vocab_size, **config.model_kwargs(), pad_token_id=tok.pad_id,
                               mask_token_id=tok.mask_id, mlm_head=False, num_labels=len(names), label_names=names))
    base = init_model.config.to_dict()
    base.update(num_labels=len(names), label_names=list(names), mlm_head=False, pooler=True)
    model = BERT(BERTConfig.from_dict(base))
    source = dict(init_model.state_dict())
    target = model.state_dict()
    fresh = [k for k in target if k not in source]
    unexpected_fresh = [k for k in fresh if not k.startswith(("classifier.", "pooler."))]
    if unexpected_fresh:
        raise CheckpointError(f"--init {config.init}: has no weight {unexpected_fresh[0]!r}; not a compatible BERT")
    with torch.no_grad():
        for k, v in target.items():
            if k in source:
                if source[k].shape != v.shape:
                    raise CheckpointError(f"--init {config.init}: weight {k!r} has shape {tuple(source[k].shape)}, "
                                          f"expected {tuple(v.shape)}")
                v.copy_(source[k])
    if fresh:
        log.info("--init %s: new %s initialised at random", config.init, ", ".join(sorted({k.split('.')[0] for k in fresh})))
    return model
