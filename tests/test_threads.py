"""The OpenMP wait policy follows the situation: default spin when the cores are ours, PASSIVE when
they are oversubscribed, and the user's own setting always wins."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import SRC
from glassformer.threads import PASSIVE, Situation, choose_wait_policy, configure


def test_quiet_cores_keep_the_runtime_default():
    assert choose_wait_policy(Situation(cpus=2, runnable_now=0, local_ranks=1, threads_per_rank=2))[0] is None
    assert choose_wait_policy(Situation(cpus=8, runnable_now=3, local_ranks=1, threads_per_rank=4))[0] is None


@pytest.mark.parametrize(
    "situation, why",
    [
        (Situation(cpus=2, runnable_now=1, local_ranks=1, threads_per_rank=2), "busy"),  # one other job on 2 cores
        (Situation(cpus=2, runnable_now=0, local_ranks=2, threads_per_rank=2), "ranks"),  # torchrun, 2 ranks x 2 threads
        (Situation(cpus=16, runnable_now=15, local_ranks=1, threads_per_rank=4), "busy"),
    ],
)
def test_oversubscribed_cores_sleep(situation, why):
    policy, reason = choose_wait_policy(situation)
    assert policy == PASSIVE and why in reason


def test_the_users_setting_wins_and_a_parents_choice_is_made_again():
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert "set by you" in configure(env) and env["OMP_WAIT_POLICY"] == "ACTIVE"
    env = {"OMP_WAIT_POLICY": PASSIVE, "GLASSFORMER_WAIT_POLICY_SET": "1", "LOCAL_WORLD_SIZE": "64", "OMP_NUM_THREADS": "4"}
    configure(env)  # a parent glassformer's choice is not the user's: decided again (64 x 4 threads: passive)
    assert env["OMP_WAIT_POLICY"] == PASSIVE and env["GLASSFORMER_WAIT_POLICY_SET"] == "1"


def test_free_cores_spin_briefly_and_busy_ones_sleep(monkeypatch):
    """On free cores the busy-wait is cut short (GOMP_SPINCOUNT): the default 300,000 rounds cost a run 10x
    when the machine got busy after the start (benchmarks/wait_policy.py --conditions late)."""
    from glassformer import threads

    monkeypatch.setattr(threads, "current_situation", lambda env: Situation(2, 0, 1, 2))
    env: dict[str, str] = {}
    assert "short spin" in configure(env)
    assert env == {"GOMP_SPINCOUNT": threads.QUIET_SPINCOUNT, "GLASSFORMER_WAIT_POLICY_SET": "1"}
    monkeypatch.setattr(threads, "current_situation", lambda env: Situation(2, 3, 1, 2))
    configure(env)  # a child of that process (its environment inherited) decides again: now the machine is busy
    assert env == {"OMP_WAIT_POLICY": PASSIVE, "GLASSFORMER_WAIT_POLICY_SET": "1"}
    env = {"GOMP_SPINCOUNT": "INFINITE"}  # the user's spin count wins, and nothing else is set beside it
    assert "set by you" in configure(env) and env == {"GOMP_SPINCOUNT": "INFINITE"}


def policy_in_child(extra_env: dict[str, str]) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GLASSFORMER_WAIT_POLICY_SET",
                                                             "GOMP_SPINCOUNT")}
    env.update(PYTHONPATH=SRC, **extra_env)
    code = "import os, glassformer; print(os.environ.get('OMP_WAIT_POLICY', 'default'))"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True).stdout.strip()


def test_a_process_started_beside_cpu_bound_jobs_chooses_passive():
    cpus = len(os.sched_getaffinity(0))
    burners = [subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 20: pass"])
               for _ in range(cpus)]
    try:
        assert policy_in_child({}) == PASSIVE
    finally:
        for p in burners:
            p.kill()
            p.wait()
    assert policy_in_child({"OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"  # the user's choice, busy or not
