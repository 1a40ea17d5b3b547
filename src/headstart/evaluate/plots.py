"""The plots of a run, drawn with matplotlib's object API on the Agg canvas and saved as PNG.

No ``pyplot``: figures are made with :class:`matplotlib.figure.Figure`, so nothing here touches
matplotlib's global backend or state, and plotting works without a display.

:func:`make_plots` draws every plot a run folder has the data for into ``plots/``: confusion
matrix (counts and row-normalised), ROC and precision-recall curves, learning curves (per epoch,
per fine-tuning stage when ``history.csv`` has a ``stage`` column, or along the regularisation
path of a logistic-regression head), reliability diagram, a t-SNE map of the evaluated items'
features (van der Maaten & Hinton 2008, :class:`sklearn.manifold.TSNE`) coloured by class with the
misclassified ones circled, the most confidently wrong examples, and the transfer-vs-scratch curve.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .calibration import unscaled_proba
from .metrics import calibration_bins, expected_calibration_error
from .run_data import RunRecord

log = logging.getLogger("headstart")

DPI = 100


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=DPI, layout="constrained")


def _save(fig, path: Path) -> Path:
    from .._io import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return path


def class_colors(k: int) -> np.ndarray:
    """``k`` distinct RGBA colours (tab10, tab20, then evenly spaced hues)."""
    from matplotlib import colormaps

    if k <= 10:
        return colormaps["tab10"](np.arange(k))
    if k <= 20:
        return colormaps["tab20"](np.arange(k))
    return colormaps["turbo"](np.linspace(0.05, 0.95, k))


def confusion_matrix_plot(cm: Sequence[Sequence[int]], classes: Sequence[str], path: Path) -> Path:
    """Counts (left) and rows normalised to recall (right); numbers written in cells up to 20 classes."""
    cm = np.asarray(cm, dtype=np.float64)
    k = len(classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.nan_to_num(cm / cm.sum(1, keepdims=True))
    side = float(np.clip(1.2 + 0.45 * k, 4.0, 9.0))
    fig = _figure(2 * side + 1.0, side)
    for ax, data, title, fmt in zip(fig.subplots(1, 2), (cm, norm), ("counts", "normalised by true class (recall)"), ("{:.0f}", "{:.2f}")):
        im = ax.imshow(data, cmap="Blues", vmin=0, vmax=max(data.max(), 1e-9) if data is cm else 1.0)
        fig.colorbar(im, ax=ax, shrink=0.8)
        ax.set_title(title)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        if k <= 30:
            ax.set_xticks(range(k), [str(c) for c in classes], rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center", fontsize=8 if k > 12 else 10)
            ax.set_yticks(range(k), [str(c) for c in classes], fontsize=8 if k > 12 else 10)
        if k <= 20:
            hi = data.max() if data.max() > 0 else 1
            for i in range(k):
                for j in range(k):
                    ax.text(j, i, fmt.format(data[i, j]), ha="center", va="center", fontsize=8 if k > 8 else 10,
                            color="white" if data[i, j] > 0.6 * hi else "black")
    return _save(fig, path)


def roc_pr_plot(y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str], path: Path) -> Path | None:
    """ROC (left) and precision-recall (right) curves, one-vs-rest per class (up to 10 classes; the
    micro-average beyond). ``None`` when ``y_true`` holds a single class (the curves are undefined)."""
    from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

    y_true = np.asarray(y_true)
    present = np.unique(y_true)
    if len(present) < 2:
        return None
    k = len(classes)
    fig = _figure(11, 4.8)
    ax_roc, ax_pr = fig.subplots(1, 2)
    colors = class_colors(k)
    if k == 2:
        curves = [(str(classes[1]), y_true == 1, proba[:, 1], colors[1])]
    elif k <= 10:
        curves = [(str(classes[i]), y_true == i, proba[:, i], colors[i]) for i in present]
    else:
        onehot = np.eye(k, dtype=bool)[y_true][:, present]
        curves = [("micro-average", onehot.ravel(), proba[:, present].ravel(), "C0")]
    for name, pos, score, color in curves:
        fpr, tpr, _ = roc_curve(pos, score)
        ax_roc.plot(fpr, tpr, color=color, lw=1.8, label=f"{name} (AUC {auc(fpr, tpr):.3f})")
        prec, rec, _ = precision_recall_curve(pos, score)
        ax_pr.step(rec, prec, where="post", color=color, lw=1.8, label=f"{name} (AP {average_precision_score(pos, score):.3f})")
    ax_roc.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    ax_roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (one-vs-rest)", xlim=(-0.01, 1.01), ylim=(-0.01, 1.01))
    ax_pr.set(xlabel="recall", ylabel="precision", title="precision-recall (one-vs-rest)", xlim=(-0.01, 1.01), ylim=(-0.01, 1.05))
    for ax in (ax_roc, ax_pr):
        ax.legend(fontsize=8, loc="lower right" if ax is ax_roc else "lower left")
        ax.grid(alpha=0.3)
    return _save(fig, path)


def _column(history: list[dict[str, Any]], key: str) -> np.ndarray:
    return np.asarray([np.nan if r.get(key) is None or isinstance(r.get(key), str) else float(r[key]) for r in history])


def learning_curves_plot(history: list[dict[str, Any]], path: Path) -> Path | None:
    """Loss and accuracy of train and validation per epoch (stages shaded and named when the
    history has a ``stage`` column); for a logistic-regression head, along the ``C`` path, the
    chosen ``C`` marked. ``None`` when the history has neither epochs nor ``C``."""
    if not history:
        return None
    fig = _figure(11, 4.2)
    ax_loss, ax_acc = fig.subplots(1, 2)
    if "epoch" in history[0]:
        x = np.arange(1, len(history) + 1)
        xlabel = "epoch"
        stages = [r.get("stage_name") if r.get("stage_name") not in (None, "") else r.get("stage") for r in history]
        if any(s is not None for s in stages):
            xlabel = "epoch (all stages)"
            start = 0
            for i in range(1, len(stages) + 1):
                if i == len(stages) or stages[i] != stages[start]:
                    for n, ax in enumerate((ax_loss, ax_acc)):
                        ax.axvspan(start + 0.5, i + 0.5, color="0.92" if (len({*stages[:start]}) % 2 == 0) else "0.85", zorder=0)
                        ax.text((start + i + 1) / 2, 1.0, str(stages[start]), transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=8)
                    start = i
    elif "C" in history[0]:
        x = _column(history, "C")
        xlabel = "C (inverse regularisation strength)"
        for ax in (ax_loss, ax_acc):
            ax.set_xscale("log")
            sel = [i for i, r in enumerate(history) if r.get("selected")]
            for i in sel:
                ax.axvline(x[i], color="grey", ls="--", lw=1, label=f"chosen C={x[i]:g}")
    else:
        return None
    for ax, what in ((ax_loss, "loss"), (ax_acc, "acc")):
        for split, color in (("train", "C0"), ("val", "C1")):
            y = _column(history, f"{split}_{what}")
            if np.isfinite(y).any():
                ax.plot(x, y, marker="o", ms=3, color=color, label=f"{'train' if split == 'train' else 'validation'}")
        ax.set_xlabel(xlabel)
        if "epoch" in history[0]:
            from matplotlib.ticker import MaxNLocator

            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("cross-entropy loss" if what == "loss" else "accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax_loss.set_title("loss", pad=14)
    ax_acc.set_title("accuracy", pad=14)
    return _save(fig, path)


def reliability_plot(y_true: np.ndarray, proba: np.ndarray, path: Path, *, before: np.ndarray | None = None, temperature: float | None = None) -> Path:
    """Accuracy against mean confidence per equal-width bin, the diagonal, and the bin counts; with
    ``before`` (the probabilities before temperature scaling) two panels: before, and after (``proba``)."""
    panels = [("before calibration", before), (f"after temperature scaling (T = {temperature:.2f})" if temperature else "after", proba)] if before is not None else [("", proba)]
    fig = _figure(5.5 * len(panels), 5.5)
    axes = fig.subplots(2, len(panels), height_ratios=(3, 1), sharex=True, squeeze=False)
    for j, (name, p) in enumerate(panels):
        _reliability_axes(axes[0, j], axes[1, j], y_true, p, name)
    return _save(fig, path)


def _reliability_axes(ax, ax_n, y_true: np.ndarray, proba: np.ndarray, name: str) -> None:
    bins = calibration_bins(y_true, proba)
    ece = expected_calibration_error(y_true, proba)
    edges, count = bins["edges"], bins["count"]
    centers = (edges[:-1] + edges[1:]) / 2
    width = edges[1] - edges[0]
    used = count > 0
    ax.bar(centers[used], bins["accuracy"][used], width=width * 0.9, color="C0", edgecolor="C0", alpha=0.8, label="accuracy")
    ax.bar(centers[used], bins["confidence"][used] - bins["accuracy"][used], bottom=bins["accuracy"][used], width=width * 0.9,
           color="C3", alpha=0.25, hatch="//", edgecolor="C3", label="gap to confidence")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", label="perfect calibration")
    ax.set(ylabel="accuracy", ylim=(0, 1.02), title=f"reliability{', ' + name if name else ''} (ECE {ece:.3f})")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    ax_n.bar(centers, count, width=width * 0.9, color="0.5")
    ax_n.set(xlabel="confidence (top probability)", ylabel="items", xlim=(0, 1))


def roc_operating_point_plot(y_true: np.ndarray, p_pos: np.ndarray, threshold: float, positive: str, rule: str, path: Path) -> Path | None:
    """The ROC curve of ``p(positive)`` with the operating point ``p >= threshold`` marked (its
    sensitivity and specificity written beside it); ``None`` when ``y_true`` holds one class."""
    from sklearn.metrics import roc_auc_score, roc_curve

    from .operating import at_threshold

    y = np.asarray(y_true) == 1
    if y.all() or not y.any():
        return None
    fpr, tpr, _ = roc_curve(y, p_pos)
    at = at_threshold(y, p_pos, threshold)
    fig = _figure(5.8, 5.4)
    ax = fig.subplots()
    ax.plot(fpr, tpr, color="C0", lw=1.8, label=f"ROC of p({positive}) (AUC {roc_auc_score(y, p_pos):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    x0, y0 = 1 - at["specificity"], at["sensitivity"]
    ax.plot([x0], [y0], "o", ms=10, mfc="C3", mec="k", label=f"operating point ({rule}, threshold {threshold:.3f})")
    ax.annotate(f"sensitivity {y0:.3f}\nspecificity {at['specificity']:.3f}", (x0, y0), xytext=(12, -30), textcoords="offset points", fontsize=9,
                arrowprops={"arrowstyle": "-", "color": "0.4"})
    ax.set(xlabel="false positive rate (1 - specificity)", ylabel="true positive rate (sensitivity)", title="ROC and the chosen operating point",
           xlim=(-0.01, 1.01), ylim=(-0.01, 1.01))
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def tsne_2d(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE of ``x`` (perplexity ``min(30, (n - 1) / 3)``, PCA initialisation)."""
    from sklearn.manifold import TSNE

    x = np.asarray(x, dtype=np.float64)
    perplexity = float(max(1.0, min(30.0, (len(x) - 1) / 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, max_iter=500).fit_transform(x)


def embedding_plot(xy: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str], path: Path) -> Path:
    """Points coloured by true class; misclassified ones circled in red."""
    k = len(classes)
    colors = class_colors(k)
    fig = _figure(7.5 if k <= 20 else 6.5, 6)
    ax = fig.subplots()
    for i in np.unique(y_true):
        m = y_true == i
        ax.scatter(xy[m, 0], xy[m, 1], s=14, color=colors[i], label=str(classes[i]) if k <= 20 else None, alpha=0.85, linewidths=0)
    wrong = y_true != y_pred
    if wrong.any():
        ax.scatter(xy[wrong, 0], xy[wrong, 1], s=70, facecolors="none", edgecolors="red", linewidths=1.2, label=f"misclassified ({int(wrong.sum())})")
    ax.set_title(f"t-SNE of the features of {len(xy)} evaluated items")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    return _save(fig, path)


def gallery_plot(images: np.ndarray, captions: Sequence[str], path: Path, cols: int = 6) -> Path | None:
    """A grid of thumbnails with a caption each (true -> predicted, confidence)."""
    if len(images) == 0:
        return None
    rows = int(np.ceil(len(images) / cols))
    cols = min(cols, len(images))
    fig = _figure(1.75 * cols, 1.95 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, img, cap in zip(axes, images, captions):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(cap, fontsize=7, color="darkred")
    return _save(fig, path)


def curve_plot(rows: list[dict[str, Any]], path: Path, target: float | None = None) -> Path | None:
    """Mean test accuracy (markers) and min-max spread over seeds (band) against labels per class,
    one line per method, log-scaled x axis."""
    if not rows:
        return None
    fig = _figure(7.5, 5)
    ax = fig.subplots()
    for n, method in enumerate(dict.fromkeys(r["method"] for r in rows)):
        pts = sorted({r["labels_per_class"] for r in rows if r["method"] == method})
        accs = [[r["accuracy"] for r in rows if r["method"] == method and r["labels_per_class"] == p] for p in pts]
        mean = np.array([np.mean(a) for a in accs])
        ax.fill_between(pts, [min(a) for a in accs], [max(a) for a in accs], color=f"C{n}", alpha=0.18, lw=0)
        ax.plot(pts, mean, marker="o", color=f"C{n}", label=method)
    if target is not None:
        ax.axhline(target, ls="--", color="grey", lw=1, label=f"target {target:g}")
    ax.set_xscale("log")
    from matplotlib.ticker import NullFormatter

    ticks = sorted({r["labels_per_class"] for r in rows})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set(xlabel="labeled training images per class", ylabel="test accuracy", title="accuracy vs labels: transfer vs scratch (mean, min-max over seeds)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=9)
    return _save(fig, path)


def make_plots(rec: RunRecord, plots_dir: Path) -> tuple[dict[str, Path], list[str]]:
    """Every plot the run folder has the data for; returns ``({name: path}, [failures])``.

    A failing plot is logged as a warning and listed, never raised: the report goes on without it.
    """
    made: dict[str, Path] = {}
    failed: list[str] = []
    preds = rec.predictions

    def attempt(name: str, fn: Callable[[], Path | None]) -> None:
        try:
            p = fn()
        except Exception as e:  # noqa: BLE001 - one plot must not lose the report
            log.warning("the %s plot could not be drawn (%s: %s); the report goes on without it", name, type(e).__name__, e)
            failed.append(f"{name}: {type(e).__name__}: {e}")
            return
        if p is not None:
            made[name] = p

    if preds is not None and len(preds.y_true):
        from sklearn.metrics import confusion_matrix

        cm = confusion_matrix(preds.y_true, preds.y_pred, labels=np.arange(len(preds.classes)))
        attempt("confusion_matrix", lambda: confusion_matrix_plot(cm, preds.classes, plots_dir / "confusion_matrix.png"))
        attempt("roc_pr", lambda: roc_pr_plot(preds.y_true, preds.proba, preds.classes, plots_dir / "roc_pr.png"))
        info = rec.meta.get("info") or {}
        t = (info.get("calibration") or {}).get("temperature")
        before = None if t is None else unscaled_proba(preds.proba, t)  # predictions.csv holds the calibrated probabilities
        attempt("reliability", lambda: reliability_plot(preds.y_true, preds.proba, plots_dir / "reliability.png", before=before, temperature=t))
        op = info.get("operating_point")
        if op and len(preds.classes) == 2:
            attempt("roc_operating_point", lambda: roc_operating_point_plot(preds.y_true, preds.proba[:, 1], op["threshold"], preds.classes[1], op["rule"],
                                                                            plots_dir / "roc_operating_point.png"))
    if rec.history:
        attempt("learning_curves", lambda: learning_curves_plot(rec.history, plots_dir / "learning_curves.png"))
    ex = rec.extras
    if preds is not None and "embed_pca" in ex and len(ex["embed_index"]) >= 5:
        idx = ex["embed_index"]

        def embed() -> Path:
            xy = tsne_2d(ex["embed_pca"].astype(np.float64))
            return embedding_plot(xy, preds.y_true[idx], preds.y_pred[idx], preds.classes, plots_dir / "embeddings.png")

        attempt("embeddings", embed)
    if preds is not None and rec.modality != "text":
        attempt("gallery", lambda: _gallery_from_run(rec, plots_dir / "gallery.png"))
    if rec.curve:
        attempt("curve", lambda: curve_plot(rec.curve, plots_dir / "curve.png", rec.curve_summary.get("target_accuracy")))
    return made, failed


def gallery_captions(rec: RunRecord, index: np.ndarray) -> list[str]:
    p = rec.predictions
    assert p is not None
    return [f"{p.classes[p.y_true[i]]} -> {p.classes[p.y_pred[i]]} ({p.confidence[i]:.2f})" for i in index]


def _gallery_from_run(rec: RunRecord, path: Path) -> Path | None:
    """Thumbnails saved at fit time, else the images themselves when the items are readable files."""
    from .run_data import GALLERY_SIZE, _thumbnail

    p = rec.predictions
    assert p is not None
    if "gallery_images" in rec.extras:
        index, images = rec.extras["gallery_index"], rec.extras["gallery_images"]
    else:
        from PIL import Image

        index = np.asarray([i for i in p.most_confidently_wrong(GALLERY_SIZE) if Path(p.items[i]).is_file()], dtype=np.int64)
        images = [_thumbnail(Image.open(p.items[i])) for i in index]
    return gallery_plot(np.asarray(images), gallery_captions(rec, index), path)
