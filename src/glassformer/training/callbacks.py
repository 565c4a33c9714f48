"""What runs at each evaluation of a training run: samples, the induction probe, attention snapshots.

:mod:`glassformer.training.tasks` attaches these to a :class:`~glassformer.training.tasks.TrainingSetup`
by objective; each returns a callable ``(trainer, step) -> str | None`` whose text the run logs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch

from glassformer.training.config import TrainConfig

log = logging.getLogger("glassformer.training")

def sample_ids(model, prompts: list[list[int]], max_new_tokens: int, seed: int) -> list[list[int]]:
    """This module's one call into glassformer.generation: sampled GPT continuations (new ids only)."""
    from glassformer.generation import generate_lists

    return generate_lists(model, prompts, max_new_tokens=max_new_tokens, temperature=0.8, top_k=40, seed=seed,
                          eos_token_id=[])


def translate_ids(model, src_ids, src_mask, max_new_tokens: int) -> list[list[int]]:
    """Greedy seq2seq translations (target ids, no start token)."""
    from glassformer.generation import generate_seq2seq_lists

    return generate_seq2seq_lists(model, src_ids, src_mask=src_mask, max_new_tokens=max_new_tokens)


def gpt_sampler(tokenizer, val_tokens: np.ndarray, config: TrainConfig) -> Callable:
    """Continue the first few validation tokens; the same prompt and seed at every eval."""
    prompt = [int(t) for t in np.asarray(val_tokens[: min(16, max(len(val_tokens) - 1, 1))])]

    def sample(trainer, step: int) -> str | None:
        if config.sample_tokens == 0:
            return None
        room = trainer.model.config.max_len - len(prompt)
        new = sample_ids(trainer.model, [prompt], max(1, min(config.sample_tokens, room)), config.seed)[0]
        return f"sample: {tokenizer.decode(prompt)!r} -> {tokenizer.decode(new, skip_special_tokens=True)!r}"

    return sample


def seq2seq_sampler(tokenizer, pairs: list[tuple[str, str]], config: TrainConfig) -> Callable:
    """Greedy translations of the first validation pairs, marked right or wrong."""

    def sample(trainer, step: int) -> str | None:
        if config.sample_tokens == 0 or not pairs:
            return None
        from glassformer.data import pad

        model = trainer.model
        rows = [tokenizer.encode(src, add_special_tokens=False)[: model.config.max_len] for src, _ in pairs]
        src_ids, src_mask = pad(rows, tokenizer.pad_id)
        out = translate_ids(model, src_ids.to(trainer.device), src_mask.to(trainer.device),
                            min(config.sample_tokens, model.config.max_len - 1))
        lines = []
        for (src, tgt), ids in zip(pairs, out):
            pred = tokenizer.decode(ids, skip_special_tokens=True)
            lines.append(f"  {'ok ' if pred == tgt else 'BAD'} {src!r} -> {pred!r}" + ("" if pred == tgt else f" (want {tgt!r})"))
        return "samples:\n" + "\n".join(lines)

    return sample


INDUCTION_LOG = "induction.jsonl"


def induction_probe(data, config: TrainConfig) -> Callable:
    """At each eval: every head's induction score and the loss on the repeat, appended to
    ``RUN_DIR/induction.jsonl`` (one JSON object per evaluation)."""
    from glassformer.data.induction import induction_scores, repeat_mask

    seqs, periods, starts = data.sample(64, torch.Generator().manual_seed(config.seed + 7))  # the same probe every eval

    def probe(trainer, step: int) -> str | None:
        import json

        from glassformer.io import atomic_write_text

        out = trainer.model(seqs[:, :-1].to(trainer.device), return_attentions=True)
        weights = torch.stack([a.weights for a in out.attentions]).float().cpu()  # (L, B, H, T, T)
        scores = induction_scores(weights, periods, config.context, starts)  # (L, H)
        logp = torch.log_softmax(out.logits.float().cpu(), -1).gather(-1, seqs[:, 1:, None])[..., 0]  # (B, T)
        repeated = float(-logp[repeat_mask(periods, config.context, starts)].mean())
        layer, head = divmod(int(scores.argmax()), scores.shape[1])
        record = {"step": step, "repeated_loss": round(repeated, 5), "scores": scores.double().round(decimals=4).tolist()}
        if trainer.run_dir is not None:
            path = trainer.run_dir / INDUCTION_LOG
            old = path.read_text(encoding="utf-8") if path.is_file() else ""
            atomic_write_text(path, old + json.dumps(record) + "\n")
        return (f"induction: loss on the repeat {repeated:.3f}; best head layer {layer} head {head}, "
                f"score {float(scores[layer, head]):.2f}")

    return probe


def attention_snapshot(probe: str) -> Callable:
    """Save the attention on ``probe`` at every eval (``--snapshot-attention``), via glassformer.explain."""

    def snapshot(trainer, step: int) -> str | None:
        if trainer.run_dir is None:
            return None
        try:
            from glassformer.explain.snapshot import save_attention_snapshot
        except ImportError:
            log.warning("--snapshot-attention needs glassformer.explain.snapshot, which is not available")
            return None
        path = save_attention_snapshot(trainer.model, trainer.tokenizer, probe, step, trainer.run_dir)
        return f"attention snapshot: {path}" if path else None

    return snapshot
