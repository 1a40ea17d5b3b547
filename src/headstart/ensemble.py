"""Ensembles of finished runs (``headstart ensemble RUN1 RUN2 ... --method vote|average|stack``).

One saved model over several runs of the same classes, in its own folder, that ``predict``,
``evaluate`` and ``report`` take like any run:

- ``average`` (soft voting): the mean of the members' class probabilities;
- ``vote`` (hard voting): each member's predicted class is one vote; the probabilities are the vote
  shares, with ties broken by the average probability (``0.999 * share + 0.001 * average``, so
  the log loss stays finite);
- ``stack`` (stacked generalisation, Wolpert 1992): a multinomial logistic regression on the members'
  log-probabilities, fit on the **validation** split only (the members did not train on it: their
  predictions there are out-of-sample), its regularisation chosen by cross-validation within it.
  The test split is never seen until the ensemble is scored.

The folder: ``ensemble.json`` (method, classes, each member's run folder and weights hash),
``stacker.safetensors`` (``stack``: weight ``(K, M*K)`` and bias ``(K,)``), and, when data was
given, ``metrics.json`` (the ensemble's and each member's test figures), ``predictions.csv`` and
the report. No pickles. A member whose weights changed since (its hash) is an error on load.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ._io import write_json
from .errors import DataError, HeadstartError, RunFolderError

log = logging.getLogger("headstart")

METHODS = ("average", "vote", "stack")
FORMAT = "headstart-ensemble"


@dataclasses.dataclass
class Ensemble:
    """A combination of :class:`~headstart.model.Model` members over one set of classes."""

    members: list[Any]
    method: str
    classes: list[str]
    weight: np.ndarray | None = None  # stack: (K, M*K)
    bias: np.ndarray | None = None  # stack: (K,)
    info: dict = dataclasses.field(default_factory=dict)
    run_dir: Path | None = None
    metrics: dict = dataclasses.field(default_factory=dict)
    tasks = None  # one head over every class (predict --task is for task-incremental runs)

    @property
    def modality(self) -> str:
        return self.members[0].modality

    def member_proba(self, inputs: Any, **kw: Any) -> np.ndarray:
        """``(M, n, K)``: each member's probabilities, columns in the ensemble's class order."""
        return np.stack([m.predict_proba(inputs, **kw)[:, [m.classes.index(c) for c in self.classes]] for m in self.members])

    def combine(self, p: np.ndarray) -> np.ndarray:
        """The ensemble's ``(n, K)`` probabilities from the members' ``(M, n, K)``."""
        avg = p.mean(0)
        if self.method == "average":
            return avg
        if self.method == "vote":
            votes = np.stack([(p.argmax(2) == k).sum(0) for k in range(p.shape[2])], 1) / p.shape[0]
            return 0.999 * votes + 0.001 * avg
        z = stack_features(p) @ self.weight.T + self.bias
        z = np.exp(z - z.max(1, keepdims=True))
        return z / z.sum(1, keepdims=True)

    def predict_proba(self, inputs: Any, *, task: Any = None, **kw: Any) -> np.ndarray:
        if task is not None:
            raise HeadstartError("An ensemble has one head over all of its classes; --task is for runs continued with --heads separate. Fix: drop --task.")
        return self.combine(self.member_proba(inputs, **kw))

    def predict(self, inputs: Any, **kw: Any) -> list[str]:
        return [self.classes[i] for i in self.predict_proba(inputs, **kw).argmax(1)]

    def evaluate(self, data: Any, **kw: Any) -> dict[str, Any]:
        from .evaluate.metrics import classification_metrics
        from .model import _labeled

        ds = _labeled(data, self.classes)
        return classification_metrics(ds.labels, self.predict_proba(ds, **kw), self.classes)

    # --- persistence -----------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        return {"format": FORMAT, "format_version": 1, "method": self.method, "classes": self.classes, "modality": self.modality,
                "members": [{"run": str(m.run_dir), "weights_sha256": _recorded_hash(m.run_dir)} for m in self.members], "info": self.info}

    def save(self, run_dir: str | Path) -> Path:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        if self.method == "stack":
            import torch
            from safetensors.torch import save_file

            from ._io import atomic_path

            with atomic_path(run_dir / "stacker.safetensors") as tmp:
                save_file({"weight": torch.as_tensor(self.weight, dtype=torch.float32), "bias": torch.as_tensor(self.bias, dtype=torch.float32)}, str(tmp))
        write_json(run_dir / "ensemble.json", self.describe())
        self.run_dir = run_dir
        return run_dir


def stack_features(p: np.ndarray) -> np.ndarray:
    """``(n, M*K)``: the members' log-probabilities side by side (member 0's classes first)."""
    return np.concatenate(list(np.log(np.clip(p, 1e-7, 1.0))), 1)


def is_ensemble(run_dir: str | Path) -> bool:
    return (Path(run_dir) / "ensemble.json").is_file()


def load_ensemble(run_dir: str | Path) -> Ensemble:
    """An ensemble folder, its members loaded from their run folders (each checked against the hash recorded)."""
    import json

    from .model import load

    run_dir = Path(run_dir)
    try:
        meta = json.loads((run_dir / "ensemble.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise RunFolderError(f"{run_dir / 'ensemble.json'} cannot be read ({e}); rebuild the ensemble with 'headstart ensemble'.") from None
    if meta.get("format") != FORMAT:
        raise RunFolderError(f"{run_dir / 'ensemble.json'} is not a headstart ensemble.")
    members = []
    for m in meta["members"]:
        if not Path(m["run"]).is_dir():
            raise RunFolderError(f"Member run {m['run']} of the ensemble {run_dir} is gone. Fix: restore it, or rebuild the ensemble without it.")
        if m.get("weights_sha256") and _recorded_hash(m["run"]) != m["weights_sha256"]:
            raise RunFolderError(f"Member run {m['run']} changed since the ensemble {run_dir} was built (its weights hash differs). "
                                 "Fix: rebuild the ensemble ('headstart ensemble ...').")
        members.append(load(m["run"]))
    weight = bias = None
    if meta["method"] == "stack":
        from safetensors.numpy import load_file

        t = load_file(str(run_dir / "stacker.safetensors"))
        weight, bias = t["weight"].astype(np.float64), t["bias"].astype(np.float64)
    ens = Ensemble(members, meta["method"], list(meta["classes"]), weight, bias, meta.get("info", {}), run_dir)
    if (run_dir / "metrics.json").is_file():
        ens.metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    return ens


def load(run_dir: str | Path) -> Any:
    """``headstart.load``: a run folder as a :class:`~headstart.model.Model`, an ensemble folder as an :class:`Ensemble`
    (both give ``predict``, ``predict_proba`` and ``evaluate``)."""
    from .model import load as load_model

    return load_ensemble(run_dir) if is_ensemble(run_dir) else load_model(run_dir)


def _recorded_hash(run: Any) -> str | None:
    import json

    try:
        return json.loads((Path(run) / "model.json").read_text(encoding="utf-8")).get("weights_sha256")
    except (OSError, ValueError, TypeError):
        return None


def build_ensemble(runs: Sequence[str | Path], *, method: str = "average", data: Any = None, out: str | Path | None = None,
                   save: bool = True, batch_size: int = 64, overwrite: bool = False, cache: bool = False) -> Ensemble:
    """Combine finished runs into one model; with ``data`` (labeled, as the members were split) score it on the test split.

    ``out``: the folder (default ``runs/ensemble-METHOD-<time>``; ``save=False``: none). ``stack`` needs ``data``: its combiner is fit on the validation split's member predictions. The
    split is the members' own (their recorded validation/test fractions and seed); members whose
    splits of ``data`` differ are an error, since one member's training items would be another's test items.
    ``cache``: the members' features through the on-disk feature cache (keyed by each backbone's weights, so
    a fine-tuned member has its own entries), for benchmarks that combine the same members many ways.
    """
    from .model import load

    if method not in METHODS:
        raise HeadstartError(f"Unknown ensemble method {method!r}; the methods are {', '.join(METHODS)}.")
    if len(runs) < 2:
        raise HeadstartError(f"An ensemble combines at least 2 runs; got {len(runs)}. Fix: give two or more run folders.")
    if save:
        from .run_folder import check_run_dir

        check_run_dir(out, overwrite=overwrite)  # before the work
    members = [load(r) for r in runs]
    classes = list(members[0].classes)
    for r, m in zip(runs, members):
        if set(m.classes) != set(classes):
            raise DataError(f"Run {r} has classes {m.classes} and run {runs[0]} has {classes}; ensemble members must classify the same classes.")
        if m.modality != members[0].modality:
            raise DataError(f"Run {r} classifies {m.modality}s and run {runs[0]} {members[0].modality}s; ensemble members must take the same inputs.")
    if method == "stack" and data is None:
        raise HeadstartError("Stacking fits its combiner on validation predictions, and no data was given. Fix: pass --data DATA "
                             "(the data the members were trained on), or use --method average|vote.")
    ens = Ensemble(members, method, classes, info={"members": [str(Path(r).resolve()) for r in runs]})
    for m, r in zip(members, runs):
        m.run_dir = Path(r).resolve()
    splits = _member_splits(runs, data) if data is not None else None
    if splits is not None and method == "stack":
        if splits.val is None or len(splits.val) < 2 * len(classes):
            raise DataError("Stacking fits on the validation split, which is missing or has fewer than 2 items per class. "
                            "Fix: give data with a val/ folder or a larger validation fraction, or use --method average.")
        ens.weight, ens.bias, ens.info["stacker"] = fit_stacker(ens.member_proba(splits.val, batch_size=batch_size, cache=cache), splits.val.labels, len(classes))
    run_dir = None
    if save:
        from .run_folder import new_run_dir

        run_dir = new_run_dir(out, name=f"ensemble-{method}", overwrite=overwrite)
        ens.save(run_dir)
    if splits is not None and splits.test is not None and len(splits.test):
        _score(ens, splits, run_dir, batch_size, cache)
    return ens


def _member_splits(runs: Sequence[str | Path], data: Any) -> Any:
    """The split of ``data`` the members were trained with (each member's recorded fractions and seed), the same for all."""
    from .data import load_splits
    from .run_folder import read_config

    splits, first = None, None
    for r in runs:
        s = read_config(Path(r) / "config.yaml")[1] if (Path(r) / "config.yaml").is_file() else None
        kw = dict(val=s.data.val, test=s.data.test, seed=s.training.seed, text_col=s.data.text_col, label_col=s.data.label_col,
                  classes=s.data.classes if str(data).lower().endswith(".npz") else None) if s else {}
        sp = load_splits(data, **kw)
        names = [_fingerprint(ds) for ds in (sp.train, sp.test)]
        if first is None:
            splits, first = sp, (r, names)
        elif names != first[1]:
            raise DataError(f"Runs {first[0]} and {r} split {getattr(data, 'source', data)} differently (other seeds or fractions): items one "
                            "trained on would be scored as the other's test items. Fix: give data with fixed train/ val/ test/ folders, or "
                            "combine runs fit with the same --seed, --val and --test.")
    return splits


def _fingerprint(ds: Any) -> str:
    """Which items a split holds: their file names, or a hash of the arrays."""
    from ._io import sha256_bytes

    if ds is None:
        return ""
    if ds.in_memory:
        return sha256_bytes(np.ascontiguousarray(ds.items).tobytes() + np.asarray(ds.labels).tobytes())
    return sha256_bytes("\n".join(map(str, ds.items)).encode())


def fit_stacker(p_val: np.ndarray, y_val: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """A multinomial logistic regression on the members' validation log-probabilities; C by cross-validation on them alone."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.model_selection import StratifiedKFold

    x = stack_features(p_val)
    y = np.asarray(y_val)
    folds = int(min(5, np.bincount(y, minlength=num_classes)[np.unique(y)].min()))
    c = 1.0
    if folds >= 2:  # C by the cross-validated log loss within the validation split
        cv = list(StratifiedKFold(folds, shuffle=True, random_state=0).split(x, y))
        labels = np.unique(y)

        def cv_loss(c: float) -> float:
            return float(np.mean([log_loss(y[te], LogisticRegression(C=c, max_iter=2000).fit(x[tr], y[tr]).predict_proba(x[te]), labels=labels)
                                  for tr, te in cv]))

        c = float(min(np.logspace(-3, 2, 11), key=cv_loss))
    clf = LogisticRegression(C=c, max_iter=2000).fit(x, y)
    weight, bias = np.zeros((num_classes, x.shape[1])), np.full(num_classes, -30.0)  # a class absent from validation: never predicted
    rows = clf.classes_
    if len(rows) == 2 and clf.coef_.shape[0] == 1:  # sklearn's binary form: one row for class 1
        weight[rows[1]], bias[rows[1]] = clf.coef_[0], clf.intercept_[0]
        weight[rows[0]], bias[rows[0]] = 0.0, 0.0
    else:
        weight[rows], bias[rows] = clf.coef_, clf.intercept_
    return weight, bias, {"C": c, "cv_folds": folds, "fit_on": "validation split", "n": int(len(y))}


def _score(ens: Ensemble, splits: Any, run_dir: Path | None, batch_size: int, cache: bool = False) -> None:
    from .evaluate.metrics import classification_metrics

    test = splits.test
    p = ens.member_proba(test, batch_size=batch_size, cache=cache)
    proba = ens.combine(p)
    members = [{"run": str(m.run_dir), **{k: classification_metrics(test.labels, pm, ens.classes)[k] for k in ("accuracy", "log_loss", "macro_f1")}}
               for m, pm in zip(ens.members, p)]
    best = max(members, key=lambda r: (r["accuracy"], -r["log_loss"]))
    ens.metrics = {"strategy": f"ensemble:{ens.method}", "classes": ens.classes, "test": classification_metrics(test.labels, proba, ens.classes),
                   "ensemble": {"method": ens.method, "members": members, "best_member": best["run"],
                                **({"stacker": ens.info["stacker"]} if "stacker" in ens.info else {})},
                   "counts": splits.summary()}
    e = ens.metrics["ensemble"]
    e["gain_over_best_member"] = ens.metrics["test"]["accuracy"] - best["accuracy"]
    e["log_loss_change_vs_best_member"] = ens.metrics["test"]["log_loss"] - best["log_loss"]
    if run_dir is None:
        return
    from .evaluate.report import write_report
    from .run_folder import write_config, write_metrics, write_predictions

    write_config(run_dir, {"ensemble": ens.describe(), "classes": ens.classes, "data": str(test.source), "split_sizes": {k: sum(v.values()) for k, v in splits.summary().items()}})
    write_metrics(run_dir, ens.metrics)
    write_predictions(run_dir, [test.item_name(i) for i in range(len(test))], test.labels, proba, ens.classes, "test")
    try:
        write_report(run_dir)
    except Exception as e:  # noqa: BLE001  (a report is never worth losing the ensemble)
        log.warning("the ensemble's report failed (%s); 'headstart report %s' retries", e, run_dir)
