"""The run report: ``report.html`` (one self-contained file) and ``report.md``, from the run folder alone.

``report.html`` embeds its plots as base64 PNG data URIs and its CSS inline and makes no network
request, so it can be mailed or attached as is. ``report.md`` shows the same tables for terminals
and pull requests and links the PNGs in ``plots/``. Every string that comes from the user (class
names, paths, settings, texts) is escaped with :func:`html.escape` (in Markdown, ``|`` and
newlines are neutralised in table cells).

Sections: headline metrics, diagnostics (:mod:`.diagnostics`), metrics, per-class metrics, plots
(:mod:`.plots`), most confidently wrong examples, data summary, backbone ranking (when ``fit`` ran
with ``--backbone auto``), transfer vs. scratch (when the folder holds ``curve.csv``), timings,
settings. A folder written by ``headstart curve`` gets a report of its curve alone (:func:`summarize_curve`:
its accuracy per fraction and method, mean ± sd over seeds).

:func:`write_report` is what ``headstart report RUN`` runs; :func:`report_after_fit` is the end of
every ``fit``: it never raises, so a plotting failure cannot lose a trained run.
"""

from __future__ import annotations

import base64
import html
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from .diagnostics import diagnose
from .export_table import export_section
from .metrics import HEADLINE, classification_metrics
from .report_decision import decision_sections
from .run_data import RunRecord, read_run

log = logging.getLogger("headstart")

PLOT_TITLES = {
    "confusion_matrix": ("Confusion matrix", "Rows are the true classes, columns the predicted ones; left counts, right each row divided by its total (recall on the diagonal)."),
    "roc_pr": ("ROC and precision-recall curves", "One-vs-rest per class: the closer to the top-left (ROC) and top-right (precision-recall) corners, the better."),
    "learning_curves": ("Learning curves", "Training and validation loss and accuracy per epoch (or along the logistic-regression head's regularisation path)."),
    "reliability": ("Reliability diagram", "Accuracy against confidence: bars on the diagonal mean the probabilities can be read as chances (a calibrated run: before and after temperature scaling)."),
    "embeddings": ("Map of the embeddings (t-SNE)", "The backbone's features of the evaluated items in 2-D (t-SNE of their first 50 principal components), coloured by true class; red circles mark mistakes."),
    "gallery": ("Most confidently wrong", "The mistakes the model was surest about: true class -> predicted class (confidence). Often mislabeled items or genuinely ambiguous ones."),
    "curve": ("Accuracy vs labels per class", "Test accuracy of each method against the number of labeled training images per class (mean over seeds; band: min-max)."),
}

CSS = """
body{font-family:-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;margin:0;background:#f5f6f8;color:#1f2328;line-height:1.45}
main{max-width:1120px;margin:0 auto;padding:24px 32px 48px;background:#fff;min-height:100vh;box-shadow:0 0 12px rgba(0,0,0,.06)}
h1{font-size:1.7em;margin:.2em 0 .1em}h2{font-size:1.3em;border-bottom:2px solid #e4e7eb;padding-bottom:4px;margin-top:1.8em}
h3{font-size:1.05em;margin:1.2em 0 .4em}.sub{color:#59636e;margin:0 0 1em}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:.92em}th,td{border:1px solid #d8dde3;padding:4px 10px;text-align:left}
th{background:#eef1f4}tr:nth-child(even) td{background:#fafbfc}td.num{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:12px 0}.card{background:#f0f4fa;border:1px solid #d5deea;border-radius:8px;padding:10px 16px;min-width:120px}
.card .v{font-size:1.5em;font-weight:600}.card .k{color:#59636e;font-size:.85em}
.finding{border-left:5px solid #d4a72c;background:#fff8e5;padding:8px 14px;margin:10px 0;border-radius:4px}
.finding.info{border-color:#4a90d9;background:#eef5fc}.finding.ok{border-color:#2da44e;background:#eefaf0}
.finding b{display:block;margin-bottom:2px}.finding .try{margin-top:4px}
figure{margin:12px 0 24px}figure img{max-width:100%;height:auto;border:1px solid #e4e7eb}figcaption{color:#59636e;font-size:.9em;margin-top:4px}
pre{background:#f6f8fa;border:1px solid #e4e7eb;padding:10px;overflow-x:auto;font-size:.85em}
.note{color:#59636e;font-size:.9em}details summary{cursor:pointer;color:#0969da;margin:.4em 0}code{background:#f0f2f4;padding:1px 4px;border-radius:3px}
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _md(x: Any) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return "n/a" if not np.isfinite(v) else f"{v:.{digits}f}"
    return str(v)


class _Doc:
    """Builds the HTML and the Markdown side by side."""

    def __init__(self) -> None:
        self.html: list[str] = []
        self.md: list[str] = []

    def h(self, level: int, text: str, anchor: str | None = None) -> None:
        self.html.append(f"<h{level}{f' id={chr(34)}{anchor}{chr(34)}' if anchor else ''}>{_e(text)}</h{level}>")
        self.md.append(f"\n{'#' * level} {text}\n")

    def p(self, text: str, cls: str | None = None) -> None:
        self.html.append(f"<p{f' class={chr(34)}{cls}{chr(34)}' if cls else ''}>{_e(text)}</p>")
        self.md.append(f"{text}\n")

    def table(self, header: list[str], rows: list[list[Any]], numeric: set[int] | None = None) -> None:
        numeric = numeric if numeric is not None else {i for i, v in enumerate(rows[0]) if isinstance(v, (int, float, np.number)) or v is None} if rows else set()
        cells = lambda r: "".join(f"<td class=\"num\">{_e(_fmt(v))}</td>" if i in numeric else f"<td>{_e(_fmt(v))}</td>" for i, v in enumerate(r))  # noqa: E731
        self.html.append("<table><thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr></thead><tbody>"
                         + "".join(f"<tr>{cells(r)}</tr>" for r in rows) + "</tbody></table>")
        self.md.append("| " + " | ".join(_md(h) for h in header) + " |\n|" + "---|" * len(header) + "\n"
                       + "".join("| " + " | ".join(_md(_fmt(v)) for v in r) + " |\n" for r in rows))

    def figure(self, png: Path, title: str, caption: str, rel: str) -> None:
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        self.html.append(f"<figure><h3>{_e(title)}</h3><img alt=\"{_e(title)}\" src=\"data:image/png;base64,{data}\"><figcaption>{_e(caption)}</figcaption></figure>")
        self.md.append(f"\n**{title}**: {caption}\n\n![{title}]({rel})\n")

    def pre(self, text: str, lang: str = "", summary: str | None = None) -> None:
        block = f"<pre>{_e(text)}</pre>"
        self.html.append(f"<details><summary>{_e(summary)}</summary>{block}</details>" if summary else block)
        self.md.append(f"```{lang}\n{text.rstrip()}\n```\n")

    def raw(self, html_text: str, md_text: str) -> None:
        self.html.append(html_text)
        self.md.append(md_text)


def _headline(doc: _Doc, m: dict[str, Any], split: str) -> None:
    keys = [k for k in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "log_loss", "ece") if k in m]
    cards = "".join(f"<div class=\"card\"><div class=\"v\">{_e(_fmt(m[k], 3))}</div><div class=\"k\">{_e(HEADLINE[k])} ({_e(split)})</div></div>" for k in keys)
    doc.raw(f"<div class=\"cards\">{cards}</div>", " · ".join(f"**{HEADLINE[k]}** {_fmt(m[k], 3)}" for k in keys) + f" (on {split}, n={m['n']})\n")


def _diagnostics(doc: _Doc, rec: RunRecord) -> None:
    doc.h(2, "Diagnostics", "diagnostics")
    findings = diagnose(rec)
    if not findings:
        doc.raw("<div class=\"finding ok\"><b>No problems found</b>No sign of over- or under-fitting, imbalance, or classes confused with each other.</div>",
                "No problems found: no sign of over- or under-fitting, imbalance, or classes confused with each other.\n")
    for f in findings:
        doc.raw(f"<div class=\"finding {_e(f.severity)}\"><b>{_e(f.title)}</b>{_e(f.seen)}<div class=\"try\"><i>What to try:</i> {_e(f.advice)}</div></div>",
                f"- **{f.title}.** {f.seen} *What to try:* {f.advice}\n")


def _metrics_tables(doc: _Doc, m: dict[str, Any], split: str) -> None:
    doc.h(2, "Metrics", "metrics")
    doc.p(f"On the {split} split ({m['n']} items), computed from predictions.csv with scikit-learn (ECE: equal-width bins, 15).", "sub")
    ci = m.get("ci") or {}
    interval = lambda k: f"{ci[k][0]:.3f} - {ci[k][1]:.3f}" if ci.get(k) else ""  # noqa: E731
    doc.table(["metric", "value", f"{ci.get('level', 0.95):.0%} interval"], [[label, m.get(k), interval(k)] for k, label in HEADLINE.items() if k in m],
              numeric={1})
    if ci.get("resamples"):
        doc.p(f"Intervals: percentile bootstrap, {ci['resamples']} resamples of the {m['n']} items (seed {ci['seed']})."
              + (f" Sensitivity is the recall of {m['positive_class']!r}, specificity that of the other class." if "positive_class" in m else ""), "sub")
    for note in m.get("notes", []):
        doc.p(f"Note: {note}.", "note")
    doc.h(2, "Per-class metrics", "per-class")
    rows = [[c, r["precision"], r["recall"], r["f1"], r["support"], r.get("roc_auc"), r.get("pr_auc")] for c, r in m["per_class"].items()]
    doc.table(["class", "precision", "recall", "F1", "support", "ROC-AUC (1-vs-rest)", "PR-AUC (1-vs-rest)"], rows, numeric={1, 2, 3, 4, 5, 6})


def _sparse_baseline(doc: _Doc, b: dict[str, Any], m: dict[str, Any] | None) -> None:
    """A text run's bag-of-words baseline (``fit`` trained it on the run's training split): its accuracy beside the run's."""
    doc.h(2, "Bag-of-words baseline", "baseline")
    run = f"; this run {m['accuracy']:.3f} ({100 * (m['accuracy'] - b['accuracy']):+.1f} points)" if m is not None and "accuracy" in m else ""
    doc.p(f"{b['model']}, trained on this run's {b.get('n_train', '?')} training texts: accuracy {b['accuracy']:.3f} on the same "
          f"{b.get('n_test', '?')} {b.get('split', 'test')} texts{run}. A pretrained encoder that does not beat it is not worth its cost.")


def _target_domain(doc: _Doc, rec: RunRecord) -> None:
    """Source and target figures side by side: the labeled target (--target-test) before and after training."""
    m = rec.metrics
    split = "test" if "test" in m else "val"
    before, after = m.get("target_test_before"), m["target_test"]
    method = rec.setting("method")
    doc.h(2, "Target domain", "target")
    doc.p(f"Labeled target data {m.get('target_test_source', '')} ({after['n']} items), scored as the {split} split is. "
          + (f"Method: {method} {rec.setting('method_opt') or ''}. " if method else "No adaptation method (source-only). ")
          + ("'Before': the linear probe fine-tuning started from, on the pretrained features." if before else ""), "sub")
    cols = [f"source ({split})", *(["target, before"] if before else []), "target"]
    keys = [k for k in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "log_loss", "ece") if k in after]
    rows = [[HEADLINE[k], (m.get(split) or {}).get(k), *([before.get(k)] if before else []), after.get(k)] for k in keys]
    doc.table(["metric", *cols], rows, numeric=set(range(1, len(cols) + 1)))
    gap = m.get("domain_gap")
    if gap:
        names = [k for k in ("mmd2", "mmd_p_value", "coral", "frechet", "pad") if k in gap.get("after", {})]
        doc.table(["domain gap (source vs target features)", *(["before"] if "before" in gap else []), "after"],
                  [[k, *([gap["before"].get(k)] if "before" in gap else []), gap["after"][k]] for k in names], numeric={1, 2})


def _gallery_texts(doc: _Doc, rec: RunRecord) -> None:
    p = rec.predictions
    assert p is not None
    index = rec.extras.get("gallery_index", p.most_confidently_wrong())
    texts = rec.extras.get("gallery_texts", np.asarray([p.items[i] for i in index], dtype=str))
    doc.h(3, PLOT_TITLES["gallery"][0])
    if not len(index):
        doc.p("No mistakes among the evaluated items.", "note")
        return
    doc.table(["text", "true", "predicted", "confidence"], [[str(t), p.classes[p.y_true[i]], p.classes[p.y_pred[i]], float(p.confidence[i])] for t, i in zip(texts, index)], numeric={3})


def _data_summary(doc: _Doc, rec: RunRecord) -> None:
    counts: dict[str, dict[str, int]] = rec.metrics.get("counts") or {}
    doc.h(2, "Data", "data")
    src = rec.setting("data", "")
    doc.p(f"Source: {src} · modality: {rec.modality} · {len(rec.classes)} classes.")
    if counts:
        splits = list(counts)
        rows = [[c, *[counts[s].get(c, 0) for s in splits], sum(counts[s].get(c, 0) for s in splits)] for c in rec.classes]
        rows.append(["total", *[sum(counts[s].values()) for s in splits], sum(sum(counts[s].values()) for s in splits)])
        doc.table(["class", *splits, "all"], rows)
        train = [v for v in counts.get("train", {}).values() if v > 0]
        if train:
            doc.p(f"Imbalance ratio (largest / smallest training class): {max(train) / min(train):.2f}.")
    problems = rec.metrics.get("problems") or []
    if problems:
        doc.p(f"{len(problems)} item(s) could not be used and were skipped:")
        doc.pre("\n".join(problems[:50]) + ("\n..." if len(problems) > 50 else ""))


def _ranking(doc: _Doc, ranking: list[dict[str, Any]]) -> None:
    doc.h(2, "Backbone ranking", "ranking")
    doc.p("Candidates scored before training (--backbone auto); the top one was used.", "sub")
    cols = ["rank", "backbone", "score", "score_name", "dim", "extract_s", "score_s"]
    doc.table(cols, [[r.get(c) for c in cols] for r in sorted(ranking, key=lambda r: r.get("rank", 0))])


def summarize_curve(rows: list[dict[str, Any]]) -> dict[tuple[float, str], str]:
    """``{(fraction, method): "mean ± sd"}`` of the test accuracy over seeds."""
    out = {}
    for key in dict.fromkeys((r["fraction"], r["method"]) for r in rows):
        acc = np.asarray([r["accuracy"] for r in rows if (r["fraction"], r["method"]) == key], dtype=np.float64)
        out[key] = f"{acc.mean():.3f} ± {acc.std(ddof=1) if len(acc) > 1 else 0.0:.3f}"
    return out


def _curve(doc: _Doc, rec: RunRecord, plots: dict[str, Path], root: Path) -> None:
    doc.h(2, "Transfer vs. scratch", "curve")
    s = rec.curve_summary
    if s:
        doc.p(f"Data: {s.get('data')} · backbone: {s.get('backbone')} · scratch backbone: {s.get('scratch_backbone')} · seeds: {s.get('seeds')} · "
              f"epochs: {s.get('epochs')} (scratch {s.get('scratch_epochs')}) · lr: {s.get('lr')} (scratch {s.get('scratch_lr', s.get('lr'))}) · "
              f"training items at fraction 1: {s.get('n_train_full')} · test items: {s.get('n_test')} (the same fixed test split for every fit).", "sub")
    table = summarize_curve(rec.curve)
    methods = list(dict.fromkeys(r["method"] for r in rec.curve))
    doc.table(["fraction", "labels/class", *[f"{m} acc (mean ± sd)" for m in methods]],
              [[f"{f:g}", n, *[table.get((f, m), "") for m in methods]] for f, n in dict.fromkeys((r["fraction"], r["labels_per_class"]) for r in rec.curve)], numeric={0, 1})
    if "curve" in plots:
        doc.figure(plots["curve"], *PLOT_TITLES["curve"], str(plots["curve"].relative_to(root)))
    if s.get("methods"):
        doc.h(3, "Time to reach the target accuracy, and compute used")
        doc.p(s.get("compute_note", ""), "note")
        def val(v: Any) -> str:
            return "not reached" if v is None else f"{v:g}"

        rows = [[m, val(d.get("labels_per_class_to_target")), val(d.get("seconds_to_target")), f"{d.get('total_seconds', 0):.1f}", f"{d.get('total_cpu_seconds', 0):.1f}"]
                for m, d in s["methods"].items()]
        doc.table(["method", f"labels/class to reach {s.get('target_accuracy')}", "seconds per fit there", "all fits: wall s", "all fits: CPU s"], rows, numeric={1, 2, 3, 4})


def _timings(doc: _Doc, rec: RunRecord) -> None:
    t = rec.metrics.get("timings_s") or {}
    if not t:
        return
    doc.h(2, "Timings", "timings")
    rows = [[k, float(v)] for k, v in t.items()]
    n = rec.predictions and len(rec.predictions.y_true)
    if n and t.get("predict"):
        rows.append([f"prediction at the end of fit (items/s over {n} items, reading included; feature-cache hits count)", n / float(t["predict"])])
    if (rec.path / "model.safetensors").is_file():
        rows.append(["model size on disk (MB)", (rec.path / "model.safetensors").stat().st_size / 1e6])
    doc.table(["step", "seconds"], rows, numeric={1})


def _continual(doc: _Doc, rec: RunRecord) -> None:
    """A continued run (``fit --from``): the old task before and after, the new task, forgetting."""
    c = rec.metrics["continual"]
    parent = rec.meta.get("info", {}).get("parent") or {}
    doc.h(2, "Old and new task", "continual")
    doc.p(f"Continued from {c.get('parent')} ({', '.join(c.get('old_classes', []))}) with method {parent.get('method', 'naive')}; new classes: "
          f"{', '.join(c.get('new_classes', []))}" + (f"; merged (same name): {', '.join(c['merged_classes'])}" if c.get("merged_classes") else "")
          + (". One head per task (--heads separate, task-incremental): each test item is scored over its own task's classes, as "
             "predict --task scores it." if c.get("heads") == "separate" else
             ". Accuracy over all classes (class-incremental); 'within its task': the argmax among that task's classes only."), "sub")
    if "old_before" not in c:
        doc.p(c.get("note", "The old task was not scored."), "note")
    rows = [["old task", c.get("old_test_n"), c.get("old_before"), c.get("old_after"), c.get("old_after_within_task")],
            ["new task", c.get("new_test_n"), None, c.get("new_after"), c.get("new_after_within_task")]]
    doc.table(["test items", "n", "before", "after", "after, within its task"], rows, numeric={1, 2, 3, 4})
    if "forgetting" in c:
        doc.p(f"Forgetting (old before - after): {_fmt(c['forgetting'])}; backward transfer: {_fmt(c['backward_transfer'])}; "
              f"average accuracy over every test item: {_fmt(c.get('average_after'))}.")


def _distill(doc: _Doc, rec: RunRecord) -> None:
    """A distilled run (``--method distill``): teacher vs student on the evaluated split."""
    d = rec.metrics["distill"]
    doc.h(2, "Teacher and student", "distill")
    doc.p(f"Distilled from {d.get('teacher')} (temperature {d.get('temperature')}, soft weight alpha {d.get('alpha')}; transfer set "
          f"{d.get('transfer_set', {}).get('train')} training + {d.get('transfer_set', {}).get('unlabeled')} unlabeled items; the teacher's "
          f"logits were computed once, in {_fmt(d.get('teacher_logits_seconds'), 1)} s). Images/s: prediction on this machine, uncached.", "sub")
    rows = [[who, d.get(f"{who}_accuracy"), d.get(f"{who}_parameters"), d.get(f"{who}_megabytes"), d.get(f"{who}_input_px"), d.get(f"{who}_images_per_s")]
            for who in ("teacher", "student")]
    doc.table(["model", "accuracy", "parameters", "weights (MB)", "input px", "images/s"], rows, numeric={1, 2, 3, 4, 5})
    if "agreement" in d:
        doc.p(f"The student agrees with the teacher on {_fmt(d['agreement'])} of {d.get('n')} items and predicts {_fmt(d.get('speedup'), 2)}x "
              "as many images per second.")


def _ensemble(doc: _Doc, rec: RunRecord) -> None:
    """An ensemble folder (``headstart ensemble``): the ensemble against each member on the same test items."""
    e = rec.metrics["ensemble"]
    doc.h(2, "Ensemble and its members", "ensemble")
    how = {"average": "the mean of the members' probabilities", "vote": "one vote per member, ties broken by the mean probability",
           "stack": "a logistic regression on the members' log-probabilities, fit on the validation split only"}.get(e.get("method"), e.get("method"))
    doc.p(f"Method {e.get('method')}: {how}" + (f" (C {e['stacker']['C']:g}, {e['stacker']['cv_folds']}-fold CV on {e['stacker']['n']} "
          "validation items)" if e.get("stacker") else "") + ".", "sub")
    test = rec.metrics.get("test", {})
    rows = [["ensemble", test.get("accuracy"), test.get("log_loss"), test.get("macro_f1")]]
    rows += [[m["run"] + (" (best)" if m["run"] == e.get("best_member") else ""), m["accuracy"], m["log_loss"], m["macro_f1"]] for m in e.get("members", [])]
    doc.table(["model", "accuracy", "log loss", "macro F1"], rows, numeric={1, 2, 3})
    doc.p(f"Against the best member: accuracy {_fmt(e.get('gain_over_best_member'))}, log loss {_fmt(e.get('log_loss_change_vs_best_member'))}.")


def build_report(run_dir: str | Path) -> tuple[str, str, list[str]]:
    """``(html, markdown, plot failures)`` of a run folder; draws the plots into ``plots/``."""
    from .plots import make_plots

    rec = read_run(run_dir)
    root = rec.path
    plots, failed = make_plots(rec, root / "plots")
    doc = _Doc()
    info = rec.meta.get("info", {})
    strategy = info.get("strategy", rec.setting("strategy"))
    backbone = info.get("backbone", rec.setting("backbone"))
    title = f"headstart report: {rec.name}"
    stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime((root / ("model.json" if rec.is_model_run else "curve.csv")).stat().st_mtime)) \
        if (root / ("model.json" if rec.is_model_run else "curve.csv")).exists() else ""
    doc.h(1, title)
    sub = " · ".join(x for x in (f"strategy {strategy}" if strategy else "", f"backbone {backbone}" if backbone else "",
                                 f"head {info.get('head')}" if info.get("head") else "", f"{len(rec.classes)} classes" if rec.classes else "", stamp) if x)
    doc.p(sub, "sub")
    m, split = None, None
    if rec.predictions is not None:
        split = rec.predictions.split
        m = classification_metrics(rec.predictions.y_true, rec.predictions.proba, rec.predictions.classes)
        _headline(doc, m, split)
    if rec.is_model_run:
        _diagnostics(doc, rec)
    if m is not None:
        _metrics_tables(doc, m, split)
        decision_sections(doc, rec, plots, root)  # fit --threshold / --calibrate: operating point, ROC with it marked, ECE/NLL before/after
    if (rec.metrics.get("sparse_baseline") or {}).get("accuracy") is not None:
        _sparse_baseline(doc, rec.metrics["sparse_baseline"], m)
    if rec.metrics.get("target_test"):
        _target_domain(doc, rec)
    if rec.metrics.get("continual"):
        _continual(doc, rec)
    if "distill" in rec.metrics:
        _distill(doc, rec)
    if "ensemble" in rec.metrics:
        _ensemble(doc, rec)
    export_section(doc, root)  # headstart export: size / speed / accuracy of each export (RUN/exports.json), when there are any
    shown = [k for k in PLOT_TITLES if k in plots and k != "curve"]
    if shown or (rec.predictions is not None and rec.modality == "text"):
        doc.h(2, "Plots", "plots")
        for k in shown:
            doc.figure(plots[k], *PLOT_TITLES[k], str(plots[k].relative_to(root)))
        if rec.predictions is not None and rec.modality == "text":
            _gallery_texts(doc, rec)
    if rec.predictions is not None and "gallery" not in plots and rec.modality != "text":
        doc.p("Gallery of mistakes: " + ("no mistakes among the evaluated items." if not len(rec.predictions.most_confidently_wrong()) else
                                         "the images are not available (no report_data.npz and the items are not readable files)."), "note")
    if "embeddings" not in plots and rec.predictions is not None:
        doc.p("Map of the embeddings: not drawn (report_data.npz with features of at least 5 evaluated items is needed; it is written by fit).", "note")
    for f in failed:
        doc.p(f"A plot could not be drawn: {f}", "note")
    if rec.is_model_run:
        _data_summary(doc, rec)
    if rec.metrics.get("backbone_ranking"):
        _ranking(doc, rec.metrics["backbone_ranking"])
    if rec.curve:
        _curve(doc, rec, plots, root)
    _timings(doc, rec)
    if (root / "config.yaml").is_file():
        doc.h(2, "Settings", "settings")
        cfg_text = (root / "config.yaml").read_text(encoding="utf-8")
        keys = ("data", "backbone", "strategy", "head", "epochs", "lr", "batch_size", "seed", "val", "test", "class_weights", "augment", "method", "method_opt", "target", "target_test", "unlabeled", "from_run", "old_data", "heads")
        doc.table(["setting", "value"], [[k, str(rec.setting(k))] for k in keys if rec.setting(k, "-") not in ("-", None, {})])
        doc.pre(cfg_text, "yaml", summary=f"config.yaml: every resolved setting, to repeat the run ({cfg_text.count(chr(10))} lines)")
    doc.p(f"Written by headstart from the run folder {root.resolve()}.", "note")
    html_text = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
                 f"<title>{_e(title)}</title><style>{CSS}</style></head><body><main>\n" + "\n".join(doc.html) + "\n</main></body></html>\n")
    return html_text, "\n".join(doc.md), failed


def write_report(run_dir: str | Path, *, model: Any = None, eval_ds: Any = None) -> Path:
    """Write ``report.html``, ``report.md`` and ``plots/`` into ``run_dir``; return the HTML path.

    With ``model`` and ``eval_ds`` (the end of ``fit``), first write ``report_data.npz`` (features
    for the t-SNE map, thumbnails for the gallery; see :mod:`.run_data`); without them (``headstart
    report``), use the one already in the folder.
    """
    from .._io import write_text

    run_dir = Path(run_dir)
    if model is not None and eval_ds is not None and (run_dir / "predictions.csv").is_file():
        from .run_data import read_predictions, save_report_data

        rec = read_run(run_dir)
        try:
            save_report_data(run_dir, model, eval_ds, read_predictions(run_dir / "predictions.csv").proba,
                             cache=bool(rec.setting("cache")) and rec.setting("strategy") == "linear", runtime=str(rec.setting("runtime", "auto")),
                             batch_size=int(rec.setting("batch_size", 64)))
        except Exception as e:  # noqa: BLE001 - the report goes on without the map and the gallery
            log.warning("report_data.npz (features for the t-SNE map, gallery thumbnails) could not be written (%s: %s)", type(e).__name__, e)
    html_text, md_text, _ = build_report(run_dir)
    write_text(run_dir / "report.md", md_text)
    write_text(run_dir / "report.html", html_text)
    return run_dir / "report.html"


def report_after_fit(run_dir: str | Path, model: Any = None, eval_ds: Any = None) -> Path | None:
    """:func:`write_report` at the end of ``fit``; a failure is a warning naming it, never an error."""
    t = time.perf_counter()
    try:
        path = write_report(run_dir, model=model, eval_ds=eval_ds)
    except Exception as e:  # noqa: BLE001 - the trained run is saved; the report must not lose it
        log.warning("the report of %s could not be written (%s: %s); the trained run is saved. Fix the problem and run 'headstart report %s'.",
                    run_dir, type(e).__name__, e, run_dir)
        return None
    log.info("report written to %s (%.1f s)", path, time.perf_counter() - t)
    return path
