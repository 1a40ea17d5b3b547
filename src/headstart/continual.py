"""Continuing a finished run on new classes (``fit NEW_DATA --from RUN [--keep-old METHOD]``).

Class-incremental learning: one model over the old and the new classes. The new run starts from
the old run's backbone and head; the head grows by the new data's classes (the old classes keep
their rows, first; a new class with an old class's name is the same class, merged with a warning).
The new rows start from a linear probe on the old backbone's features of the new classes, folded
into the old head's standardisation, so the starting model predicts the old classes exactly as
the old run did. Training data is the new task's; the old task's data (``--old-data``, or the data
the old run recorded) is split as the old run split it: its validation items join the new ones
(so the weights kept are judged on both tasks) and its test items the new test items; rehearsal
and EWC's Fisher use its training items. The methods that protect the old task are in
:mod:`headstart.methods.forgetting`.

``metrics.json`` ``continual``: the old task's test accuracy before (the old run) and after (over
all classes, and within the old classes), the new task's, the average over all test items,
forgetting (before - after) and backward transfer (after - before). ``config.yaml`` ``parent``
and ``model.json`` ``info.parent`` record the lineage (the old run's folder, weights hash, classes).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np

from .data import LabeledDataset, Splits, TorchDataset
from .errors import DataError, HeadstartError

log = logging.getLogger("headstart")

#: Strategies a continuation can run: ``auto`` would fit a fresh probe over every class, throwing the old head away.
CONTINUAL_STRATEGIES = ("linear", "finetune", "progressive")


@dataclasses.dataclass
class Continuation:
    """The old run a fit continues, and the old task's data and figures."""

    run_dir: Path
    old: Any  # the old run's Model, never trained here
    settings: Any  # the old run's Settings
    data: Any  # the old run's recorded data (None: in memory)
    classes: list[str] = dataclasses.field(default_factory=list)  # joint: old classes first
    merged: list[str] = dataclasses.field(default_factory=list)
    old_splits: Splits | None = None
    n_new_test: int = 0
    before: dict | None = None  # the old run's metrics on the old test split
    heads: str = "joint"  # joint (class-incremental) | separate (task-incremental)
    new_source: str | None = None

    @property
    def old_classes(self) -> list[str]:
        return list(self.old.classes)

    @property
    def backbone(self) -> str:
        return f"run:{self.run_dir}"

    @classmethod
    def open(cls, s: Any, method: Any) -> "Continuation":
        """Load ``s.data.from_run`` and check that the rest of ``s`` can continue it."""
        from .model import load

        run = Path(s.data.from_run).expanduser().resolve()
        old = load(run)  # a missing folder, an unfinished run, a damaged file: named errors
        data, settings = _read_parent_config(run)
        given = s.backbone.name
        if given is not None and given != f"run:{run}" and Path(given.removeprefix("run:")).expanduser().resolve() != run:
            raise HeadstartError(f"--from continues the old run's own backbone ({old.info.get('backbone', old.backbone.describe()['spec']['name'])}); "
                                 f"--backbone {given} is another network. Fix: drop --backbone (or start a new run without --from).")
        if s.training.strategy not in CONTINUAL_STRATEGIES:
            raise HeadstartError(f"--from runs with --strategy {' | '.join(CONTINUAL_STRATEGIES)}; got {s.training.strategy!r} "
                                 "('auto' would fit a new head over every class and lose the old one). Fix: --strategy finetune.")
        if old.modality != "image":
            raise HeadstartError(f"--from continues image runs; {run} is a {old.modality} run. Fix: continue it with a new text run instead.")
        return cls(run, old, settings, data, heads=s.data.heads)

    # ------------------------------------------------------------------ data
    def join(self, splits: Splits, s: Any) -> Splits:
        """The new splits over the joint classes, the old task's validation and test items added."""
        if splits.train.modality != self.old.modality:
            raise HeadstartError(f"The new data holds {splits.train.modality}s and the --from run {self.run_dir} classifies {self.old.modality}s. "
                                 "Fix: continue it with data of the same kind.")
        old_classes = self.old_classes
        new = [c for c in splits.classes if c not in old_classes]
        self.merged = [c for c in splits.classes if c in old_classes]
        if not new:
            raise DataError(f"The new data's classes {splits.classes} are all classes the --from run knows already; there is nothing new "
                            "to learn. Fix: give data of new classes (fine-tune the old run with --backbone run:RUN to improve it instead).")
        if self.merged and self.heads == "separate":
            raise DataError(f"--heads separate gives each task its own classes, and class(es) {self.merged} of the new data are classes of "
                            "the --from run's task too. Fix: rename those class folders, or use --heads joint (one head: the classes merge).")
        if self.merged:
            log.warning("class(es) %s of the new data have the names of classes of the --from run: they are treated as the same class "
                        "(its old head row trains on) and merged; rename the folders if they mean something else", self.merged)
        self.classes = old_classes + new
        self.new_source = splits.train.source
        joint = [_reindex(ds, self.classes) for ds in (splits.train, splits.val, splits.test)]
        self.old_splits = self._load_old(s)
        self.n_new_test = len(joint[2]) if joint[2] is not None else 0
        if self.old_splits is None:
            return Splits(*joint)
        o = [_reindex(ds, self.classes) if ds is not None else None for ds in (self.old_splits.val, self.old_splits.test)]
        return Splits(joint[0], _concat(joint[1], o[0]), _concat(joint[2], o[1]))

    def _load_old(self, s: Any) -> Splits | None:
        from .data import load_splits

        source = s.data.old_data if s.data.old_data is not None else self.data
        if source is None:
            log.warning("the old task's data is unknown (the --from run was trained on in-memory data and --old-data is not given): "
                        "the old task is not scored, and only methods that need no old data can run")
            return None
        ps = self.settings.data
        try:
            old = load_splits(source, val=ps.val, test=ps.test, seed=self.settings.training.seed, strict=s.data.strict,
                              text_col=ps.text_col, label_col=ps.label_col, classes=ps.classes if s.data.old_data is None else None)
        except (OSError, DataError) as e:
            raise DataError(f"Cannot read the old task's data {source!r} ({e}). Fix: pass --old-data with the data the --from run was trained on.") from None
        unknown = [c for c in old.classes if c not in self.old_classes]
        if unknown:
            raise DataError(f"The old task's data {source!r} has class(es) {unknown} that the --from run does not know (its classes: "
                            f"{self.old_classes}). Fix: pass --old-data with the data that run was trained on.")
        return Splits(*[_reindex(ds, self.old_classes) if ds is not None else None for ds in (old.train, old.val, old.test)])

    def input_size(self) -> int:
        return int(self.old.backbone.preprocessing.input_size[0])

    # ------------------------------------------------------------------ the starting head and the methods
    def old_task(self, method: Any, bb: Any, splits: Splits, s: Any) -> None:
        """Score the old run on the old test split, and hand a continual ``method`` the old task."""
        from .evaluate.metrics import classification_metrics
        from .methods import OldTask

        o = self.old_splits
        if o is not None and o.test is not None and len(o.test):
            proba = self.old.predict_proba(o.test, batch_size=s.training.batch_size, runtime=s.backbone.runtime, cache=s.backbone.cache)
            self.before = classification_metrics(o.test.labels, proba, self.old_classes)
        if method is None or not method.continual:
            return
        if method.needs_old_data and (o is None or not len(o.train)):
            raise HeadstartError(f"Method {method.name!r} trains on the old task's items, and neither --old-data nor the --from run's "
                                 "config.yaml gives them (it was trained on in-memory data). Fix: pass --old-data DATA (Python: old_data=...).")
        tf = bb.preprocessing.transform()
        method.continue_from(OldTask(copy.deepcopy(self.old.backbone), copy.deepcopy(self.old.head), self.old_classes,
                                     o.train if o is not None else None, TorchDataset(o.train, tf) if o is not None else None,
                                     TorchDataset(splits.train, tf), s.training.seed))

    def head(self, bb: Any, splits: Splits, s: Any, cw: Any = None) -> Any:
        """The starting head over the joint classes: the old head's rows, then the new classes' rows from a
        probe on ``bb``'s (cached) features of the new training items (folded into the old standardisation)."""
        import torch

        from .features import extract_features
        from .heads import create_head, fit_head

        old_head, k_old, k = self.old.head, len(self.old_classes), len(self.classes)
        cfg = {**old_head.config(), "num_classes": k}
        head = create_head(**cfg)
        state = {n: v.clone() for n, v in old_head.state_dict().items()}
        last_w, last_b = ("fc.weight", "fc.bias") if cfg["kind"] == "linear" else ("fc2.weight", "fc2.bias")
        w = torch.zeros(k, state[last_w].shape[1])
        b = torch.full((k,), float(state[last_b].mean()))  # new rows: an average old bias until trained (mlp; or too few classes to probe)
        w[:k_old], b[:k_old] = state[last_w], state[last_b]
        new_idx = np.flatnonzero(splits.train.labels >= k_old)
        new_labels = splits.train.labels[new_idx] - k_old
        if cfg["kind"] == "linear" and len(np.unique(new_labels)) >= 2:
            x = extract_features(bb, splits.train.subset(new_idx), batch_size=s.training.batch_size, runtime=s.backbone.runtime, cache=s.backbone.cache)
            probe, _ = fit_head("linear", x, new_labels, None, None, num_classes=k - k_old, seed=s.training.seed)
            # probe: W (x - mu_n) / sd_n + c; in the old standardisation z = (x - mu_o) / sd_o: W sd_o / sd_n z + W (mu_o - mu_n) / sd_n + c
            mu_o, sd_o, mu_n, sd_n = state["norm.mean"], state["norm.std"], probe.norm.mean, probe.norm.std
            pw, pb = probe.fc.weight.detach(), probe.fc.bias.detach()
            w[k_old:], b[k_old:] = pw * (sd_o / sd_n), pb + (pw * ((mu_o - mu_n) / sd_n)).sum(1)
        state[last_w], state[last_b] = w, b
        head.load_state_dict(state)
        return head.train()

    # ------------------------------------------------------------------ measures and lineage
    def measures(self, y: np.ndarray, proba: np.ndarray | None) -> dict[str, Any]:
        """``metrics["continual"]`` from the labels and probabilities of the joint test split (new items first)."""
        k_old = len(self.old_classes)
        out: dict[str, Any] = {"parent": str(self.run_dir), "heads": self.heads, "old_classes": self.old_classes, "new_classes": self.classes[k_old:],
                               "merged_classes": self.merged}
        if proba is None:
            return out
        pred = proba.argmax(1)
        new, old = slice(0, self.n_new_test), slice(self.n_new_test, len(y))
        acc = lambda sl: float((pred[sl] == y[sl]).mean()) if len(y[sl]) else None  # noqa: E731
        within = lambda sl, cols: float((cols[proba[sl][:, cols].argmax(1)] == y[sl]).mean()) if len(y[sl]) else None  # noqa: E731
        out.update(new_after=acc(new), new_after_within_task=within(new, np.flatnonzero(np.isin(np.arange(len(self.classes)), np.unique(y[new])))),
                   new_test_n=self.n_new_test, average_after=acc(slice(0, len(y))))
        if self.before is not None:
            before, after = self.before["accuracy"], acc(old)
            out.update(old_before=before, old_after=after, old_after_within_task=within(old, np.arange(k_old)), old_test_n=len(y) - self.n_new_test,
                       forgetting=before - after, backward_transfer=after - before)
        else:
            out["note"] = "the old task's data was not given (--old-data): old-task accuracy and forgetting are not measured"
        return out

    def tasks(self) -> list[dict] | None:
        """Task-incremental (``--heads separate``): the old run's tasks (itself one task, unless it was
        task-incremental too), then the new data's classes as one more task; ``None`` with one joint head."""
        if self.heads != "separate":
            return None
        old = self.old.tasks or [{"name": "task0", "classes": self.old_classes, "source": self.old.info.get("trained_on")}]
        return [*old, {"name": f"task{len(old)}", "classes": self.classes[len(self.old_classes):], "source": self.new_source}]

    def task_of_class(self) -> list[int] | None:
        """Each joint class's task index (the loop's ``task_of_class``), or ``None`` with one joint head."""
        tasks = self.tasks()
        return None if tasks is None else [next(i for i, t in enumerate(tasks) if c in t["classes"]) for c in self.classes]

    def record(self, config: dict, info: dict, method: Any) -> None:
        """The lineage into ``config`` (``parent``) and the model's ``info`` (``parent``; ``tasks`` when task-incremental)."""
        config["parent"] = info["parent"] = self.lineage(method)
        if self.tasks() is not None:
            config["tasks"] = info["tasks"] = self.tasks()

    def lineage(self, method: Any) -> dict[str, Any]:
        meta = self.old.describe()
        return {"heads": self.heads, "run": str(self.run_dir), "weights_sha256": _weights_hash(self.run_dir), "classes": self.old_classes,
                "backbone": meta["backbone"]["spec"]["name"], "method": method.name if method is not None else "naive",
                "old_data": None if self.old_splits is None else self.old_splits.train.source}


def _read_parent_config(run: Path) -> tuple[Any, Any]:
    from .run_folder import read_config

    if not (run / "config.yaml").is_file():
        from .settings import Settings

        return None, Settings()
    return read_config(run / "config.yaml")


def _weights_hash(run: Path) -> str | None:
    import json

    try:
        return json.loads((run / "model.json").read_text(encoding="utf-8")).get("weights_sha256")
    except (OSError, ValueError):
        return None


def _reindex(ds: LabeledDataset | None, classes: list[str]) -> LabeledDataset | None:
    if ds is None:
        return None
    remap = np.asarray([classes.index(c) for c in ds.classes], dtype=np.int64)
    return LabeledDataset(ds.items, remap[ds.labels] if len(ds) else ds.labels, list(classes), ds.modality, ds.source, list(ds.problems))


def _concat(a: LabeledDataset | None, b: LabeledDataset | None) -> LabeledDataset | None:
    """``a`` then ``b`` (same classes): arrays of one image shape, or lists of files."""
    if a is None or not len(a):
        return b
    if b is None or not len(b):
        return a
    if a.in_memory and b.in_memory and a.items.shape[1:] == b.items.shape[1:] and a.items.dtype == b.items.dtype:
        items: Any = np.concatenate([a.items, b.items])
    elif not a.in_memory and not b.in_memory:
        items = list(a.items) + list(b.items)
    else:
        raise DataError(f"The new data ({a.source}) and the old task's data ({b.source}) are stored differently (files vs arrays, or "
                        "arrays of other image sizes), and are scored together. Fix: give both as image folders (or as arrays of one size).")
    return LabeledDataset(items, np.concatenate([a.labels, b.labels]), list(a.classes), a.modality, f"{a.source} + {b.source}", [*a.problems, *b.problems])
