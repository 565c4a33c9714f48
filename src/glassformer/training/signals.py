"""Stopping cleanly on Ctrl-C or SIGTERM: the training loop finishes its step, saves, and returns.

A handler that raised inside a step could leave half-applied gradients or a half-written
checkpoint; this one only records the signal's name, and the loop checks it between steps
(under torchrun the ranks agree on it first: ``ProcessContext.agree_on_stop``).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def catch_stop_signals(on_signal: Callable[[str], None]) -> Iterator[None]:
    """While the block runs, SIGINT and SIGTERM call ``on_signal(name)`` (``"SIGINT"``, ``"SIGTERM"``)
    instead of stopping the process; a second Ctrl-C interrupts at once. The previous handlers come
    back afterwards. Off the main thread, where Python cannot install handlers, it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        on_signal(signal.Signals(signum).name)
        signal.signal(signal.SIGINT, previous[signal.SIGINT])  # a second Ctrl-C interrupts at once

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
