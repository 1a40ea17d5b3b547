"""Shared test set-up. Like the CLI, the test process owns its threads: let idle OpenMP threads sleep."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
