"""Seeing a run: ``metrics.jsonl``, the loss-curve PNG, and the progress display.

On a terminal the display is a rich progress bar (step, loss, lr, tokens/s, ETA) with eval
reports printed above it; elsewhere (CI logs, pipes) it is plain log lines.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

from glassformer.io import atomic_path, atomic_write_text

log = logging.getLogger("glassformer.training")

METRICS_NAME = "metrics.jsonl"
PLOT_NAME = "loss.png"
# The loss plot is redrawn at an evaluation at most this often, and once when the run ends: a plot
# costs ~0.3 s (the first ~1.2 s, importing matplotlib), 1.5% of a 200-step char-GPT run if
# drawn at every evaluation. The console and metrics.jsonl carry every number as it comes.
PLOT_EVERY_S = 60.0


# ------------------------------------------------------------------------------ metrics.jsonl


class MetricsLog:
    """Appends one JSON object per line; each line is flushed so a crash loses nothing written."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def append(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a crash
                continue
        return out

    def truncate_after(self, step: int) -> None:
        """Drop lines past ``step``: a resumed run re-does those steps from the checkpoint."""
        records = [r for r in self.read() if r.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in records))


# what a task's loss counts: the plot's y-axis
LOSS_LABELS = {
    "gpt": "cross-entropy (nats / token)",
    "bert": "cross-entropy (nats / masked token)",
    "seq2seq": "cross-entropy (nats / target token)",
    "classifier": "cross-entropy (nats / example)",
    "embed": "in-batch contrastive loss (nats / pair)",
}


def loss_label(task: str) -> str:
    """The y-axis label of ``task``'s loss plot."""
    return LOSS_LABELS.get(task, "loss")


def plot_losses(records: list[dict[str, Any]], path: str | os.PathLike, title: str = "loss",
                baseline: float | None = None, ylabel: str = "cross-entropy (nats / token)") -> None:
    """Train loss per logged step and val loss per eval, written atomically as a PNG.

    Drawn with matplotlib's object API and its Agg canvas, without ``pyplot``'s global figure
    state. The first call in a process costs about 1.1-1.3 s on a 2-core CPU (importing
    matplotlib: 0.9 s), later ones about 0.3 s.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    train = [(r["step"], r["train_loss"]) for r in records if r.get("train_loss") is not None]
    val = [(r["step"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    if train:
        ax.plot(*zip(*train), label="train", color="tab:blue", alpha=0.8)
    if val:
        ax.plot(*zip(*val), "o-", label="validation", color="tab:orange")
    if baseline is not None:
        ax.axhline(baseline, ls="--", color="gray", label="unigram baseline")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png")


# ---------------------------------------------------------------------------------- display


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Reporter:
    """Shows progress: a rich bar on a terminal (``bar``), log lines (``plain``), or nothing (``none``)."""

    def __init__(self, mode: str, total_steps: int, start_step: int = 0, enabled: bool = True) -> None:
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "plain"
        self.mode = mode if enabled else "none"
        self.total = total_steps
        self._progress = None
        self._task = None
        if self.mode == "bar":
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("[bold]step"), MofNCompleteColumn(), BarColumn(),
                TextColumn("loss [cyan]{task.fields[loss]}"), TextColumn("lr {task.fields[lr]}"),
                TextColumn("{task.fields[tps]} tok/s"), TextColumn("ETA"), TimeRemainingColumn(),
                console=Console(stderr=True), transient=False,
            )
            self._task = self._progress.add_task("train", total=total_steps, completed=start_step,
                                                 loss="-", lr="-", tps="-")
            self._progress.start()

    def step(self, step: int, loss: float | None, lr: float, tokens_per_s: float, eta_s: float, log_line: bool) -> None:
        loss_txt = f"{loss:.4f}" if loss is not None else "-"
        if self.mode == "bar":
            self._progress.update(self._task, completed=step, loss=loss_txt, lr=f"{lr:.2e}", tps=f"{tokens_per_s:,.0f}")
        elif self.mode == "plain" and log_line:
            log.info("step %d/%d | loss %s | lr %.2e | %s tok/s | ETA %s",
                     step, self.total, loss_txt, lr, f"{tokens_per_s:,.0f}", format_duration(eta_s))

    def set_total(self, total_steps: int) -> None:
        """The run's new length (``--max-minutes`` shortened it)."""
        self.total = total_steps
        if self.mode == "bar":
            self._progress.update(self._task, total=total_steps)

    def message(self, text: str) -> None:
        """An eval report or a sample, printed above the bar (or logged)."""
        if self.mode == "bar":
            self._progress.console.print(text, markup=False, highlight=False)
        elif self.mode == "plain":
            log.info("%s", text)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
