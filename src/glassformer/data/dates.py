"""The ``dates`` task: a date as people write it -> the same date in ISO 8601 (``2026-11-27``).

The sources mix many spellings ("27 Nov 2026", "November 27th, 2026", "11/27/26",
"Friday, 27 November 2026", "27.11.2026" ...). A slashed date ending in the year is always
month/day/year (US) and a dotted one day.month.year (European), so no source is ambiguous. Two-digit years follow the POSIX
rule that ``strptime`` uses: 69-99 are 19xx and 00-68 are 20xx; dates are drawn from 1970-2068
so every two-digit year reads back to the right century. Month and day names are English and
fixed here, never taken from the locale.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
FIRST, LAST = dt.date(1970, 1, 1), dt.date(2068, 12, 31)


def ordinal(day: int) -> str:
    """1 -> "1st", 2 -> "2nd", 11 -> "11th", 23 -> "23rd"."""
    suffix = "th" if 11 <= day % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def date_parts(d: dt.date) -> dict[str, str]:
    month = MONTHS[d.month - 1]
    return {
        "d": str(d.day), "dd": f"{d.day:02d}", "do": ordinal(d.day), "m": str(d.month), "mm": f"{d.month:02d}",
        "month": month, "mon": month[:3], "yyyy": str(d.year), "yy": f"{d.year % 100:02d}",
        "weekday": WEEKDAYS[d.weekday()], "wkd": WEEKDAYS[d.weekday()][:3],
    }


# each format turns the parts of a date into one human spelling
FORMATS: tuple[Callable[[dict[str, str]], str], ...] = (
    lambda p: f"{p['d']} {p['mon']} {p['yyyy']}",  # 27 Nov 2026
    lambda p: f"{p['dd']} {p['mon']} {p['yyyy']}",  # 07 Nov 2026
    lambda p: f"{p['d']} {p['month']} {p['yyyy']}",  # 27 November 2026
    lambda p: f"{p['month']} {p['do']}, {p['yyyy']}",  # November 27th, 2026
    lambda p: f"{p['month']} {p['d']}, {p['yyyy']}",  # November 27, 2026
    lambda p: f"{p['mon']} {p['d']}, {p['yyyy']}",  # Nov 27, 2026
    lambda p: f"{p['mon']}. {p['d']}, {p['yyyy']}",  # Nov. 27, 2026
    lambda p: f"{p['m']}/{p['d']}/{p['yy']}",  # 11/27/26
    lambda p: f"{p['mm']}/{p['dd']}/{p['yyyy']}",  # 11/27/2026
    lambda p: f"{p['d']}.{p['m']}.{p['yyyy']}",  # 27.11.2026
    lambda p: f"{p['dd']}.{p['mm']}.{p['yy']}",  # 27.11.26
    lambda p: f"{p['weekday']}, {p['month']} {p['d']}, {p['yyyy']}",  # Friday, November 27, 2026
    lambda p: f"{p['weekday']}, {p['d']} {p['month']} {p['yyyy']}",  # Friday, 27 November 2026
    lambda p: f"{p['wkd']} {p['d']} {p['mon']} {p['yyyy']}",  # Fri 27 Nov 2026
    lambda p: f"the {p['do']} of {p['month']}, {p['yyyy']}",  # the 27th of November, 2026
    lambda p: f"{p['do']} {p['month']} {p['yyyy']}",  # 27th November 2026
    lambda p: f"{p['month'].upper()} {p['d']} {p['yyyy']}",  # NOVEMBER 27 2026
    lambda p: f"{p['d']} {p['month'].lower()} {p['yyyy']}",  # 27 november 2026
    lambda p: f"{p['yyyy']}-{p['mm']}-{p['dd']}",  # 2026-11-27 (already ISO: the identity)
    lambda p: f"{p['yyyy']}/{p['mm']}/{p['dd']}",  # 2026/11/27
)


def random_date(rng: random.Random) -> dt.date:
    return FIRST + dt.timedelta(days=rng.randrange((LAST - FIRST).days + 1))


def date_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` pairs ``(human spelling, ISO 8601)`` drawn from ``seed``."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        d = random_date(rng)
        spell = FORMATS[rng.randrange(len(FORMATS))]
        pairs.append((spell(date_parts(d)), d.isoformat()))
    return pairs
