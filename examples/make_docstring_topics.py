"""Write a real labeled text set built offline from installed packages: which library a docstring comes from.

Texts are the first paragraphs of the docstrings of public functions, classes and methods; the label
is the library (a topic: arrays, images, e-mail/HTTP, terminal output, async I/O, ...). Real English
written by different authors about different subjects, available on any machine with these
packages: a small topic-classification set for headstart's text path.

    python examples/make_docstring_topics.py data/docstring_topics.csv --per-class 150

The CSV has columns ``text,label``; rows are shuffled with a fixed seed; duplicates are dropped.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import importlib
import inspect
import pkgutil
import random
import re
import warnings
from pathlib import Path

#: label -> packages (or modules) whose docstrings it gets.
TOPICS = {
    "numpy": ["numpy"],
    "imaging": ["PIL"],
    "email_http": ["email", "http", "urllib", "smtplib", "imaplib", "mailbox"],
    "terminal": ["rich"],
    "asyncio": ["asyncio", "concurrent.futures", "threading", "multiprocessing"],
}


def _modules(name: str):
    try:
        mod = importlib.import_module(name)
    except Exception:  # noqa: BLE001 - optional parts of a package
        return
    yield mod
    for info in pkgutil.walk_packages(getattr(mod, "__path__", []), prefix=name + "."):
        if any(p.startswith("_") or p in ("tests", "testing", "test") for p in info.name.split(".")[1:]):
            continue
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # some modules print on import
                warnings.simplefilter("ignore")
                mod = importlib.import_module(info.name)
        except Exception:  # noqa: BLE001
            continue
        yield mod


def _first_paragraph(doc: str | None) -> str | None:
    if not doc:
        return None
    para = inspect.cleandoc(doc).split("\n\n")[0]
    text = re.sub(r"\s+", " ", para).strip()
    if not 40 <= len(text) <= 400 or text.count(">>>") or text.startswith(("..", "Parameters", "Return")):
        return None
    return text


def docstrings(packages: list[str]) -> list[str]:
    seen: dict[str, None] = {}
    for pkg in packages:
        for mod in _modules(pkg):
            for name, obj in vars(mod).items():
                if name.startswith("_") or getattr(obj, "__module__", "") != mod.__name__:
                    continue
                members = [obj]
                if inspect.isclass(obj):
                    members += [m for n, m in vars(obj).items() if not n.startswith("_") and callable(m)]
                for m in members:
                    text = _first_paragraph(getattr(m, "__doc__", None))
                    if text:
                        seen.setdefault(text)
    return list(seen)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--per-class", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    rows = []
    for label, packages in TOPICS.items():
        texts = sorted(docstrings(packages))
        rng.shuffle(texts)
        rows += [(t, label) for t in texts[: args.per_class]]
        print(f"{label}: {min(len(texts), args.per_class)} of {len(texts)} docstrings")
    rng.shuffle(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        w.writerows(rows)
    print(f"wrote {len(rows)} rows to {args.out}")


if __name__ == "__main__":
    main()
