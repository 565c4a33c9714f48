"""OpenMP waiting that fits the machine: spin briefly when the cores are ours, sleep when they are not.

PyTorch's CPU kernels run on OpenMP threads. Between two parallel regions a waiting thread either
spins for a while (the runtime's default) or sleeps at once (``OMP_WAIT_POLICY=PASSIVE``):

* on a quiet machine, spinning wins: the next small kernel starts without a wake-up. A 0.8M-parameter
  GPT trained 1.37x slower with every waiter asleep than with the default (issue 28: 1.49x against
  1.09x, against the same plain script);
* when other processes want the same cores (torchrun ranks on one host, parallel tests, a busy
  laptop), a spinning waiter steals the time slice of the thread it is waiting for, and every op
  gets several times slower (measured 5-10x on a 2-core machine): then sleeping wins.

The runtime's default spin is long: libgomp (the OpenMP of PyTorch's Linux wheels) busy-waits
300,000 rounds before it sleeps. That is harmless while the cores stay free, and a trap when the
machine gets busy *after* the start, when the policy can no longer change. So on free cores the
spin is cut to :data:`QUIET_SPINCOUNT` rounds (``GOMP_SPINCOUNT``). Measured on a 2-core Xeon
(``benchmarks/wait_policy.py --conditions quiet,late``: ``train gpt``, 0.8M parameters, 200 steps,
median of 3): quiet 16.8 s with the default spin, 15.8 s with 3,000 rounds, 21.2 s asleep; with one
CPU-bound process starting 4 s into the run, **181 s** with the default spin, 53 s with 30,000
rounds, **28 s** with 3,000, 24 s asleep. Head to head on free cores (5 runs each) the short spin
costs 3% (15.5 against 15.1 s).

:func:`choose_wait_policy` decides from what the operating system says before torch is loaded (the
policy is read once, when the OpenMP runtime starts): the cores this process may use, the other
runnable processes now (the median of three looks, 2 ms apart: a CPU-bound process is runnable
at nearly every look; the one-minute load average is not used, as it still counts a run that has
just ended), and the ranks sharing this host. The user's own
``OMP_WAIT_POLICY`` (or ``GOMP_SPINCOUNT``) always wins. Imports nothing but the standard library.
"""

from __future__ import annotations

import os
import time
from collections.abc import MutableMapping
from dataclasses import dataclass

PASSIVE = "PASSIVE"
QUIET_SPINCOUNT = "3000"  # busy-wait rounds before a waiter sleeps, on free cores (libgomp's default: 300,000)
MARK = "GLASSFORMER_WAIT_POLICY_SET"  # set when glassformer chose the variables below, so a child chooses again


@dataclass(frozen=True)
class Situation:
    """What the machine looks like to a process about to start its OpenMP threads."""

    cpus: int  # cores this process may run on
    runnable_now: int  # other runnable processes at this instant
    local_ranks: int  # processes of this job on this host (torchrun's LOCAL_WORLD_SIZE)
    threads_per_rank: int  # OpenMP threads each of them will start


def current_situation(environ: MutableMapping[str, str] | None = None) -> Situation:
    """Read the situation from the operating system (Linux /proc where it exists)."""
    environ = os.environ if environ is None else environ
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    looks = []
    for i in range(3):
        try:
            with open("/proc/loadavg", encoding="ascii") as f:
                looks.append(max(0, int(f.read().split()[3].split("/")[0]) - 1))  # "R/total"; minus this process
        except (OSError, ValueError, IndexError):
            break
        if i < 2:
            time.sleep(0.002)
    runnable_now = sorted(looks)[len(looks) // 2] if looks else 0
    ranks = _positive_int(environ.get("LOCAL_WORLD_SIZE"), 1)
    threads = _positive_int(environ.get("OMP_NUM_THREADS"), max(1, cpus // ranks))
    return Situation(cpus, runnable_now, ranks, threads)


def _positive_int(text: str | None, default: int) -> int:
    try:
        value = int(text) if text is not None else default
    except ValueError:
        return default
    return value if value > 0 else default


def choose_wait_policy(s: Situation) -> tuple[str | None, str]:
    """``(policy, reason)``: ``"PASSIVE"`` when the threads this job will start, plus what else is
    running, exceed the cores; None (spin briefly, see :data:`QUIET_SPINCOUNT`) when the cores are ours."""
    ours = s.local_ranks * s.threads_per_rank
    if ours > s.cpus:
        return PASSIVE, f"{s.local_ranks} ranks x {s.threads_per_rank} threads share {s.cpus} cores"
    if s.runnable_now + ours > s.cpus:
        return PASSIVE, f"the machine is busy ({s.runnable_now} other runnable processes, {s.cpus} cores)"
    return None, f"the {s.cpus} cores are free"


def configure(environ: MutableMapping[str, str] | None = None) -> str:
    """Set ``OMP_WAIT_POLICY`` (busy or oversubscribed: ``PASSIVE``) or ``GOMP_SPINCOUNT`` (free
    cores: a short spin) for this process from :func:`choose_wait_policy`, unless the user set
    either; returns why. Takes effect only when torch has not been imported yet."""
    environ = os.environ if environ is None else environ
    if environ.pop(MARK, None) == "1":  # a parent glassformer chose them: choose again
        environ.pop("OMP_WAIT_POLICY", None)
        environ.pop("GOMP_SPINCOUNT", None)
    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        if name in environ:
            return f"{name}={environ[name]} (set by you)"
    policy, reason = choose_wait_policy(current_situation(environ))
    if policy is not None:
        environ["OMP_WAIT_POLICY"] = policy
    else:
        environ["GOMP_SPINCOUNT"] = QUIET_SPINCOUNT
    environ[MARK] = "1"
    return (f"OMP_WAIT_POLICY={policy}" if policy else f"GOMP_SPINCOUNT={QUIET_SPINCOUNT} (a short spin)") + f": {reason}"
