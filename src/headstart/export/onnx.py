"""``export_run``: a run's classifier as one ONNX graph (and INT8), checked against eager torch, timed.

See the package doc for the files written and the thresholds. Speed rows (``export.json``
``rows``): eager torch fp32 (channels-last, as feature extraction runs it), ONNX Runtime fp32 and
INT8, each on the same batch of 32 preprocessed validation images, with the same thread count, in
this process, after two warm-up runs; images/s is the median over at least :data:`TIME_REPS` runs.
"""

from __future__ import annotations

import copy
import json
import logging
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from .._io import write_json
from .._util import available_cores
from ..data import LabeledDataset, Splits
from ..errors import DataError, HeadstartError, RunFolderError
from ..features.runtime import OPSET, OnnxRunner, TorchRunner
from .classifier import PREPROCESSING_FORMAT
from .quantize import QUANT_FORMAT, quantize_int8

FORMATS = ("onnx", "openvino")
QUANTIZE = ("int8",)
MAX_DIFF_FP32 = 1e-3
MIN_AGREEMENT_INT8 = 0.99
MAX_ITEMS = 1000  # parity images at most (the first of the split)
MAX_CALIBRATION = 256
BATCH = 32
TIME_REPS = 10
log = logging.getLogger("headstart")


@dataclass
class ExportResult:
    out: Path
    report: dict[str, Any]

    @property
    def rows(self) -> dict[str, dict[str, Any]]:
        return self.report["rows"]


class Classifier(nn.Module):
    """Backbone and head as one module: images -> logits."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class _StaticPadConv(nn.Module):
    """A TF-'SAME' convolution with its padding fixed for one input size (no shape ops in the graph)."""

    def __init__(self, conv: nn.Conv2d, pad: list[int]):
        super().__init__()
        self.pad, self.conv = nn.ZeroPad2d(tuple(pad)), conv

    def forward(self, x):
        return self.conv._conv_forward(self.pad(x), self.conv.weight, self.conv.bias)


def _static_same_padding(module: nn.Module, size: tuple[int, int]) -> nn.Module:
    """A copy of ``module`` whose timm ``Conv2dSame`` layers pad statically for inputs of ``size``.

    Their dynamic padding exports as Shape/Gather/Pad chains that ONNX Runtime's quantizer cannot
    handle ("Graph is not a DAG"); the input size of an export is fixed, so the padding is too.
    """
    from timm.layers.padding import pad_same_arg

    module = copy.deepcopy(module).eval()
    same = {n: m for n, m in module.named_modules() if type(m).__name__ == "Conv2dSame"}
    if not same:
        return module
    sizes: dict[str, tuple[int, int]] = {}
    hooks = [m.register_forward_pre_hook(lambda m, a, n=n: sizes.__setitem__(n, tuple(a[0].shape[-2:]))) for n, m in same.items()]
    with torch.no_grad():
        module(torch.zeros(1, 3, *size))
    for h in hooks:
        h.remove()
    for name, m in same.items():
        parent = module.get_submodule(name.rpartition(".")[0]) if "." in name else module
        conv = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, 0, m.dilation, m.groups, m.bias is not None)
        conv.load_state_dict(m.state_dict())
        setattr(parent, name.rpartition(".")[2], _StaticPadConv(conv, pad_same_arg(list(sizes[name]), m.kernel_size, m.stride, m.dilation)))
    return module


def _export_graph(module: nn.Module, size: tuple[int, int], path: Path) -> None:
    import contextlib
    import io
    import warnings

    x = torch.zeros(2, 3, *size)  # batch 2: the batch axis cannot be specialised to 1
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), str(path), input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, opset_version=OPSET,
                          do_constant_folding=True, dynamo=False)


def _reindex(ds: LabeledDataset, classes: list[str], what: str) -> LabeledDataset:
    if ds.classes == classes:
        return ds
    unknown = sorted(set(ds.classes) - set(classes))
    if unknown:
        raise DataError(f"The {what} has classes the run does not know: {unknown} (the run knows {classes}). "
                        "Fix: give --calibration data with the run's class folders.")
    remap = np.array([classes.index(c) for c in ds.classes], dtype=np.int64)
    return LabeledDataset(ds.items, remap[ds.labels], list(classes), ds.modality, ds.source, ds.problems)


class RunData:
    """The run's recorded data source and settings (``config.yaml``), and its splits reloaded with the
    run's fractions and seed at most once (the parity check and ``--prune``'s retraining share them)."""

    def __init__(self, run: Path):
        from ..run_folder import read_config
        from ..settings import Settings

        self.data, self.settings = read_config(run / "config.yaml") if (run / "config.yaml").is_file() else (None, Settings())
        self._splits: Splits | None = None

    def splits(self) -> Splits:
        if self._splits is None:
            from ..data import load_splits

            d = self.settings.data
            self._splits = load_splits(self.data, val=d.val, test=d.test, seed=self.settings.training.seed, strict=d.strict)
        return self._splits


def check_data(run: Path, classes: list[str], calibration: Any, recorded: RunData | None = None) -> tuple[LabeledDataset, str]:
    """The labeled images the export is calibrated and checked on, and what they are (for export.json)."""
    recorded = recorded or RunData(run)
    source = calibration if calibration is not None else recorded.data
    if source is None:
        raise DataError(f"The run {str(run)!r} was trained on in-memory data (config.yaml records no data source), so its validation "
                        "images cannot be reloaded for calibration and the parity check. Fix: pass --calibration DATA "
                        "(Python: calibration=...), labeled images of the run's classes.")
    try:
        if isinstance(source, LabeledDataset):
            ds, what = source, f"calibration data {source.source}"
        elif calibration is None or isinstance(source, Splits):  # the run's own split, reloaded with its fractions and seed
            sp = source if isinstance(source, Splits) else recorded.splits()
            ds = sp.val if sp.val is not None and len(sp.val) else sp.train
            what = f"{'calibration' if calibration is not None else 'validation'} split of {ds.source if isinstance(source, Splits) else source}"
        else:  # --calibration DATA: all of it (its val/ or test/ folder when it has split folders)
            ds, what = _calibration_dataset(source), f"calibration data {source}"
    except (OSError, DataError) as e:
        fix = "Fix: check the path given to --calibration." if calibration is not None else "Fix: pass --calibration DATA with labeled images of the run's classes."
        raise DataError(f"Cannot read the {'calibration' if calibration is not None else 'run'}'s data {str(source)!r} ({e}). {fix}") from None
    if ds.modality != "image" or not len(ds):
        raise DataError(f"The {what} holds no images. Fix: pass --calibration DATA with labeled images of the run's classes.")
    return _reindex(ds, classes, what), what


def _calibration_dataset(source: Any) -> LabeledDataset:
    from ..data import load_dataset, load_image_folder
    from ..data.folders import _split_layout

    path = Path(str(source)).expanduser()
    layout = _split_layout(path) if path.is_dir() else None
    if layout:
        return load_image_folder(layout.get("val") or layout.get("test") or layout["train"], min_per_class=0)
    return load_dataset(source)


def _batches(ds: LabeledDataset, tf, n: int) -> list[torch.Tensor]:
    return [torch.stack([tf(ds.load(i)) for i in range(j, min(j + BATCH, n))]) for j in range(0, n, BATCH)]


def _speed(fn, x) -> float:
    fn(x)
    fn(x)  # warm-up: not timed
    times, t_end = [], time.perf_counter() + 1.0
    while len(times) < TIME_REPS or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return len(x) / float(np.median(times))


def _row(path: Path | None, logits: np.ndarray, ref: np.ndarray, y: np.ndarray, speed: float, *, src: np.ndarray | None = None,
         module: nn.Module | None = None) -> dict[str, Any]:
    """A table row: accuracy and top-1 agreement against the run (``ref``), max |diff| against the eager model it was made from (``src``)."""
    src = ref if src is None else src
    if path is not None:
        name, mb = path.name, sum(p.stat().st_size for p in (path, path.with_suffix(".bin")) if p.is_file()) / 2**20
    else:  # an in-memory module: its fp32 tensors
        name, mb = "(eager torch, in memory)", sum(t.numel() * t.element_size() for t in module.state_dict().values()) / 2**20
    return {"file": name, "size_mb": round(mb, 3), "images_per_s": round(speed, 1),
            "accuracy": round(float((logits.argmax(1) == y).mean()), 4), "agreement": round(float((logits.argmax(1) == ref.argmax(1)).mean()), 4),
            "max_abs_diff": float(np.abs(logits - src).max())}


def export_run(run: str | Path, *, format: str = "onnx", quantize: str | None = None, prune: float | None = None, prune_epochs: int | None = None,
               out: str | Path, calibration: Any = None, min_agreement: float | None = None, max_diff: float | None = None,
               max_accuracy_drop: float | None = None, quant_format: str = QUANT_FORMAT, threads: int | None = None) -> ExportResult:
    """Export the run in ``run`` to ``out`` (see the package doc); returns the folder and ``export.json``'s content."""
    from ..model import load
    from .prune import DEFAULT_EPOCHS, MAX_ACCURACY_DROP_PRUNED, check_amount, check_installed

    if format not in FORMATS:
        raise HeadstartError(f"The export format must be one of {set(FORMATS)}; got {format!r}.")
    if quantize is not None and quantize not in QUANTIZE:
        raise HeadstartError(f"--quantize must be one of {set(QUANTIZE)} (or left out for fp32 only); got {quantize!r}.")
    if prune is not None:
        prune = check_amount(prune)
        check_installed()  # torch-pruning missing: say so before any work
    run, out = Path(run), Path(out)
    if (run / "ensemble.json").is_file():
        raise RunFolderError(f"{str(run)!r} is an ensemble folder; export takes one run folder (exporting ensembles is not built). Fix: export a member run.")
    meta_path = run / "model.json"
    if meta_path.is_file() and json.loads(meta_path.read_text(encoding="utf-8")).get("modality") == "text":
        raise HeadstartError(f"{str(run)!r} is a text run; export handles image runs only (text export and pruning, with its "
                             "tokenizer, are not built). Fix: export an image run, or use the run with 'headstart predict'.")
    if any((out / f).exists() for f in ("model.onnx", "model.xml", "model.json")):
        raise HeadstartError(f"{str(out)!r} already holds an export or a run; choose another --out or remove it first.")
    model = load(run)  # a missing or damaged run folder: its RunFolderError names the fix
    if model.tasks is not None:
        raise HeadstartError("This run has one head per task (--heads separate); its predictions depend on the task given, which one graph "
                             "does not take. Exporting task-incremental runs is not built. Fix: export a run with one head.")
    recorded = RunData(run)
    ds, what = check_data(run, model.classes, calibration, recorded)
    n = min(len(ds), MAX_ITEMS)
    pre = model.backbone.preprocessing
    size = (int(pre.input_size[0]), int(pre.input_size[1]))
    batches = _batches(ds, pre.transform(), n)
    y = np.asarray(ds.labels[:n])
    threads = threads or available_cores()
    clf = Classifier(model.backbone, model.head).eval()
    max_diff = max_diff if max_diff is not None else MAX_DIFF_FP32
    min_agreement = min_agreement if min_agreement is not None else MIN_AGREEMENT_INT8
    max_drop = max_accuracy_drop if max_accuracy_drop is not None else MAX_ACCURACY_DROP_PRUNED
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)  # the same thread count as ONNX Runtime's sessions; restored below
    try:
        with torch.inference_mode():
            ref = np.concatenate([clf(x).numpy() for x in batches])
        source, pruning = clf, None
        if prune is not None:  # the pruned, retrained model is what gets exported; its rows are checked against the run
            source, pruning = _pruned(run, recorded, model, clf, calibration, prune, prune_epochs if prune_epochs is not None else DEFAULT_EPOCHS, size)
            torch.set_num_threads(threads)
        with torch.inference_mode():
            src_ref = ref if source is clf else np.concatenate([source(x).numpy() for x in batches])
        export_module = _static_same_padding(source, size)
        with tempfile.TemporaryDirectory(prefix="headstart-export-") as tmp:
            tmp = Path(tmp)
            fp32 = tmp / "model.onnx"
            try:
                _export_graph(export_module, size, fp32)
            except Exception as e:  # noqa: BLE001 - any exporter failure, with its reason
                raise HeadstartError(f"This run's model cannot be exported to ONNX ({type(e).__name__}: {e}). Fix: none in headstart yet; "
                                     "use the run folder with 'headstart predict'.") from e
            files = {"fp32": fp32}
            if quantize == "int8":
                quantize_int8(fp32, tmp / "model_int8.onnx", [x.numpy() for x in batches][: -(-MAX_CALIBRATION // BATCH)], quant_format=quant_format)
                files["int8"] = tmp / "model_int8.onnx"
            if format == "openvino":
                from .openvino import onnx_to_ir

                files = {k: onnx_to_ir(p, p.with_suffix(".xml")) for k, p in files.items()}
            timing = torch.cat(batches)[:BATCH]
            if len(timing) < BATCH:
                timing = timing.repeat(-(-BATCH // len(timing)), 1, 1, 1)[:BATCH]
            rows = {"torch_fp32": _row(run / "model.safetensors", ref, ref, y, _speed(TorchRunner(clf, torch.device("cpu")), timing))}
            rows["torch_fp32"]["file"] = "model.safetensors (run)"
            if pruning is not None:
                rows["torch_pruned"] = _row(None, src_ref, ref, y, _speed(TorchRunner(source, torch.device("cpu")), timing), module=source)
            agree_src = {}
            for key, path in files.items():
                runner = OnnxRunner(path, chunk=BATCH, threads=threads) if format == "onnx" else OpenVinoSessionRunner(path, threads)
                logits = np.concatenate([runner(x) for x in batches])
                name = f"{format}_{'pruned_' if pruning is not None else ''}{key}"
                rows[name] = _row(path, logits, ref, y, _speed(runner, timing), src=src_ref)
                agree_src[key] = (name, float((logits.argmax(1) == src_ref.argmax(1)).mean()))
            _check(rows, agree_src, max_diff * max(1.0, float(np.abs(src_ref).max())), min_agreement, pruning, max_drop)
            report = {
                "run": str(run), "format": format, "quantize": quantize, "quant_format": quant_format if quantize else None,
                "prune": pruning,
                "checked_on": {"data": what, "n": int(n), "calibration_n": int(min(n, MAX_CALIBRATION)) if quantize else 0},
                "thresholds": {"fp32_max_abs_diff": max_diff, "fp32_rule": "max |diff| <= fp32_max_abs_diff * max(1, max |eager logit|)",
                               "int8_min_agreement": min_agreement,
                               **({"pruned_max_accuracy_drop": max_drop} if pruning is not None else {})},
                "timing": {"batch_size": BATCH, "threads": threads, "cpu": platform.processor() or platform.machine(), "warmup_runs": 2,
                           "statistic": "median over >= 10 runs and >= 1 s"},
                "rows": rows,
                "versions": _versions(format),
            }
            out.mkdir(parents=True, exist_ok=True)
            for key, path in files.items():
                for p in (path, path.with_suffix(".bin")) if format == "openvino" else (path,):
                    shutil.move(str(p), out / p.name)
            write_json(out / "preprocessing.json", _preprocessing(model, size, {k: p.name for k, p in files.items()}, pruning))
            write_json(out / "export.json", report)
    finally:
        torch.set_num_threads(old_threads)
    record_export(run, out, report)
    return ExportResult(out, report)


class OpenVinoSessionRunner:
    """An OpenVINO export timed and checked like :class:`OnnxRunner` (torch batch in, logits out)."""

    name = "openvino"

    def __init__(self, path: Path, threads: int):
        from .openvino import OpenVinoSession

        self.session = OpenVinoSession(path, threads)

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        return self.session.run(None, {"images": x.numpy()})[0]


def _pruned(run: Path, recorded: RunData, model: Any, clf: nn.Module, calibration: Any, amount: float, epochs: int,
            size: tuple[int, int]) -> tuple[nn.Module, dict]:
    """The run's classifier with ``amount`` of its channels pruned and retrained on the run's training split."""
    from .prune import finetune_pruned, prune_classifier

    splits = _train_splits(run, recorded, model.classes, calibration)
    settings = recorded.settings
    name = model.info.get("backbone") or model.backbone.describe()["spec"]["name"]
    pruned, info = prune_classifier(clf, amount, torch.zeros(2, 3, *size), what=f"The backbone {name!r}")
    info["finetune"] = finetune_pruned(pruned, splits, settings, epochs=epochs)
    return pruned, info


def _train_splits(run: Path, recorded: RunData, classes: list[str], calibration: Any) -> Splits:
    """The splits the pruned model is retrained on: ``calibration`` when it is a :class:`Splits`, else the run's recorded data."""
    sp = calibration if isinstance(calibration, Splits) else None
    if sp is None and recorded.data is not None:
        try:
            sp = recorded.splits()
        except (OSError, DataError) as e:
            raise DataError(f"--prune retrains on the run's training data, which cannot be read ({e}). Fix: restore {recorded.data!r}, "
                            "or export without --prune.") from None
    if sp is None:
        raise DataError(f"--prune retrains the pruned model on the run's training split, and the run {str(run)!r} was trained on in-memory "
                        "data (config.yaml records no data source). Fix: in Python pass the run's splits as calibration=Splits(...), "
                        "or export without --prune.")
    if sp.train is None or not len(sp.train) or sp.train.modality != "image":
        raise DataError("--prune needs labeled training images, and the run's training split holds none. Fix: export without --prune.")
    val = _reindex(sp.val, classes, "validation split") if sp.val is not None and len(sp.val) else None
    return Splits(_reindex(sp.train, classes, "training split"), val, None)


def record_export(run: Path, out: Path, report: dict[str, Any]) -> None:
    """Add this export's table to ``RUN/exports.json`` (keyed by the export folder), where the run's report finds it."""
    from ..evaluate.export_table import EXPORTS_FILE, EXPORTS_FORMAT

    path = run / EXPORTS_FILE
    try:
        known = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        exports = known.get("exports") if isinstance(known, dict) and isinstance(known.get("exports"), dict) else {}
        exports[str(out.resolve())] = {k: report[k] for k in ("format", "quantize", "prune", "checked_on", "timing", "rows")}
        write_json(path, {"format": EXPORTS_FORMAT, "exports": exports})
    except (OSError, ValueError) as e:  # a read-only run folder: the export itself is done and written
        log.warning("could not record the export in %s (%s); the run's report will not show its table", path, e)


def _check(rows: dict, agree_src: dict, max_diff: float, min_agreement: float, pruning: dict | None, max_drop: float) -> None:
    """Refuse the export (nothing written) when a graph strays from the eager model it was exported from, or pruning cost too much."""
    name, _ = agree_src["fp32"]
    fp = rows[name]
    if not fp["max_abs_diff"] <= max_diff:
        raise HeadstartError(f"The {name} graph's logits differ from eager torch by up to {fp['max_abs_diff']:.3g} (> {max_diff:g}; top-1 "
                             f"agreement {fp['agreement']:.4f}); nothing was written. Fix: report it, or accept it with --max-diff (per unit of the largest |logit|).")
    if "int8" in agree_src:
        name, agreement = agree_src["int8"]
        if not agreement >= min_agreement:
            raise HeadstartError(f"The INT8 model agrees with eager torch on {agreement:.2%} of the top-1 predictions (< {min_agreement:.2%}; "
                                 f"accuracy {rows[name]['accuracy']:.4f} vs {rows['torch_fp32']['accuracy']:.4f}); nothing was written. Fix: more or "
                                 "more representative --calibration data, export fp32 only (drop --quantize), or accept it with --min-agreement.")
    if pruning is not None:
        drop = rows["torch_fp32"]["accuracy"] - rows["torch_pruned"]["accuracy"]
        if not drop <= max_drop:
            raise HeadstartError(f"The pruned model's accuracy is {rows['torch_pruned']['accuracy']:.4f}, {drop:.1%} below the run's "
                                 f"{rows['torch_fp32']['accuracy']:.4f} (> {max_drop:.1%} allowed); nothing was written. Fix: a smaller --prune, "
                                 "more --prune-epochs, or accept it with --max-accuracy-drop.")


def _preprocessing(model: Any, size: tuple[int, int], files: dict[str, str], pruning: dict | None = None) -> dict[str, Any]:
    pre = model.backbone.preprocessing
    return {
        "format": PREPROCESSING_FORMAT, "format_version": 1, "headstart_version": __version__,
        "models": files, "runtime": "openvino" if next(iter(files.values())).endswith(".xml") else "onnxruntime",
        "pruned": None if pruning is None else {"amount": pruning["amount"], "params": pruning["params"], "macs": pruning["macs"]},
        "default_model": "int8" if "int8" in files else "fp32",
        "input": {"name": "images", "dtype": "float32", "layout": "NCHW", "channels": 3, "color": "RGB", "height": size[0], "width": size[1],
                  "batch": "dynamic"},
        "output": {"name": "logits", "meaning": "unnormalised class scores, columns in the order of 'classes'; softmax gives probabilities"},
        "resize": {"interpolation": pre.interpolation, "crop_pct": pre.crop_pct,
                   "rule": "crop_pct >= 1: resize to (height, width); else resize the short side to round(min(height, width) / crop_pct) "
                           "(long side int(short * long / short_side)) and centre-crop (height, width)"},
        "scale": 1 / 255, "mean": list(pre.mean), "std": list(pre.std),
        "normalize": "x = (pixel * scale - mean) / std per channel",
        "classes": list(model.classes),
        "backbone": {"id": model.info.get("backbone") or model.backbone.describe()["spec"]["name"], "provenance": model.backbone.provenance.to_dict()},
    }


def _versions(format: str = "onnx") -> dict[str, str]:
    import onnx
    import onnxruntime

    v = {"headstart": __version__, "torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
    if format == "openvino":
        import openvino

        v["openvino"] = openvino.__version__
    try:
        import torch_pruning

        v["torch_pruning"] = torch_pruning.__version__
    except ImportError:
        pass
    return v


def format_table(report: dict[str, Any]) -> list[list[str]]:
    """The rows of ``export.json`` as text: model, MB, images/s, speed vs torch, accuracy, agreement, max |diff|."""
    from ..evaluate.export_table import table_rows

    return table_rows(report)
