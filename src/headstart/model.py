"""A trained classifier (backbone + head), its run-folder format, and loading it back.

``model.safetensors`` holds every tensor (``backbone.*``, ``head.*``); ``model.json`` holds what is
needed to rebuild the architecture (backbone spec, head config), the preprocessing, the class names
and the provenance. No pickles: a model loads in a fresh process from these two files alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from . import __version__
from ._io import atomic_path, sha256_file, write_json
from .backbones import Backbone, Provenance, create_backbone, preprocessing_from_dict
from .data import LabeledDataset, Splits
from .errors import DataError, HeadstartError, RunFolderError

FORMAT = "headstart-model"
FORMAT_VERSION = 1


def as_dataset(inputs: Any, *, modality: str = "image") -> LabeledDataset:
    """Turn what a user passes to ``predict`` into a :class:`LabeledDataset` (labels unknown: 0)."""
    if isinstance(inputs, LabeledDataset):
        return inputs
    if isinstance(inputs, Splits):
        if inputs.test is None:
            raise DataError("These splits have no test set to predict on; pass a dataset or a list of files.")
        return inputs.test
    if isinstance(inputs, np.ndarray):
        from .data import from_arrays

        return from_arrays(inputs, np.zeros(len(inputs), dtype=np.int64), classes=["?"])
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    items = [str(p) for p in inputs]
    if not items:
        raise DataError("Nothing to predict: the list of inputs is empty.")
    if modality != "text":
        from .data.images import check_image

        for p in items:
            if not Path(p).is_file():
                raise DataError(f"Cannot read {p!r}: no such file. Check the path.")
            # Checked here, not in the extraction's loader workers, whose errors carry their traceback.
            reason = check_image(p)
            if reason is not None:
                raise DataError(f"Cannot read {p!r}: {reason}.")
    return LabeledDataset(items, np.zeros(len(items), dtype=np.int64), ["?"], modality, "inputs")


def prediction_inputs(
    modality: str,
    *,
    files: Sequence[str] = (),
    texts: Sequence[str] = (),
    text_file: str | Path | None = None,
    stdin: Any = None,
) -> tuple[list[str], list[str]]:
    """``(names, inputs)`` for ``predict``: image paths, or texts from ``texts``, a file of lines, and
    ``"-"`` in ``files`` (read one text per line from ``stdin``, a binary or text stream)."""
    files = [str(f) for f in files or ()]
    if modality != "text":
        if texts or text_file is not None:
            raise DataError("This run classifies images; --text and --file are for text runs. Give image files.")
        if not files:
            raise DataError("Nothing to predict: give one or more image files.")
        return files, files
    from .data.text import read_lines

    out = list(texts or ())
    if text_file is not None:
        out += read_lines(text_file)
    for f in files:
        if f != "-":
            raise DataError(f"This run classifies texts; got a file argument {f!r}. Use --text \"...\", --file lines.txt, or '-' to read stdin.")
        if stdin is None:
            import sys

            stdin = sys.stdin.buffer
        out += read_lines(stdin)
    if not out:
        raise DataError("Nothing to predict: give --text \"...\" (repeatable), --file lines.txt, or '-' and texts on stdin.")
    return out, out


class Model:
    """A classifier made of a :class:`Backbone` and a head; scikit-learn-like ``predict``."""

    def __init__(self, backbone: Backbone, head: nn.Module, classes: Sequence[str], *, modality: str = "image", info: dict | None = None):
        self.backbone = backbone
        self.head = head
        self.classes = list(classes)
        self.modality = modality
        self.info = dict(info or {})
        self.run_dir: Path | None = None

    # --- inference -------------------------------------------------------------------------
    def features(self, inputs: Any, *, batch_size: int = 64, runtime: str = "auto", cache: bool = False, progress: bool = False) -> np.ndarray:
        from .features import extract_features

        ds = as_dataset(inputs, modality=self.modality)
        return extract_features(self.backbone, ds, batch_size=batch_size, runtime=runtime, cache=cache, progress=progress)

    def logits_from_features(self, feats: np.ndarray, *, task: Any = None) -> torch.Tensor:
        """The head's logits, before any calibration; with ``task`` the other tasks' classes at ``-inf``."""
        self.head.eval()
        with torch.inference_mode():
            logits = self.head(torch.as_tensor(feats, dtype=torch.float32))
            if task is not None:
                logits = logits.masked_fill(~torch.as_tensor(self.task_mask(task, len(logits))), float("-inf"))
            return logits

    def proba_from_features(self, feats: np.ndarray, *, task: Any = None) -> np.ndarray:
        """Softmax of the head's logits divided by the run's :attr:`temperature`; with ``task`` (see
        :meth:`predict_proba`) over that task's classes only."""
        with torch.inference_mode():
            return torch.softmax(self.logits_from_features(feats, task=task) / self.temperature, dim=1).numpy()

    @property
    def temperature(self) -> float:
        """The temperature ``fit --calibrate temperature`` fit on validation (``info.calibration``); 1.0 without one."""
        return float((self.info.get("calibration") or {}).get("temperature", 1.0))

    # --- tasks (task-incremental runs: fit --from RUN --heads separate) ----------------------------
    @property
    def tasks(self) -> list[dict] | None:
        """``[{"name", "classes"}, ...]``, one per task in the order learned, for a run continued with
        ``--heads separate`` (one head per task); ``None`` for a model with one head over every class."""
        return self.info.get("tasks") or None

    def task_index(self, task: Any) -> int:
        """The index of ``task``: its name, or its position (0 = the first task learned)."""
        tasks = self.tasks
        if tasks is None:
            raise HeadstartError("This model has one head over all of its classes; a task is chosen only for runs continued with "
                                 "--heads separate (task-incremental). Fix: drop --task.")
        names = [str(t["name"]) for t in tasks]
        if str(task) in names:
            return names.index(str(task))
        if str(task).strip().lstrip("-").isdigit() and 0 <= int(task) < len(tasks):
            return int(task)
        known = "; ".join(f"{i} = {n} ({', '.join(t['classes'])})" for i, (n, t) in enumerate(zip(names, tasks)))
        raise HeadstartError(f"Unknown task {task!r}. This model's tasks: {known}. Fix: --task with one of these names or numbers.")

    def task_mask(self, task: Any, n: int) -> np.ndarray:
        """``(n, K)`` booleans: the classes each of ``n`` inputs is scored over; ``task`` is one task for all,
        or a sequence of one task per input."""
        if isinstance(task, (str, int, np.integer)):
            task = [task] * n
        if len(task) != n:
            raise HeadstartError(f"Got {len(task)} tasks for {n} inputs. Fix: give one task for all inputs, or one per input.")
        idx = [self.task_index(t) for t in task]
        rows = {i: np.isin(self.classes, self.tasks[i]["classes"]) for i in set(idx)}
        return np.stack([rows[i] for i in idx]) if n else np.zeros((0, len(self.classes)), bool)

    def task_of_labels(self, labels: np.ndarray) -> list[int] | None:
        """Each labeled item's task (the task of its class): task-incremental evaluation is told the task,
        as its protocol has it; ``None`` for a model with one head."""
        if self.tasks is None:
            return None
        of = {c: i for i, t in enumerate(self.tasks) for c in t["classes"]}
        return [of[self.classes[int(y)]] for y in labels]

    def predict_proba(self, inputs: Any, *, task: Any = None, **kw: Any) -> np.ndarray:
        """Class probabilities, shape ``(n, num_classes)``, columns in the order of ``classes``. ``task``
        (task-incremental runs, :attr:`tasks`): a task's name or number, or one per input; the
        probabilities are then over that task's classes (0 elsewhere)."""
        return self.proba_from_features(self.features(inputs, **kw), task=task)

    def predict(self, inputs: Any, *, task: Any = None, **kw: Any) -> list[str]:
        """Predicted class names (at the run's operating point, if it has one: :meth:`decide`)."""
        return [self.classes[i] for i in self.decide(self.predict_proba(inputs, task=task, **kw))]

    @property
    def operating_point(self) -> dict[str, Any] | None:
        """``{"rule", "threshold", "positive_class", ...}`` chosen on validation by ``fit --threshold``, or ``None`` (argmax)."""
        return self.info.get("operating_point") or None

    def decide(self, proba: np.ndarray) -> np.ndarray:
        """Class indices from probabilities: argmax, or for a run with an operating point ``p(classes[1]) >= threshold``."""
        op = self.operating_point
        if op is None or proba.shape[1] != 2:
            return proba.argmax(1)
        return (proba[:, 1] >= op["threshold"]).astype(np.int64)

    def decision_metrics(self, y_true: np.ndarray, proba: np.ndarray) -> dict[str, Any]:
        """What the run's decision settings add to its metrics: ``{"operating_point": sensitivity, specificity,
        PPV, NPV, ... at the run's threshold}`` (``fit --threshold``) and ``{"calibration": ECE and NLL before and
        after temperature scaling}`` (``fit --calibrate``); ``{}`` without either."""
        from .evaluate.calibration import split_figures
        from .evaluate.operating import at_threshold

        out: dict[str, Any] = {}
        op = self.operating_point
        if op is not None and proba.shape[1] == 2:
            out["operating_point"] = {"rule": op["rule"], "positive_class": self.classes[1], **at_threshold(y_true, proba[:, 1], op["threshold"])}
        if self.info.get("calibration") and len(y_true):
            out["calibration"] = split_figures(y_true, proba, self.temperature)
        return out

    def evaluate(self, data: Any, **kw: Any) -> dict[str, Any]:
        """Metrics on labeled data (a dataset, splits' test set, or anything ``load_splits`` reads)."""
        from .evaluate.metrics import classification_metrics

        ds = _labeled(data, self.classes)
        proba = self.predict_proba(ds, task=self.task_of_labels(ds.labels), **kw)  # task-incremental: each item's own task
        return {**classification_metrics(ds.labels, proba, self.classes), **self.decision_metrics(ds.labels, proba)}

    # --- persistence -----------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "headstart_version": __version__,
            "modality": self.modality,
            "classes": self.classes,
            "backbone": self.backbone.describe(),
            "head": self.head.config(),
            "info": self.info,
        }

    def save(self, run_dir: str | Path) -> Path:
        """Write ``model.safetensors`` and ``model.json`` into ``run_dir`` (atomically)."""
        from safetensors.torch import save_file

        run_dir = Path(run_dir)
        tensors = {f"backbone.{k}": v.detach().cpu().contiguous().clone() for k, v in self.backbone.state_dict().items()}
        tensors.update({f"head.{k}": v.detach().cpu().contiguous().clone() for k, v in self.head.state_dict().items()})
        with atomic_path(run_dir / "model.safetensors") as tmp:
            save_file(tensors, str(tmp), metadata={"format": FORMAT})
        if hasattr(self.backbone, "save_files"):  # text: config + tokenizer, so the run folder alone rebuilds it
            self.backbone.save_files(run_dir / "backbone")
        meta = self.describe()
        meta["weights_sha256"] = sha256_file(run_dir / "model.safetensors")
        write_json(run_dir / "model.json", meta)
        self.run_dir = run_dir
        return run_dir


def _labeled(data: Any, classes: list[str]) -> LabeledDataset:
    """Labeled evaluation data, with labels in the model's class order.

    Evaluation folders may hold a subset of the classes, or a single image of one: no training checks.
    """
    from .data import load_dataset, load_image_folder, load_manifest
    from .data.folders import _split_layout

    if isinstance(data, Splits):
        data = data.test if data.test is not None else data.train
    if isinstance(data, (str, Path)):
        from .data.load import guess_modality

        if guess_modality(data) == "text":
            from .data.text import load_text_folder, load_text_table

            if Path(data).is_dir():
                layout = _split_layout(Path(data)) or {}
                return load_text_folder(layout.get("test") or layout.get("val") or Path(data), classes=classes, min_per_class=0)
            return load_text_table(data, classes=classes, min_per_class=0)
    if isinstance(data, (str, Path)) and Path(data).is_dir():
        layout = _split_layout(Path(data)) or {}
        folder = layout.get("test") or layout.get("val") or (None if layout else Path(data))
        if folder is None:
            raise DataError(f"{data} has a train/ folder but no test/ or val/ folder to evaluate on; give the test folder itself.")
        return load_image_folder(folder, classes=classes, min_per_class=0)
    if isinstance(data, (str, Path)) and str(data).lower().endswith(".csv"):
        return load_manifest(data, classes=classes, min_per_class=0)
    if isinstance(data, (str, Path)) and str(data).lower().endswith(".npz"):
        from .data.arrays import load_npz_splits

        held = load_npz_splits(data, classes=classes)  # a file with its own splits: its test split
        data = held.test if held is not None else data
    ds = data if isinstance(data, LabeledDataset) else load_dataset(data)
    if ds.classes != classes:
        unknown = sorted(set(ds.classes) - set(classes))
        if unknown:
            raise DataError(
                f"The data has classes the model does not know: {unknown}. The model knows {classes}; "
                "evaluate on data with the same class folders."
            )
        remap = np.array([classes.index(c) for c in ds.classes], dtype=np.int64)
        ds = LabeledDataset(ds.items, remap[ds.labels], list(classes), ds.modality, ds.source, ds.problems)
    return ds


def _read_run(run_dir: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    meta_path, weights_path = run_dir / "model.json", run_dir / "model.safetensors"
    if not run_dir.is_dir():
        raise RunFolderError(f"Run folder {str(run_dir)!r} does not exist; give the folder 'headstart fit' wrote (see runs/).")
    for p in (meta_path, weights_path):
        if not p.is_file():
            raise RunFolderError(f"Run folder {str(run_dir)!r} has no {p.name}; the run did not finish or the folder is not a headstart run.")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunFolderError(f"{meta_path} is not valid JSON ({e}); the run folder is damaged: re-run 'headstart fit'.") from e
    if meta.get("format") != FORMAT or int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise RunFolderError(f"{meta_path} is not a headstart model of a version this headstart ({__version__}) can read.")
    expected = meta.get("weights_sha256")
    if expected and sha256_file(weights_path) != expected:
        raise RunFolderError(f"{weights_path} does not match the hash recorded in model.json; the file is damaged or was replaced.")
    return meta, load_file(str(weights_path))


def _build_backbone(meta: dict[str, Any], tensors: dict[str, torch.Tensor], run_dir: Path) -> Backbone:
    spec = meta["backbone"]["spec"]
    kwargs = dict(spec.get("kwargs", {}))
    if meta.get("modality") == "text":  # architecture and tokenizer from the run folder's backbone/ files
        kwargs["files"] = str(Path(run_dir) / "backbone")
    bb = create_backbone(spec["name"], pretrained=False, **kwargs)
    sd = {k[len("backbone."):]: v for k, v in tensors.items() if k.startswith("backbone.")}
    bb.load_state_dict(sd)
    bb.preprocessing = preprocessing_from_dict(meta["backbone"]["preprocessing"])
    bb.provenance = Provenance.from_dict(meta["backbone"]["provenance"])
    if meta["backbone"].get("feature_precision"):  # the run's bf16/fp32 decision (features.precision): predict uses the same
        bb.feature_precision = meta["backbone"]["feature_precision"]
    bb.eval()
    return bb


def load_backbone_from_run(run_dir: str | Path, *, pretrained: bool = True) -> Backbone:
    """The (possibly fine-tuned) backbone of a run, to transfer from your own model."""
    run_dir = Path(run_dir).resolve()
    meta, tensors = _read_run(run_dir)
    bb = _build_backbone(meta, tensors, run_dir)
    if pretrained:
        bb.provenance = Provenance(f"run:{run_dir}", meta.get("weights_sha256"), "run:" + ",".join(meta["classes"]), bb.provenance.license)
    return bb


def load(run_dir: str | Path) -> Model:
    """Load a saved run as a :class:`Model` (fresh process, no pickles); ``headstart.load`` also takes
    ensemble folders (:func:`headstart.ensemble.load`)."""
    from .heads import create_head

    run_dir = Path(run_dir)
    meta, tensors = _read_run(run_dir)
    bb = _build_backbone(meta, tensors, run_dir)
    head = create_head(**meta["head"])
    head.load_state_dict({k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")})
    head.eval()
    model = Model(bb, head, meta["classes"], modality=meta.get("modality", "image"), info=meta.get("info", {}))
    model.run_dir = run_dir
    return model
