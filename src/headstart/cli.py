"""The ``headstart`` command: thin commands over the library (each calls one library function)."""

from __future__ import annotations

import inspect
import json
import logging
import os
import sys

# The command line owns the process: on small shared CPUs, OpenMP threads that spin while waiting
# make torch 10-25x slower, so let them sleep (before torch is imported; the library sets nothing).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from pathlib import Path
from typing import Any, List, Optional

import typer

from .errors import HeadstartError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False, help="Transfer learning for PyTorch: a strong classifier from a small labeled dataset.")


def _setup_logging(verbose: bool) -> None:
    from rich.console import Console
    from rich.logging import RichHandler

    # Logs go to stderr: stdout is for results (predict --json is piped into other tools).
    handler = RichHandler(console=Console(stderr=True), show_path=False, show_time=False)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s", handlers=[handler], force=True)
    logging.getLogger("headstart").setLevel(logging.INFO)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Also show third-party log messages.")) -> None:
    _setup_logging(verbose)


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Folder for the demo's runs."),
    n_source: int = typer.Option(500, help="Images per source shape class."),
    n_target: int = typer.Option(150, help="Images per target shape class (the small labeled set)."),
    seed: int = typer.Option(0),
) -> None:
    """Learn circles/squares/triangles, transfer to stars/pentagons/hexagons; compare with scratch and ImageNet."""
    from .demo import run_demo

    if not logging.getLogger().isEnabledFor(logging.INFO):
        logging.getLogger("headstart").setLevel(logging.WARNING)
    run_demo(out=out, n_source=n_source, n_target=n_target, seed=seed)


@app.command()
def backbones(modality: Optional[str] = typer.Option(None, help="Only 'image' or 'text' backbones.")) -> None:
    """List the backbones that can be used, and which work offline."""
    from rich.console import Console
    from rich.table import Table

    from .backbones import list_backbones

    table = Table("name", "modality", "offline", "description")
    for b in list_backbones(modality):
        table.add_row(b.name, b.modality, "yes" if b.offline else f"no ({b.offline_note})", b.description)
    Console().print(table)


def _fit(
    ctx: typer.Context,
    data: Optional[str] = typer.Argument(None, help="Image folder (root/<class>/*, optional train/val/test), CSV manifest, .npz, 'shapes:<names>'; or texts: a CSV/TSV/JSONL table or a folder of .txt files per class. Not needed with --resume or a --config that names it."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="A YAML file of settings (a run folder's config.yaml, or 'data:' and 'settings:' groups written by hand); options given on the command line override it."),
    resume: Optional[Path] = typer.Option(None, help="Continue the killed run in this folder from its last checkpoint, with its own settings."),
    **given,
) -> None:
    """Train a classifier by transfer learning and write a run folder."""
    from .fitting import fit as fit_fn, read_config
    from .settings import Settings

    if resume is not None:
        model = fit_fn(data, resume=resume, progress=True)
    else:
        base, file_data = Settings(), None
        if config is not None:
            file_data, base = read_config(config)
        data = data if data is not None else file_data
        if data is None:
            raise HeadstartError("Give the DATA to train on (or --resume RUN to continue a killed run, or --config FILE naming its data).")
        # options left out are None: the file's value (or the default) stays
        model = fit_fn(data, base, progress=True, **{k: v for k, v in given.items() if v is not None and v != []})
    if not getattr(model, "metrics", None):
        return  # a DDP worker process: rank 0 prints the summary
    _print_fit_summary(model)


def _cli_type(annotation: str) -> Any:
    """The command-line type of a settings field from its annotation: bool, float, int, else str
    (``int | str`` fields such as ``devices``/``unfreeze``/``image_size`` are parsed by the settings)."""
    kinds = {k.strip() for k in annotation.split("|")} - {"None"}
    if kinds == {"dict"}:
        return List[str]  # KEY=VALUE, repeatable
    for name, kind in (("bool", bool), ("float", float), ("int", int)):
        if kinds == {name}:
            return kind
    return str


def _setting_options() -> list[inspect.Parameter]:
    """One command-line option per settings field (``--flat-name``, or the field's ``cli`` flags;
    ``cli=()``: Python only), default ``None`` (= not given), help and default from the field."""
    from .settings import setting_fields, flat_name

    params = []
    for _, f in setting_fields():
        kind, dashed = _cli_type(str(f.type)), flat_name(f).replace("_", "-")
        flags = f.metadata.get("cli", (f"--{dashed}/--no-{dashed}",) if kind is bool else (f"--{dashed}",))
        if not flags:
            continue
        shown = f.default if not isinstance(f.default, bool) else ("--" if f.default else "--no-") + flags[0].split("/")[0][2:].removeprefix("no-")
        help_text = f"{f.metadata['help']} [default: {shown}]"
        params.append(inspect.Parameter(flat_name(f), inspect.Parameter.KEYWORD_ONLY, annotation=Optional[kind],
                                        default=typer.Option(None, *flags, help=help_text, show_default=False)))
    return params


def _build_fit_command() -> None:
    sig = inspect.signature(_fit)
    fixed = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    options = _setting_options()

    def fit(ctx: typer.Context, data=None, config=None, resume=None, **given) -> None:
        _fit(ctx, data, config, resume, **given)

    fit.__doc__ = _fit.__doc__
    fit.__signature__ = sig.replace(parameters=fixed + options)
    fit.__annotations__ = {**{p.name: p.annotation for p in fixed}, **{p.name: p.annotation for p in options}, "return": None}
    app.command(name="fit")(fit)


_build_fit_command()


def _print_fit_summary(model) -> None:
    from rich.console import Console

    c = Console()
    m = model.metrics
    for split in ("test", "val"):
        if split in m:
            s = m[split]
            c.print(f"[bold]{split}[/bold]: accuracy {s['accuracy']:.4f}  log loss {s['log_loss']:.4f}  macro F1 {s['macro_f1']:.4f}  (n={s['n']})")
            break
    if m.get("problems"):
        c.print(f"[yellow]{len(m['problems'])} item(s) skipped[/yellow]: " + "; ".join(m["problems"][:5]))
    c.print(f"time: {m['timings_s']['total']:.1f} s   run folder: {model.run_dir}")


@app.command()
def distill(
    teacher: Path = typer.Argument(..., help="The teacher: a finished run folder (any backbone)."),
    data: str = typer.Argument(..., help="Labeled data of the teacher's classes (what 'headstart fit' reads): the student's training data."),
    student: str = typer.Option(..., "--student", help="The student's backbone (see 'headstart backbones'): e.g. scratch_cnn, efficientnet_lite0, run:FOLDER."),
    temperature: float = typer.Option(4.0, help="Softens both networks' outputs in the soft loss (Hinton et al. 2015)."),
    alpha: float = typer.Option(0.7, help="Weight of the soft loss; 1 - alpha weighs the labels' cross-entropy (0: labels alone)."),
    unlabeled: Optional[str] = typer.Option(None, "--unlabeled", help="Unlabeled images added to the transfer set (the teacher's outputs are their only signal)."),
    epochs: Optional[int] = typer.Option(None, help="Epochs (default: fit's)."),
    lr: Optional[float] = typer.Option(None, help="Learning rate (default: fit's for the student's backbone)."),
    image_size: Optional[str] = typer.Option(None, "--image-size", help="The student's input size (default auto, as fit)."),
    seed: Optional[int] = typer.Option(None, help="Random seed (default 0)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Where the run folder goes (default: fit's)."),
) -> None:
    """Train a student network on a finished run's softened outputs (knowledge distillation): fit --method distill."""
    from .fitting import fit as fit_fn

    given = {"epochs": epochs, "lr": lr, "image_size": image_size, "seed": seed, "out": str(out) if out is not None else None}
    model = fit_fn(data, backbone=student, strategy="finetune", method="distill", unlabeled=unlabeled, progress=True,
                   method_opt={"teacher": str(teacher), "temperature": temperature, "alpha": alpha}, **{k: v for k, v in given.items() if v is not None})
    _print_fit_summary(model)
    d = model.metrics.get("distill", {})
    if "student_accuracy" in d:
        print(f"teacher {d['teacher_accuracy']:.4f} -> student {d['student_accuracy']:.4f} accuracy (agreement {d['agreement']:.3f}); "
              f"{d['teacher_parameters'] / max(d['student_parameters'], 1):.1f}x fewer parameters, {d['speedup']:.1f}x the teacher's images/s")


@app.command()
def ensemble(
    runs: List[Path] = typer.Argument(..., help="Two or more finished run folders of the same classes."),
    method: str = typer.Option("average", help="average (mean probability) | vote (majority) | stack (logistic regression on the members' validation predictions)."),
    data: Optional[str] = typer.Option(None, "--data", help="The labeled data the members were trained on: stack fits on its validation split; the ensemble is scored on its test split."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="The ensemble's folder (default runs/ensemble-METHOD-<time>)."),
    overwrite: bool = typer.Option(False, help="Replace an existing --out folder."),
) -> None:
    """Combine finished runs into one saved model that predict, evaluate and report take like a run."""
    from .ensemble import build_ensemble

    ens = build_ensemble([str(r) for r in runs], method=method, data=data, out=str(out) if out is not None else None, overwrite=overwrite)
    e = ens.metrics.get("ensemble")
    if e:
        best = max(e["members"], key=lambda m: m["accuracy"])
        print(f"test accuracy: ensemble {ens.metrics['test']['accuracy']:.4f} (log loss {ens.metrics['test']['log_loss']:.4f}); best member "
              f"{best['accuracy']:.4f} ({best['log_loss']:.4f}), {best['run']}")
    print(f"ensemble folder: {ens.run_dir}")


@app.command()
def predict(
    run: Path = typer.Argument(..., help="A run folder written by 'headstart fit'."),
    files: Optional[List[str]] = typer.Argument(None, help="Images to classify; for a text run, '-' reads texts from stdin (one per line)."),
    text: Optional[List[str]] = typer.Option(None, "--text", "-t", help="A text to classify (text runs; repeatable)."),
    text_file: Optional[Path] = typer.Option(None, "--file", help="A UTF-8 file of texts to classify, one per line (text runs)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON lines instead of a table."),
    top_k: int = typer.Option(1, help="Show the k most likely classes."),
    task: Optional[str] = typer.Option(None, "--task", help="A run continued with --heads separate: the task (name or number, "
                                       "see model.json 'tasks') whose classes the inputs are scored over."),
) -> None:
    """Classify images or texts with a saved run: class and probability per input."""
    from .ensemble import load
    from .model import prediction_inputs

    model = load(run)
    if task is not None:
        model.task_index(task)  # an unknown task, or a model with one head: said before any work
    elif model.tasks is not None:
        logging.getLogger("headstart").warning("this run has one head per task (%s) and no --task was given: scoring over every class, which its training "
                    "never compared across tasks; pass --task NAME", ", ".join(t["name"] for t in model.tasks))
    names, inputs = prediction_inputs(model.modality, files=files or [], texts=text or [], text_file=text_file)
    proba = model.predict_proba(inputs, task=task)
    k = max(1, min(top_k, len(model.classes)))
    key = "text" if model.modality == "text" else "file"
    op = getattr(model, "operating_point", None)
    if op is not None:  # fit --threshold: the decision is p(positive) >= threshold, not argmax
        print(f"threshold {op['threshold']:.4f} on p({op['positive_class']}) ({op['rule']}, chosen on validation)", file=sys.stderr)
    decided = model.decide(proba) if op is not None else proba.argmax(1)
    for f, row, pred in zip(names, proba, decided):
        order = row.argsort()[::-1][:k]
        if as_json:
            print(json.dumps({key: str(f), "prediction": model.classes[pred], "probability": round(float(row[pred]), 6), **({"threshold": op["threshold"]} if op else {}), "top": [{"class": model.classes[i], "probability": round(float(row[i]), 6)} for i in order]}))
        else:
            print(f"{f}\t" + (f"-> {model.classes[pred]}\t" if op else "") + "\t".join(f"{model.classes[i]} {row[i]:.4f}" for i in order))


@app.command()
def evaluate(
    run: Path = typer.Argument(..., help="A run folder written by 'headstart fit'."),
    data: str = typer.Argument(..., help="Labeled data with the same classes (folder or CSV manifest)."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
) -> None:
    """Accuracy, per-class precision/recall/F1 and the confusion matrix of a saved run on labeled data."""
    from .ensemble import load

    model = load(run)
    m = model.evaluate(data)
    if as_json:
        print(json.dumps(m, indent=2))
        return
    _print_metrics(m)
    op = m.get("operating_point")
    if op:  # fit --threshold
        print(f"at threshold {op['threshold']:.4f} on p({op['positive_class']}) ({op['rule']}, chosen on validation): "
              + ", ".join(f"{k} {op[k]:.4f}" for k in ("sensitivity", "specificity", "ppv", "npv", "accuracy") if op.get(k) is not None))


def _print_metrics(m: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    c = Console()
    c.print(f"accuracy {m['accuracy']:.4f}   log loss {m['log_loss']:.4f}   macro F1 {m['macro_f1']:.4f}   n={m['n']}")
    extra = [(label, m.get(k)) for k, label in (("balanced_accuracy", "balanced accuracy"), ("roc_auc", "ROC-AUC"), ("ece", "ECE")) if m.get(k) is not None]
    if extra:
        c.print("   ".join(f"{label} {v:.4f}" for label, v in extra))
    if "sensitivity" in m:
        c.print(f"sensitivity {m['sensitivity']:.4f}   specificity {m['specificity']:.4f}   (positive class {m['positive_class']!r})")
    ci = m.get("ci") or {}
    shown = [(k, ci[k]) for k in ("accuracy", "roc_auc", "sensitivity", "specificity") if ci.get(k)]
    if shown:
        c.print(f"{ci['level']:.0%} bootstrap intervals ({ci['resamples']} resamples): " + "   ".join(f"{k} {lo:.3f}-{hi:.3f}" for k, (lo, hi) in shown))
    for note in m.get("notes", []):
        c.print(f"note: {note}")
    t = Table("class", "precision", "recall", "F1", "support")
    for name, r in m["per_class"].items():
        t.add_row(name, f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}", str(r["support"]))
    c.print(t)
    cm = Table("true \\ predicted", *m["classes"], title="confusion matrix")
    for name, row in zip(m["classes"], m["confusion_matrix"]):
        cm.add_row(name, *[str(v) for v in row])
    c.print(cm)


@app.command()
def report(run: Path = typer.Argument(..., help="A run folder written by 'headstart fit' (or 'headstart curve').")) -> None:
    """(Re)write report.html, report.md and plots/ of a run folder, from the folder alone."""
    from .evaluate.report import write_report

    print(write_report(run))


@app.command()
def explain(
    run: Path = typer.Argument(..., help="A run folder written by 'headstart fit' (an image run)."),
    images: List[Path] = typer.Argument(..., help="Image files to explain."),
    class_name: Optional[str] = typer.Option(None, "--class", help="The class to explain for every image (default: each image's predicted class)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the overlays (IMAGE.CLASS.METHOD.png) and explain.json."),
    method: str = typer.Option("gradcam", "--method", help="gradcam (Selvaraju et al. 2017) | gradcam++ (Chattopadhay et al. 2018)."),
) -> None:
    """Grad-CAM heat maps: where in each image the run's score for a class comes from (the backbone's last convolution)."""
    from .explaining import explain as explain_run

    for r in explain_run(run, images, class_name=class_name, out=out, method=method):
        print(f"{r['image']}: {r['class']} ({r['probability']:.3f}) -> {r['file']}")


@app.command()
def compare(
    runs: List[Path] = typer.Argument(..., help="Run folders written by 'headstart fit'."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Also write OUT.csv and OUT.md."),
    speed: bool = typer.Option(True, help="Measure inference speed (images/s of a forward pass on a batch of random images)."),
) -> None:
    """Side-by-side table of runs: strategy, backbone, metrics, train time, inference speed, model size."""
    from .evaluate.compare import COLUMNS, compare_runs, format_row

    rows = compare_runs(runs, out=out, speed=speed)
    _print_rows([c for c in COLUMNS if any(r.get(c) is not None for r in rows)], [format_row(r) for r in rows])


def _print_rows(cols: list, rows: list) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(*cols)
    for r in rows:
        t.add_row(*["" if r.get(c) is None else f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in cols])
    Console(width=max(160, len(cols) * 12)).print(t)


@app.command()
def curve(
    data: str = typer.Argument(..., help="Image folder, CSV manifest, .npz or 'shapes:<names>' (split once; the test split is fixed)."),
    backbone: str = typer.Option("efficientnet_lite0", "--backbone", "-b", help="Pretrained backbone of the linear probe and the fine-tuned model."),
    fractions: str = typer.Option("0.05,0.1,0.25,0.5,1", help="Fractions of the training labels, comma-separated."),
    seeds: int = typer.Option(3, help="Seeds per fraction (subsample and training)."),
    scratch_backbone: str = typer.Option("scratch_cnn", help="Backbone trained from random weights."),
    methods: str = typer.Option("linear,finetune,scratch", help="Which of linear, finetune, scratch to run."),
    target_acc: float = typer.Option(0.9, help="Target test accuracy for 'time to reach the target'."),
    epochs: int = typer.Option(10, help="Epochs of fine-tuning."),
    scratch_epochs: Optional[int] = typer.Option(None, help="Epochs of training from scratch (default: --epochs)."),
    lr: float = typer.Option(1e-3, help="Learning rate of fine-tuning."),
    scratch_lr: Optional[float] = typer.Option(None, help="Learning rate of training from scratch (default: --lr)."),
    batch_size: int = typer.Option(32),
    val: float = typer.Option(0.15, help="Validation fraction when the data has no val/ folder (subsampled like the training split)."),
    test: float = typer.Option(0.15, help="Test fraction when the data has no test/ folder (fixed, never subsampled)."),
    n_per_class: int = typer.Option(200, help="Images per class of built-in sets (shapes)."),
    cache: bool = typer.Option(False, help="Reuse cached features (faster linear probes, but their timings then omit extraction)."),
    runtime: str = typer.Option("auto", help="Feature extraction runtime: auto | openvino | onnx | torch."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default runs/curve-<time>); may be a run folder."),
) -> None:
    """Accuracy vs labels per class: linear probe and fine-tuning of a pretrained backbone vs training from scratch."""
    from .evaluate.report import summarize_curve
    from .experiments.curve import transfer_curve

    if not logging.getLogger().isEnabledFor(logging.INFO):  # without -v: one line per fit, not every fit's logs
        logging.getLogger("headstart").setLevel(logging.WARNING)
        logging.getLogger("headstart.curve").setLevel(logging.INFO)
    res = transfer_curve(
        data, backbone=backbone, fractions=fractions, seeds=seeds, scratch_backbone=scratch_backbone,
        methods=[m.strip() for m in methods.split(",") if m.strip()], target_acc=target_acc, epochs=epochs,
        scratch_epochs=scratch_epochs, lr=lr, scratch_lr=scratch_lr, batch_size=batch_size, val=val, test=test,
        n_per_class=n_per_class, runtime=runtime, cache=cache, out=out,
    )
    table = summarize_curve(res["rows"])
    ms = list(res["summary"]["methods"])
    points = dict.fromkeys((r["fraction"], r["labels_per_class"]) for r in res["rows"])
    _print_rows(["fraction", "labels/class", *ms], [{"fraction": str(f), "labels/class": n, **{m: table[(f, m)] for m in ms}} for f, n in points])
    for m, d in res["summary"]["methods"].items():
        n = d["labels_per_class_to_target"]
        reached = f"reached at {n} labels/class ({d['seconds_to_target']} s per fit)" if n is not None else "not reached at any fraction"
        print(f"{m}: target {target_acc:g} {reached}; all fits {d['total_seconds']} s wall, {d['total_cpu_seconds']} s CPU")
    print(f"results: {res['out']}")


@app.command()
def rank(
    data: str = typer.Argument(..., help="Image folder, CSV manifest, .npz or 'shapes:<names>' (scored on its training split)."),
    backbones: str = typer.Option(..., "--backbones", "-b", help="Comma-separated backbones: names, timm:<name>, run:<folder>."),
    score: str = typer.Option("logme", help="logme | hscore | hscore_shrink | leep | nce | all (ranked by LogME)."),
    validate: bool = typer.Option(False, help="Also k-fold CV accuracy of a linear probe per backbone, and Kendall tau between score and accuracy."),
    folds: int = typer.Option(5, help="Folds of --validate."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Also write the ranking to OUT (.csv, else JSON)."),
    val: float = typer.Option(0.15, help="Validation fraction held out (as 'fit' does) when the data has no val/ folder."),
    test: float = typer.Option(0.15, help="Test fraction held out (as 'fit' does) when the data has no test/ folder."),
    seed: int = typer.Option(0),
    batch_size: int = typer.Option(64),
    no_cache: bool = typer.Option(False, help="Do not read or write the feature cache."),
    runtime: str = typer.Option("auto", help="Feature extraction runtime: auto | openvino | onnx | torch."),
    text_col: Optional[str] = typer.Option(None, help="Text column of a CSV/TSV/JSONL table (auto-detected by default)."),
    label_col: Optional[str] = typer.Option(None, help="Label column of a table (auto-detected by default)."),
) -> None:
    """Rank backbones for a dataset by transferability scores (LogME, H-score, LEEP, NCE): seconds, no training."""
    from .select import rank_backbones

    ranking = rank_backbones(
        data, backbones=backbones, score=score, validate=validate, folds=folds, val=val, test=test, seed=seed,
        batch_size=batch_size, runtime=runtime, cache=not no_cache, progress=True, text_col=text_col, label_col=label_col,
    )
    _print_ranking(ranking)
    if out is not None:
        print(f"ranking written to {ranking.write(out)}")


def _print_ranking(ranking) -> None:
    from rich.console import Console
    from rich.table import Table

    from .select import get_score

    def fmt(v) -> str:
        return "-" if v is None else f"{v:.4f}"

    extra = [s for s in ranking.scores if s != ranking.score_name]
    cols = ["rank", "backbone", get_score(ranking.score_name).title, *[get_score(s).title for s in extra], "dim", "extract s", "score s"]
    if ranking.folds:
        cols.append(f"CV acc ({ranking.folds}-fold)")
    t = Table(*cols, title=f"{ranking.n_samples} training samples, {ranking.n_classes} classes; higher scores are better; extract s is this call's (near 0 on a cache hit)")
    for r in ranking.rows:
        row = [str(r.rank), r.backbone, fmt(r.score), *[fmt(r.scores.get(s)) for s in extra], str(r.dim), f"{r.extract_s:.1f}", f"{r.score_s:.3f}"]
        if ranking.folds:
            row.append("-" if r.cv_accuracy is None else f"{r.cv_accuracy:.4f} ± {r.cv_std:.4f}")
        t.add_row(*row)
    Console(width=max(120, 14 * len(cols))).print(t)
    for r in ranking.rows:
        for s, note in r.notes.items():
            print(f"{r.backbone}: {get_score(s).title} not computed: {note}")
    for s, k in (ranking.kendall or {}).items():
        tau = "undefined (needs 2 or more scored backbones with distinct values)" if k["tau"] is None else f"{k['tau']:.3f}"
        p = "" if k["p"] is None else f" (p={k['p']:.3f})"
        print(f"Kendall tau between {get_score(s).title} and CV accuracy over {k['n']} backbones: {tau}{p}")


@app.command()
def gap(
    source: str = typer.Argument(..., help="One domain: image folder (class folders or flat), manifest, .npz or 'shapes:<names>'; labeled or not."),
    target: str = typer.Argument(..., help="The other domain, of the same kind (a flat folder of images or an images-only .npz is unlabeled)."),
    backbone: str = typer.Option("efficientnet_lite0", "--backbone", "-b", help="The backbone whose features are compared."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder for gap.json, gap.html and gap_map.png (default runs/gap-<source>-<target>-<time>)."),
    max_items: int = typer.Option(1000, help="At most this many items of each domain (a seeded subsample), for cost."),
    n_perm: int = typer.Option(200, help="Permutations of the MMD test."),
    folds: int = typer.Option(5, help="Cross-validation folds of the domain classifier (proxy A-distance)."),
    map_items: int = typer.Option(500, help="Items per domain on the t-SNE map (0: no map)."),
    image_size: str = typer.Option("auto", help="Input size in pixels, or 'auto' (from the source's native size; one size for both)."),
    seed: int = typer.Option(0, help="Seed of the subsamples, permutations, folds and map."),
    batch_size: int = typer.Option(64),
    no_cache: bool = typer.Option(False, help="Do not read or write the feature cache."),
    runtime: str = typer.Option("auto", help="Feature extraction runtime: auto | openvino | onnx | torch."),
) -> None:
    """How far apart two domains are on a backbone's features (MMD, CORAL, Fréchet, proxy A-distance), and what to try."""
    from .gap import domain_gap

    res = domain_gap(
        source, target, backbone=backbone, out=out, max_items=max_items, n_perm=n_perm, folds=folds, map_items=map_items,
        image_size=image_size, seed=seed, batch_size=batch_size, cache=not no_cache, runtime=runtime, progress=True,
    )
    _print_gap(res)


def _print_gap(res) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from .gap.report import measure_rows

    m = res.measures
    t = Table("measure", "value", "no-shift reference", "what it means",
              title=f"{res.source_name} ({m['n_source']} items) vs {res.target_name} ({m['n_target']} items), {res.backbone}"
              + (f" at {res.image_size} px" if res.image_size else ""))
    for row in measure_rows(m):
        t.add_row(*[escape(str(c)) for c in row])
    c = Console(width=max(120, Console().width))
    c.print(t)
    c.print(escape(res.sample_note), style="dim")
    v = res.verdict
    c.print(f"[bold]{escape(v.title)}[/bold]. {escape(v.seen)}")
    c.print(f"[bold]What to try:[/bold] {escape(v.advice)}")
    print(f"results: {res.out / 'gap.html'}  ({res.seconds.get('total', 0):.1f} s)")


@app.command()
def export(
    run: Path = typer.Argument(..., help="A run folder written by 'headstart fit' (image runs)."),
    format: str = typer.Option("onnx", "--format", help="Export format: onnx (model.onnx) or openvino (model.xml + model.bin)."),
    quantize: Optional[str] = typer.Option(None, "--quantize", help="Also write an INT8 model (ONNX Runtime static quantization): int8."),
    prune: Optional[float] = typer.Option(None, "--prune", help="Remove this share of the channels (0-1, e.g. 0.3; torch-pruning) and fine-tune on the run's training split before exporting."),
    prune_epochs: Optional[int] = typer.Option(None, "--prune-epochs", help="Fine-tuning epochs after --prune (default 6)."),
    out: Path = typer.Option(..., "--out", help="Folder for the model, preprocessing.json and export.json."),
    calibration: Optional[str] = typer.Option(None, "--calibration", help="Labeled images to calibrate and check on (default: the run's validation split)."),
    min_agreement: Optional[float] = typer.Option(None, "--min-agreement", help="INT8: lowest top-1 agreement with the fp32 model accepted (default 0.99)."),
    max_diff: Optional[float] = typer.Option(None, "--max-diff", help="fp32: largest |logit difference| to eager torch accepted (default 1e-3)."),
    max_accuracy_drop: Optional[float] = typer.Option(None, "--max-accuracy-drop", help="--prune: largest validation accuracy loss accepted (default 0.02)."),
) -> None:
    """Export a run as one graph (backbone + head; optionally pruned, INT8), checked against the run, with a speed table."""
    from .evaluate.export_table import COLUMNS
    from .export import export_run
    from .export.onnx import format_table

    res = export_run(run, format=format, quantize=quantize, prune=prune, prune_epochs=prune_epochs, out=out, calibration=calibration,
                     min_agreement=min_agreement, max_diff=max_diff, max_accuracy_drop=max_accuracy_drop)
    t = res.report["timing"]
    print(f"checked on {res.report['checked_on']['n']} images ({res.report['checked_on']['data']}); batch {t['batch_size']}, {t['threads']} threads")
    _print_rows(COLUMNS, [dict(zip(COLUMNS, r)) for r in format_table(res.report)])
    print(f"export folder: {res.out}")


@app.command()
def serve(
    path: Path = typer.Argument(..., help="A run folder ('headstart fit') or an export folder ('headstart export')."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (127.0.0.1: this machine only)."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    max_request_mb: float = typer.Option(20.0, "--max-request-mb", help="Largest request body accepted, in MB (413 above)."),
    max_batch: int = typer.Option(32, "--max-batch", help="Most inputs predicted in one batch (dynamic batching of concurrent requests)."),
) -> None:
    """Serve predictions over HTTP: POST /predict (multipart 'file' fields, or JSON {"text": ...}), GET /health, /metadata, / (a page)."""
    from .export.serve import serve as run_service

    run_service(path, host=host, port=port, max_request_bytes=int(max_request_mb * 1024 * 1024), max_batch=max_batch)


def main() -> None:
    try:
        app()
    except HeadstartError as e:
        from rich.console import Console
        from rich.markup import escape

        # One line whatever the width (grep-able logs); the message is text, not markup ("[...]" stays).
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/bold red] {escape(str(e))}")
        sys.exit(2)


if __name__ == "__main__":
    main()
