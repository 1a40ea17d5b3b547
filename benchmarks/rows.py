"""The rows of a benchmark: printed as JSON lines as they come, kept in ``--json FILE`` after each one
(a run stopped part-way keeps what it measured), and tabled again, without running, by ``--merge``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--json", default=None, help="also write the rows here (after each row)")
    ap.add_argument("--merge", default=None, help="comma-separated JSON files of rows (from --json): print their table, run nothing")


def merged(args: argparse.Namespace) -> list[dict] | None:
    """The rows of ``--merge``'s files, or ``None`` when it is not given."""
    if not args.merge:
        return None
    return [r for f in args.merge.split(",") for r in json.loads(Path(f).read_text())]


class Rows(list):
    def __init__(self, path: str | None = None) -> None:
        super().__init__()
        self.path = Path(path) if path else None

    def add(self, row: dict) -> None:
        self.append(row)
        print(json.dumps(row), flush=True)
        if self.path is not None:
            self.path.write_text(json.dumps(list(self), indent=1))
