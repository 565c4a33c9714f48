"""A classification task where word order carries the label: are two dates in order?

Each example is two dates spelled as people write them (the formats of the ``dates`` task with a
four-digit year), joined by ", then ": ``"3 March 1999, then Fri 27 Nov 2026"``. The label says
whether the first date comes before the second (``in order``) or after it (``out of order``).
Every pair is as likely to be shown one way round as the other, so:

- the two orders of a pair have the same words, characters and length: a bag-of-words or a
  length-only classifier is at chance (50%);
- only reading *which date comes first* tells the label.

Dates (1970-2068, as in the ``dates`` task) come from the standard library's ``datetime``; nothing
is downloaded. A year outside that range is one the model never read.
"""

from __future__ import annotations

import datetime as dt
import random

from glassformer.data.classification import Labelled
from glassformer.data.dates import FORMATS, date_parts, random_date

ORDER_LABELS = ["in order", "out of order"]
# the spellings with a four-digit year (a two-digit one would make some pairs ambiguous)
FOUR_DIGIT = tuple(f for f in FORMATS if "2026" in f(date_parts(dt.date(2026, 11, 27))))


def date_order(n: int, seed: int = 0) -> Labelled:
    """``n`` pairs of different dates, half in order, half out of order; the same for the same seed."""
    if n < 2:
        raise ValueError(f"n must be at least 2 (one example of each class), got {n}")
    rng = random.Random(seed)
    examples = []
    for i in range(n):
        a, b = random_date(rng), random_date(rng)
        while a == b:
            b = random_date(rng)
        first, second = (a, b) if (i % 2 == 0) == (a < b) else (b, a)  # alternate: exactly balanced
        spell = [rng.choice(FOUR_DIGIT), rng.choice(FOUR_DIGIT)]
        text = f"{spell[0](date_parts(first))}, then {spell[1](date_parts(second))}"
        examples.append((text, 0 if first < second else 1))
    rng.shuffle(examples)
    return Labelled(examples, list(ORDER_LABELS))
