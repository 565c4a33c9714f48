"""Text and rich renderings of the four-step walk-through and of masks.

Plain text for pipes and files; a ``rich`` table when a person is watching a terminal. Both
show the same numbers, straight from :class:`~glassformer.explain.steps.FourSteps`.
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from torch import Tensor

    from glassformer.explain.steps import FourSteps


def show_token(tok: str, width: int = 12) -> str:
    """A token as one short printable cell: whitespace made visible, long tokens cut."""
    out = tok.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    out = out.replace(" ", "␣") if out.strip() == "" or out != out.strip() else out
    return out if len(out) <= width else out[: width - 1] + "…"


def vec(t: Tensor, n: int = 4, fmt: str = "{:+.3f}") -> str:
    """An abbreviated vector: the first n-1 entries, an ellipsis, the last one."""
    xs = [float(x) for x in t]
    if len(xs) <= n:
        return "[" + ", ".join(fmt.format(x) for x in xs) + "]"
    return "[" + ", ".join(fmt.format(x) for x in xs[: n - 1]) + ", …, " + fmt.format(xs[-1]) + "]"


def _rows_to_show(steps: FourSteps, max_rows: int) -> list[int]:
    """Every key position, or for long sequences the heaviest ones (plus the query's own), in order."""
    t_k = steps.weights.shape[0]
    if t_k <= max_rows:
        return list(range(t_k))
    keep = set(steps.weights.argsort(descending=True)[: max_rows - 1].tolist())
    if steps.kind != "cross" and steps.token < t_k:
        keep.add(steps.token)
    return sorted(keep)


def _header(steps: FourSteps, q_token: str) -> list[str]:
    return [
        f"{steps.kind} attention · layer {steps.layer} · head {steps.head} · query token {steps.token} "
        f"{show_token(q_token, 24)!r}",
        f"q = {vec(steps.q)}   (d_k = {steps.d_k}, √d_k = {math.sqrt(steps.d_k):.4f})",
    ]


def _footer(steps: FourSteps, shown: int) -> list[str]:
    t_k = steps.weights.shape[0]
    lines = []
    if shown < t_k:
        lines.append(f"({t_k - shown} lighter rows not shown; the sums below include them)")
    hidden = int((~steps.mask).sum())
    if hidden:
        lines.append(f"the mask hid {hidden} of {t_k} positions: their weight is exactly 0")
    lines += [
        f"Σ weights = {float(steps.weights.sum()):.6f}",
        f"z       = Σ weightⱼ·vⱼ = {vec(steps.z, 6)}",
        f"model z = {vec(steps.model_z, 6)}   (this head's slice of Concat(heads), the input of W^O)",
        f"max |z - model z| = {steps.max_diff:.2e}   max |weights - model weights| = "
        f"{steps.weights_max_diff:.2e}   {'OK' if steps.ok else 'MISMATCH'} (tolerance 1e-05)",
    ]
    return lines


def _cells(steps: FourSteps, j: int, k_tokens: list[str]) -> list[str]:
    tok = k_tokens[j] if j < len(k_tokens) else f"#{j}"
    visible = bool(steps.mask[j])
    return [
        str(j),
        show_token(tok),
        vec(steps.keys[j]),
        f"{float(steps.raw_scores[j]):+.4f}",
        f"{float(steps.scaled_scores[j]):+.4f}",
        f"{float(steps.weights[j]):.4f}" if visible else "masked",
        vec(steps.values[j], 3),
    ]


COLUMNS = ["j", "token", "key kⱼ", "1: q·kⱼ", "2: ÷√d_k", "3: softmax", "value vⱼ"]


def format_four_steps(
    steps: FourSteps, k_tokens: list[str], q_token: str | None = None, *, plain: bool = True, max_rows: int = 48
) -> str:
    """The walk-through as text. ``plain=False`` renders the rich table (with ANSI styles)."""
    q_token = q_token if q_token is not None else (k_tokens[steps.token] if steps.token < len(k_tokens) else "")
    if not plain:
        buf = io.StringIO()
        Console(file=buf, force_terminal=True, width=120).print(four_steps_table(steps, k_tokens, q_token, max_rows))
        return buf.getvalue()
    rows = _rows_to_show(steps, max_rows)
    table = [COLUMNS] + [_cells(steps, j, k_tokens) for j in rows]
    widths = [max(len(r[c]) for r in table) for c in range(len(COLUMNS))]
    lines = _header(steps, q_token)
    for n, r in enumerate(table):
        lines.append("  ".join(cell.rjust(w) if c >= 3 else cell.ljust(w) for c, (cell, w) in enumerate(zip(r, widths))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines + _footer(steps, len(rows))) + "\n"


def four_steps_table(steps: FourSteps, k_tokens: list[str], q_token: str | None = None, max_rows: int = 48) -> Group:
    """A rich renderable: header, one table row per key, and the check against the model."""
    q_token = q_token if q_token is not None else (k_tokens[steps.token] if steps.token < len(k_tokens) else "")
    table = Table(title="\n".join(_header(steps, q_token)), title_justify="left", show_lines=False)
    for c, name in enumerate(COLUMNS):
        table.add_column(name, justify="right" if c >= 3 else "left", no_wrap=True)
    rows = _rows_to_show(steps, max_rows)
    top = float(steps.weights.max()) if steps.weights.numel() else 0.0
    for j in rows:
        cells = _cells(steps, j, k_tokens)
        style = "dim strike" if not bool(steps.mask[j]) else ("bold" if float(steps.weights[j]) == top else "")
        table.add_row(*cells, style=style)
    footer = Text("\n".join(_footer(steps, len(rows))))
    footer.stylize("green" if steps.ok else "bold red", len(footer.plain) - len(_footer(steps, len(rows))[-1]))
    return Group(table, footer)
