"""Scoring a classifier on a labelled file it never trained on: what ``glassformer evaluate`` runs.

:func:`evaluate_file` reads the file with the run's own column settings (``train_config.json``;
flags may name others), encodes each row exactly as training did
(:class:`~glassformer.data.classification.ClassificationDataset`: the same wrapping, pairs and
cut), and returns a :class:`ClassifierScores`: accuracy, each class's precision, recall and F1,
their unweighted mean (macro-F1, which a rare class moves as much as a common one), the
confusion matrix (rows: the true label, columns: the prediction) and the worst misses (the
wrong answers given with the highest probability).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from glassformer.errors import DataError
from glassformer.io import eval_mode


@dataclass
class Miss:
    """One wrongly classified row."""

    row: int  # 1-based, in file order (a header line not counted)
    text: str
    label: str
    predicted: str
    p_predicted: float
    p_label: float


@dataclass
class ClassifierScores:
    label_names: list[str]
    n: int
    accuracy: float
    macro_f1: float
    per_class: dict[str, dict[str, float]]  # label -> precision, recall, f1, support
    confusion: list[list[int]]  # confusion[true][predicted]
    worst: list[Miss]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def scores_from_predictions(labels: list[int], predicted: list[int], label_names: list[str]) -> ClassifierScores:
    """Accuracy, per-class precision/recall/F1, macro-F1 and the confusion matrix (no misses listed).
    A class never predicted has precision 0; a class absent from the labels is left out of the
    macro mean (as scikit-learn does with ``labels=`` the classes present)."""
    k = len(label_names)
    confusion = [[0] * k for _ in range(k)]
    for y, p in zip(labels, predicted):
        confusion[y][p] += 1
    per_class: dict[str, dict[str, float]] = {}
    f1s = []
    for c, name in enumerate(label_names):
        tp = confusion[c][c]
        support = sum(confusion[c])
        predicted_c = sum(confusion[r][c] for r in range(k))
        precision = tp / predicted_c if predicted_c else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
        if support:
            f1s.append(f1)
    n = len(labels)
    accuracy = sum(confusion[c][c] for c in range(k)) / n if n else 0.0
    return ClassifierScores(list(label_names), n, accuracy, sum(f1s) / len(f1s) if f1s else 0.0, per_class,
                            confusion, [])


@torch.no_grad()
def evaluate_classifier(model, tokenizer, texts: list, labels: list[str], *, batch_size: int = 32,
                        worst: int = 5, max_len: int | None = None, where: str = "the data") -> ClassifierScores:
    """Score ``model`` on ``texts`` (strings or sentence pairs) with true ``labels`` (label names),
    each cut to ``max_len`` tokens (default: the model's)."""
    from glassformer.data import ClassificationDataset

    names = list(model.config.label_names or [str(i) for i in range(model.config.num_labels)])
    unknown = sorted(set(labels) - set(names))
    if unknown:
        raise DataError(f"{where}: label {unknown[0]!r} is not one the model knows ({', '.join(names)})")
    data = ClassificationDataset(texts, labels, tokenizer, min(max_len or model.config.max_len, model.config.max_len),
                                 label_names=names, source=where)
    device = next(model.parameters()).device
    probs = []
    with eval_mode(model):
        for start in range(0, len(data), batch_size):
            batch = data.collate(list(range(start, min(start + batch_size, len(data)))))
            batch.pop("labels")
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits  # (B, K)
            probs.append(torch.softmax(logits.float(), -1).cpu())
    p = torch.cat(probs)  # (N, K)
    predicted = p.argmax(-1).tolist()
    result = scores_from_predictions(data.labels, predicted, names)
    misses = [i for i, (y, q) in enumerate(zip(data.labels, predicted)) if y != q]
    misses.sort(key=lambda i: -float(p[i, predicted[i]]))
    result.worst = [Miss(i + 1, " [SEP] ".join(texts[i]) if isinstance(texts[i], tuple) else texts[i],
                         names[data.labels[i]], names[predicted[i]], round(float(p[i, predicted[i]]), 6),
                         round(float(p[i, data.labels[i]]), 6)) for i in misses[:worst]]
    return result


def evaluate_file(model_dir: str | os.PathLike, data: str | os.PathLike, *, text_column: str | None = None,
                  label_column: str | None = None, text_pair_column: str | None = None, batch_size: int = 32,
                  worst: int = 5, errors: str = "strict") -> ClassifierScores:
    """Score the classifier in ``model_dir`` on the labelled file ``data``. Columns not given are the
    run's (its ``train_config.json``), else ``text`` and ``label``."""
    from glassformer.data.classification import read_columns
    from glassformer.loading import load_model_and_tokenizer
    from glassformer.training.config_io import load_run_config

    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    if worst < 0:
        raise ValueError(f"--worst must be >= 0, got {worst}")
    saved = load_run_config(model_dir) if (Path(model_dir) / "train_config.json").is_file() else {}
    text_column = text_column or saved.get("text_column") or "text"
    label_column = label_column or saved.get("label_column") or "label"
    pair = text_pair_column or saved.get("text_pair_column")
    model, tokenizer = load_model_and_tokenizer(model_dir)
    if getattr(model.config, "num_labels", 0) <= 0:
        raise ValueError(f"{model_dir}: not a classifier (no classification head); evaluate scores classifiers")
    columns = [text_column, *([pair] if pair else []), label_column]
    rows = read_columns(data, columns, errors=errors)
    texts = [(r[0], r[1]) if pair else r[0] for r in rows]
    return evaluate_classifier(model, tokenizer, texts, [r[-1].strip() for r in rows], batch_size=batch_size,
                               worst=worst, max_len=saved.get("context"), where=str(data))


def format_scores(scores: ClassifierScores) -> str:
    """The report ``glassformer evaluate`` prints."""
    names = scores.label_names
    width = max(8, *(len(n) for n in names))
    lines = [f"{scores.n} examples: accuracy {scores.accuracy:.1%}, macro-F1 {scores.macro_f1:.3f}", "",
             f"{'label':<{width}}  precision  recall     f1  support"]
    for name in names:
        c = scores.per_class[name]
        lines.append(f"{name:<{width}}  {c['precision']:9.3f}  {c['recall']:6.3f}  {c['f1']:5.3f}  {c['support']:7d}")
    lines += ["", "confusion (rows: true label, columns: predicted)",
              " " * width + "  " + " ".join(f"{n[:7]:>7}" for n in names)]
    for name, row in zip(names, scores.confusion):
        lines.append(f"{name:<{width}}  " + " ".join(f"{v:>7d}" for v in row))
    if scores.worst:
        lines += ["", "worst misses (the most confident wrong answers)"]
        for m in scores.worst:
            text = m.text if len(m.text) <= 80 else m.text[:77] + "..."
            lines.append(f"  row {m.row}: {m.label} -> {m.predicted} (p {m.p_predicted:.3f}; "
                         f"p({m.label}) {m.p_label:.3f}): {text!r}")
    return "\n".join(lines)
