"""Rank candidate backbones for a dataset by transferability scores, before any training.

``rank_backbones(data, backbones=[...])`` extracts (or reuses cached) features of the training
split for each backbone, scores them (LogME by default; LEEP/NCE through the backbone's source
classifier) and returns a :class:`Ranking`. With ``validate=True`` it also measures what the
scores predict, the k-fold cross-validated accuracy of a linear probe (scikit-learn's
``LogisticRegression`` on standardised features), and the Kendall rank correlation between each
score and that accuracy. ``choose_backbone`` is the same ranking used by ``fit(backbone="auto")``.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import BackboneError, HeadstartError
from .registry import ScoreInfo, get_score, list_scores

log = logging.getLogger("headstart")

#: Candidates of ``fit(backbone="auto")`` when none are given: the pretrained backbones that work offline.
DEFAULT_CANDIDATES: tuple[str, ...] = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
#: Text data: the offline encoders, and the bag-of-words baseline, which every text ``auto`` ranks (issue 17:
#: the encoder must beat it to be chosen). LogME on Rotten Tomatoes, 16 and 64 texts per class (seed 0):
#: minilm_l6 > glove50 > minilm_l3_onnx > tfidf, the order of their probes' test accuracy at those sizes.
DEFAULT_TEXT_CANDIDATES: tuple[str, ...] = ("minilm_l6", "minilm_l3_onnx", "glove50", "tfidf")
ALWAYS_TEXT_CANDIDATE = "tfidf"


@dataclass
class BackboneScore:
    """One backbone's row of a ranking (``rank`` 1 is the best; unscored rows come last)."""

    backbone: str
    score: float | None  # the ranking score (``score_name``)
    score_name: str
    dim: int
    extract_s: float
    score_s: float  # seconds for the ranking score
    rank: int = 0
    scores: dict[str, float | None] = field(default_factory=dict)  # every score computed
    score_times_s: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)  # why a score is missing
    cv_accuracy: float | None = None
    cv_std: float | None = None

    def summary(self) -> dict[str, Any]:
        """The flat record stored in a run's ``metrics.json["backbone_ranking"]``."""
        d = {k: getattr(self, k) for k in ("backbone", "score", "score_name", "dim", "extract_s", "score_s", "rank")}
        if len(self.scores) > 1:
            d["scores"] = dict(self.scores)
        if self.cv_accuracy is not None:
            d["cv_accuracy"] = self.cv_accuracy
        if self.notes:
            d["notes"] = dict(self.notes)
        return d


@dataclass
class Ranking:
    """Backbones ranked by ``score_name``; ``kendall`` maps each score to ``{"tau", "p"}`` when validated."""

    rows: list[BackboneScore]
    score_name: str
    scores: list[str]
    n_samples: int
    n_classes: int
    folds: int | None = None
    kendall: dict[str, dict[str, float | None]] | None = None
    best_backbone: Any = field(default=None, repr=False, compare=False)  # the top instance (not serialised)

    @property
    def best(self) -> str:
        return self.rows[0].backbone

    def to_dicts(self) -> list[dict[str, Any]]:
        return [r.summary() for r in self.rows]

    def to_dict(self) -> dict[str, Any]:
        return {
            "score_name": self.score_name,
            "scores": list(self.scores),
            "n_samples": self.n_samples,
            "n_classes": self.n_classes,
            "folds": self.folds,
            "kendall": self.kendall,
            "rows": [asdict(r) for r in self.rows],
        }

    def to_csv(self) -> str:
        buf = io.StringIO()
        cols = ["rank", "backbone", "score_name", "score", "dim", "extract_s", "score_s", *self.scores, "cv_accuracy", "cv_std"]
        w = csv.writer(buf)
        w.writerow(cols)
        for r in self.rows:
            w.writerow([r.rank, r.backbone, r.score_name, r.score, r.dim, r.extract_s, r.score_s, *[r.scores.get(s) for s in self.scores], r.cv_accuracy, r.cv_std])
        return buf.getvalue()

    def write(self, path: str | Path) -> Path:
        """Write the ranking as ``.csv`` or (any other suffix) JSON; atomic."""
        from .._io import write_json, write_text

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() == ".csv":
            write_text(path, self.to_csv())
        else:
            write_json(path, self.to_dict())
        return path


def resolve_scores(score: str) -> tuple[str, list[str]]:
    """``(ranking score, scores to compute)`` for a ``score`` argument (a registered name or ``"all"``)."""
    if score == "all":
        names = list_scores()
        return ("logme" if "logme" in names else names[0]), names
    get_score(score)  # validates the name
    return score, [score]


def _split_names(backbones: str | Sequence[str]) -> list[str]:
    names = [b.strip() for b in backbones.split(",")] if isinstance(backbones, str) else [str(b).strip() for b in backbones]
    names = list(dict.fromkeys(n for n in names if n))  # de-duplicated, order kept
    if not names:
        raise HeadstartError("No backbones to rank: pass a comma-separated list, e.g. --backbones efficientnet_lite0,efficientnet_lite1.")
    return names


def source_proba(backbone_name: str, backbone: Any, features: np.ndarray) -> np.ndarray | None:
    """The source classifier's class probabilities on pooled ``features`` (n, d) -> (n, Z), or None.

    The source classifier is the backbone's own (``Backbone.source_head()``: e.g. ImageNet's 1000
    classes, which takes the pooled features) or, for ``run:<folder>``, that run's trained head.
    """
    import torch

    head = backbone.source_head()
    if head is None and backbone_name.startswith("run:"):
        from ..model import load

        head = load(backbone_name[len("run:"):]).head
    if head is None:
        return None
    was_training = head.training
    head.eval()
    with torch.inference_mode():
        logits = head(torch.as_tensor(features, dtype=torch.float32))
        proba = torch.softmax(logits.double(), dim=1).numpy()
    head.train(was_training)
    return proba


def _score_one(info: ScoreInfo, feats: np.ndarray, labels: np.ndarray, proba: np.ndarray | None) -> float:
    if info.needs == "features":
        return info.fn(feats, labels)
    if info.needs == "source_proba":
        return info.fn(proba, labels)
    return info.fn(proba.argmax(axis=1), labels)


def cv_accuracy(features: np.ndarray, labels: np.ndarray, *, folds: int = 5, seed: int = 0) -> tuple[float, float]:
    """Mean and std of the stratified k-fold accuracy of a linear probe (standardise + LogisticRegression, C=1)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    k = int(min(folds, np.bincount(np.unique(labels, return_inverse=True)[1].ravel()).min()))
    if k < 2:
        raise HeadstartError(f"Cross-validation needs at least 2 samples of every class in the training split; the smallest class has {k}. Add data or drop --validate.")
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
    acc = cross_val_score(probe, features, labels, cv=StratifiedKFold(k, shuffle=True, random_state=seed), scoring="accuracy")
    return float(acc.mean()), float(acc.std())


def _kendall(rows: list[BackboneScore], names: list[str]) -> dict[str, dict[str, float | None]]:
    from scipy.stats import kendalltau

    out: dict[str, dict[str, float | None]] = {}
    for s in names:
        pairs = [(r.scores.get(s), r.cv_accuracy) for r in rows if r.scores.get(s) is not None and r.cv_accuracy is not None]
        tau = p = None
        if len(pairs) >= 2:
            res = kendalltau([a for a, _ in pairs], [b for _, b in pairs])
            tau = None if np.isnan(res.statistic) else float(res.statistic)
            p = None if np.isnan(res.pvalue) else float(res.pvalue)
        out[s] = {"tau": tau, "p": p, "n": len(pairs)}
    return out


def rank_backbones(
    data: Any,
    *,
    backbones: str | Sequence[str],
    score: str = "logme",
    validate: bool = False,
    folds: int = 5,
    val: float = 0.15,
    test: float = 0.15,
    seed: int = 0,
    strict: bool = False,
    text_col: str | None = None,
    label_col: str | None = None,
    batch_size: int = 64,
    runtime: str = "auto",
    cache: bool = True,
    progress: bool = False,
) -> Ranking:
    """Score each backbone's features of ``data``'s training split and rank them (best first).

    ``score``: a registered score (``logme``, ``hscore``, ``hscore_shrink``, ``leep``, ``nce``) or
    ``"all"`` (ranked by LogME; LEEP/NCE are left empty, with a note, for backbones without a
    source classifier). Asking for LEEP or NCE alone with such a backbone is an error.
    ``validate``: also the ``folds``-fold CV accuracy of a linear probe per backbone and the
    Kendall tau between each score and it. The split (``val``, ``test``, ``seed``) is the one
    ``fit`` uses, so the features are reused from the cache when fitting the chosen backbone.
    """
    from ..backbones import create_backbone
    from ..data import load_splits
    from ..features import extract_features
    from ..features.fitted import fit_on_train

    names = _split_names(backbones)
    primary, score_names = resolve_scores(score)
    infos = [get_score(s) for s in score_names]
    if validate and folds < 2:
        raise HeadstartError(f"The 'folds' parameter must be at least 2; got {folds!r}.")
    train = load_splits(data, val=val, test=test, seed=seed, strict=strict, text_col=text_col, label_col=label_col).train
    labels = np.asarray(train.labels)
    if len(np.unique(labels)) < 2:
        raise HeadstartError("Ranking needs at least 2 classes in the training split; the data has fewer.")

    rows: list[BackboneScore] = []
    instances: dict[str, Any] = {}
    for name in names:
        bb = create_backbone(name)
        if (train.modality == "text") != hasattr(bb, "tokenize"):
            kind = "text" if hasattr(bb, "tokenize") else "image"
            raise BackboneError(
                f"Backbone {name!r} is a {kind} backbone but the data holds {train.modality} items. "
                f"Fix: rank backbones of the data's kind (see 'headstart backbones --modality {train.modality}')."
            )
        needs_source = any(i.needs != "features" for i in infos)
        has_source = bb.source_head() is not None or name.startswith("run:")  # a run's own head is its source classifier
        if needs_source and not has_source and len(infos) == 1:  # before the extraction, not after it
            raise BackboneError(
                f"{infos[0].title} needs the source model's class probabilities, but backbone {name!r} has no source "
                f"classifier ({bb.provenance.source}). Fix: use --score logme, hscore or hscore_shrink (features only), "
                "or rank backbones with a classifier (efficientnet_lite0/1/2, timm:<name>, run:<folder>)."
            )
        t = time.perf_counter()
        fit_on_train(bb, train, batch_size=batch_size, runtime=runtime, cache=cache)  # tfidf: the training split's vocabulary
        feats = extract_features(bb, train, batch_size=batch_size, runtime=runtime, cache=cache, progress=progress)
        extract_s = time.perf_counter() - t
        proba = source_proba(name, bb, feats) if needs_source and has_source else None
        row = BackboneScore(backbone=name, score=None, score_name=primary, dim=int(feats.shape[1]), extract_s=round(extract_s, 3), score_s=0.0)
        for info in infos:
            if info.needs != "features" and proba is None:
                row.scores[info.name] = None
                row.notes[info.name] = f"no source classifier ({bb.provenance.source})"
                continue
            t = time.perf_counter()
            value = _score_one(info, feats, labels, proba)
            row.score_times_s[info.name] = round(time.perf_counter() - t, 4)
            row.scores[info.name] = float(value)
        row.score = row.scores.get(primary)
        row.score_s = row.score_times_s.get(primary, 0.0)
        if validate:
            row.cv_accuracy, row.cv_std = cv_accuracy(feats, labels, folds=folds, seed=seed)
        log.info("%s: %s = %s (%d-d, extract %.1f s, score %.3f s)", name, primary, row.score, row.dim, extract_s, row.score_s)
        rows.append(row)
        instances[name] = bb

    rows.sort(key=lambda r: (r.score is None, -(r.score if r.score is not None else 0.0)))
    for i, r in enumerate(rows, 1):
        r.rank = i
    ranking = Ranking(rows, primary, score_names, n_samples=len(labels), n_classes=len(np.unique(labels)), folds=folds if validate else None)
    # Keep the top backbone itself: a random-init one rebuilt by name would not be the network scored.
    ranking.best_backbone = instances[rows[0].backbone]
    if validate:
        ranking.kendall = _kendall(rows, score_names)
    return ranking


def choose_backbone(data: Any, candidates: str | Sequence[str] | None, *, score: str = "logme", **kw: Any) -> tuple[str, Ranking]:
    """The top-ranked of ``candidates`` (default :data:`DEFAULT_CANDIDATES`, or :data:`DEFAULT_TEXT_CANDIDATES`
    for text data, where :data:`ALWAYS_TEXT_CANDIDATE` joins any candidates given) and the ranking; logs why."""
    from ..data.load import guess_modality

    text = guess_modality(data, text_col=kw.get("text_col")) == "text"
    if candidates is None or (isinstance(candidates, str) and not candidates.strip()):
        candidates = DEFAULT_TEXT_CANDIDATES if text else DEFAULT_CANDIDATES
        log.info("backbone auto: no candidates given, ranking the offline pretrained backbones %s", ", ".join(candidates))
    elif text and ALWAYS_TEXT_CANDIDATE not in _split_names(candidates):
        candidates = [*_split_names(candidates), ALWAYS_TEXT_CANDIDATE]
        log.info("backbone auto: %s joins the candidates (the bag-of-words baseline is always ranked for texts)", ALWAYS_TEXT_CANDIDATE)
    ranking = rank_backbones(data, backbones=candidates, score=score, **kw)
    best = ranking.rows[0]
    if best.score is None:
        raise HeadstartError(f"backbone auto: no candidate could be scored with {score!r}; " + "; ".join(f"{r.backbone}: {r.notes}" for r in ranking.rows))
    why = ", ".join(f"{r.backbone} {r.score:.4f}" for r in ranking.rows if r.score is not None)
    log.info("backbone auto: chose %s, the highest %s on the training split (%s)", best.backbone, get_score(ranking.score_name).title, why)
    return best.backbone, ranking


def resolve_backbone(
    data: Any, backbone: str, candidates: str | Sequence[str] | None, *, weights: str | None = None, **kw: Any
) -> tuple[str, Ranking | None]:
    """What ``fit`` trains on: ``backbone`` itself, or for ``"auto"`` the top-ranked candidate (and the ranking)."""
    if backbone != "auto":
        if candidates:
            raise HeadstartError(f"The 'candidates' parameter is used only with backbone='auto'; got backbone={backbone!r}. Fix: pass --backbone auto, or drop --candidates.")
        return backbone, None
    if weights is not None:
        raise HeadstartError("A weights file belongs to one backbone; it cannot be combined with backbone='auto'. Fix: name the backbone, or drop --weights.")
    return choose_backbone(data, candidates, **kw)


__all__ = ["BackboneScore", "Ranking", "DEFAULT_CANDIDATES", "DEFAULT_TEXT_CANDIDATES", "rank_backbones", "choose_backbone", "cv_accuracy", "source_proba", "resolve_scores", "resolve_backbone"]
