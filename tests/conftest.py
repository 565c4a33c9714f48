"""Test-session settings that must be in place before torch is imported."""

import os

# Spinning OpenMP waiters make tiny-model ops 5-10x slower when other processes share the cores;
# passive waiting costs little on an idle machine (see glassformer/__init__.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
