"""Shared test set-up. Like the CLI, the test process owns its threads: let idle OpenMP threads sleep."""

import os
import subprocess
import sys

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run ``headstart.cli.main`` in this process (cheaper than a subprocess): ``(code, stdout, stderr)``."""
    import logging

    from headstart.cli import main

    # main() sets up logging for the process it owns: put this process's logging back afterwards.
    root, lib = logging.getLogger(), logging.getLogger("headstart")
    handlers, root_level, lib_level = root.handlers[:], root.level, lib.level

    def run(*args) -> subprocess.CompletedProcess:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["headstart", *map(str, args)])
        with pytest.raises(SystemExit) as e:
            main()
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, e.value.code or 0, out, err)

    yield run
    root.handlers[:] = handlers
    root.setLevel(root_level)
    lib.setLevel(lib_level)
