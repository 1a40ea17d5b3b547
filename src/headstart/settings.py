"""Every setting of a fit, in one typed object: :class:`Settings`, grouped the way users think.

``Settings(data=DataSettings(...), backbone=..., head=..., training=..., hardware=..., output=...)``:
frozen dataclasses, validated when built (the errors name the setting and what it accepts). Each
field has one *flat name* (the keyword of :func:`headstart.fit` and, with dashes, the option of
``headstart fit``): the field's name, or ``metadata["flat"]`` where the group already says it
(``backbone.name`` is ``backbone``, ``head.kind`` is ``head``). Help texts live on the fields too,
so the command line, the Python keywords and ``config.yaml`` are all read from here and cannot drift.

Example::

    s = Settings.from_flat(strategy="finetune", epochs=5, image_size=96)
    s.training.epochs            # 5
    s.flat()["image_size"]       # 96
    Settings.from_dict(s.to_dict()) == s   # config.yaml round trip
    s.replace(lr=3e-4)           # a copy with one setting changed (validated again)
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator, Mapping

from .errors import HeadstartError

STRATEGIES = ("linear", "finetune", "progressive", "auto", "setfit")
PAIR_STRATEGIES = ("setfit", "auto")  # the strategies that read --pairs
HEADS = ("logreg", "mlp", "bagging", "boosting", "stacking")
CALIBRATIONS = ("temperature", "none")
SAMPLERS = ("shuffle", "balanced")
#: Heads fit by scikit-learn on cached features (headstart.heads.ensembles): --strategy linear only.
FEATURE_ONLY_HEADS = ("bagging", "boosting", "stacking")


def opt(default: Any, help: str, **extra: Any) -> Any:
    """A settings field: its default, its help text, and optionally ``flat`` (its flat name),
    ``cli`` (the option's flags when they differ from ``--flat-name``), ``cli_default`` (how the
    command line spells the default, e.g. ``--no-cache`` for ``cache=True``)."""
    return field(default=default, metadata={"help": help, **extra})


def _choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise HeadstartError(f"The {name!r} parameter must be one of {{{', '.join(repr(c) for c in choices)}}}; got {value!r}.")


def _fraction(name: str, value: Any) -> None:
    try:
        ok = 0.0 <= float(value) < 1.0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise HeadstartError(f"The {name!r} parameter must be a fraction in [0, 1); got {value!r}.")


def _whole(name: str, value: Any, low: int, what: str = "") -> int:
    try:
        whole = not isinstance(value, bool) and int(value) == value
    except (TypeError, ValueError):
        whole = False
    if not whole:
        raise HeadstartError(f"The {name!r} parameter must be a whole number{what}; got {value!r}.")
    if int(value) < low:
        raise HeadstartError(f"The {name!r} parameter must be at least {low}{what}; got {value!r}.")
    return int(value)


def _positive(name: str, value: Any, allow_none: bool = True, what: str = "number") -> None:
    if value is None and allow_none:
        return
    try:
        ok = float(value) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise HeadstartError(f"The {name!r} parameter must be a positive {what}; got {value!r}.")


@dataclass(frozen=True)
class DataSettings:
    """How the data is read and split."""

    val: float = opt(0.15, "Validation fraction when the data has no val/ folder.")
    test: float = opt(0.15, "Test fraction when the data has no test/ folder.")
    strict: bool = opt(False, "Fail on the first unreadable image (or bad text row) instead of skipping it.")
    text_col: str | None = opt(None, "Text column of a CSV/TSV/JSONL table (default: text, sentence, review, ...).")
    label_col: str | None = opt(None, "Label column of a table (default: label, class, target, ...).")
    classes: str | None = opt(None, "Comma-separated class names for the integer labels 0, 1, ... of a .npz file (default: a "
                              "'classes' array in the file, else the label values).")
    target: str | None = opt(
        None, "Target-domain data for domain adaptation (--method dan|coral|dann): a folder of images with or without class folders, "
        "or any data source headstart reads; its labels, if any, are not used.")
    target_test: str | None = opt(
        None, "Labeled target-domain data to evaluate on (classes among the training data's): metrics.json 'target_test', with the "
        "probe's figures before fine-tuning; any run.")
    unlabeled: str | None = opt(
        None, "Unlabeled images for knowledge distillation (--method distill, headstart distill): they join the transfer set, where "
        "the teacher's softened outputs are the only signal; any data source headstart reads, labels unused.")
    from_run: str | None = opt(
        None, "Continue from this finished run (a run folder): its backbone and head, which grows by the new data's classes; "
        "old-task accuracy before and after, forgetting and backward transfer in metrics.json 'continual'. See --keep-old.",
        cli=("--from",))
    old_data: str | None = opt(
        None, "With --from: the old task's data (default: the data the --from run recorded in its config.yaml), split as that run "
        "split it; scores the old task, and feeds the methods that use it (rehearsal; ewc's Fisher).")
    heads: str = opt(
        "joint", "With --from: joint (class-incremental: one head over the old and new classes, predicts without being told the "
        "task) | separate (task-incremental: one head per task, each item scored over its own task's classes; predict --task "
        "names the task; model.json 'tasks' records which classes each task has).")
    image_size: int | str = opt(
        "auto", "Input size in pixels, or auto: the backbone's size, but small images are not blown up (4x their native side "
        "for the linear probe, 2x when training the backbone, at least 64 px: 28-px digits -> 112 or 64).")

    def __post_init__(self) -> None:
        _fraction("val", self.val)
        _fraction("test", self.test)
        for name in ("target", "target_test", "unlabeled", "from_run", "old_data"):
            if isinstance(getattr(self, name), os.PathLike):
                object.__setattr__(self, name, os.fspath(getattr(self, name)))
        _choice("heads", self.heads, ("joint", "separate"))
        if self.heads == "separate" and self.from_run is None:
            raise HeadstartError("--heads separate gives each task of a continued run its own head, and this run continues none. "
                                 "Fix: add --from RUN (the old task's run folder), or drop --heads.")
        if self.image_size != "auto":
            try:
                size = int(self.image_size)
            except (TypeError, ValueError):
                size = 0
            if size < 16 or str(size) != str(self.image_size).strip():
                raise HeadstartError(f"The 'image_size' parameter must be 'auto' or a whole number of pixels >= 16; got {self.image_size!r}.")
            object.__setattr__(self, "image_size", size)


@dataclass(frozen=True)
class BackboneSettings:
    """Which pretrained network, from where, and how its features are computed."""

    name: str | None = opt(
        None, "Backbone name (see 'headstart backbones'; default efficientnet_lite0 for images, minilm_l6 for texts), timm:<name>, "
        "hf:<name|folder>, run:<folder>, or 'auto' (the top LogME of --candidates).", flat="backbone", cli=("--backbone", "-b"))
    candidates: str | None = opt(None, "With --backbone auto: comma-separated backbones to rank (default efficientnet_lite0,efficientnet_lite1,"
                                 "efficientnet_lite2; texts: minilm_l6,minilm_l3_onnx,glove50,tfidf, and tfidf joins any list given).")
    weights: str | None = opt(None, "Local weights file or folder for the backbone.")
    runtime: str = opt("auto", "Feature extraction runtime: auto | openvino | onnx | torch.")
    feature_precision: str = opt("auto", "Image feature precision on CPU: auto (bf16 where a check on the run's training images shows it agrees "
                         "with fp32: probe agreement >= 99.5%, feature cosine >= 0.999; all-bf16 or the first layers in fp32 and the rest "
                         "in bf16, whichever agrees and is fastest) | f32 | bf16 (all-bf16, unchecked).")
    cache: bool = opt(True, "Read and write the feature cache.", cli=("--cache/--no-cache",))

    def __post_init__(self) -> None:
        _choice("runtime", self.runtime, ("auto", "openvino", "onnx", "torch"))
        _choice("feature_precision", self.feature_precision, ("auto", "f32", "bf16"))
        if isinstance(self.candidates, (list, tuple)):
            object.__setattr__(self, "candidates", ",".join(self.candidates))


@dataclass(frozen=True)
class HeadSettings:
    """The new classifier on top of the backbone."""

    kind: str = opt("logreg", "logreg | mlp | bagging | boosting | stacking (the last three: scikit-learn ensembles on cached features, "
                    "--strategy linear; saved as parameters, never pickled)", flat="head")
    hidden: int = opt(256, "Hidden units of the mlp head.")
    dropout: float = opt(0.3, "Dropout of the mlp head.")
    # Default None (no imbalance handling), by measurement on BreastMNIST (27% malignant; benchmarks/medical.py ->
    # results/medical_breastmnist.json, Lite0 probe, 3 seeds): balanced weights lost 6.4 points of accuracy and 2.6 of balanced
    # accuracy at the same AUC (0.846); an operating point (--threshold) is the better lever for sensitivity on imbalanced data.
    class_weights: str | None = opt(None, "'balanced' to weight classes by inverse frequency.")
    threshold: str | None = opt(
        None, "Binary runs: the decision threshold on the second class's probability, chosen on the validation split and stored in "
        "model.json (predict and evaluate use it): youden | sensitivity=S | specificity=S | f1 (e.g. sensitivity=0.95). Default: argmax.")
    # Default none, by measurement (benchmarks/calibration.py -> results/calibration.json; Lite0, seed 0): the temperature fit on
    # validation came out 0.79-1.37, and test NLL after scaling was better on 1 of 6 runs (MNIST 5k fine-tuned, 0.1795 -> 0.1791) and
    # worse on 5 (digits, MNIST 5k, BreastMNIST probes; digits and BreastMNIST fine-tuned: up to +0.012); test ECE fell on 4 of 6.
    calibrate: str = opt("none", "Calibrate the probabilities on the validation split: none | temperature (one temperature fit by "
                         "minimising the validation NLL, Guo et al. 2017; the argmax and ROC are unchanged; report: reliability before/after).")

    def __post_init__(self) -> None:
        _choice("head", self.kind, HEADS)
        _choice("class_weights", self.class_weights, (None, "balanced"))
        if self.threshold is not None:
            parse_threshold_rule(self.threshold)
        _choice("calibrate", self.calibrate, CALIBRATIONS)
        _whole("hidden", self.hidden, 1)
        _fraction("dropout", self.dropout)


@dataclass(frozen=True)
class TrainingSettings:
    """The transfer strategy and its training loop."""

    strategy: str = opt(
        "linear", "Transfer strategy: linear (frozen backbone, cached features) | finetune (default recipe: head warm-up, then all "
        "layer groups with layer-wise decayed LRs; or --unfreeze N) | progressive (unfreeze one layer group per stage from the top; "
        "--epochs per stage) | auto (linear probe first; keeps it or fine-tunes from it, and says why) | setfit (texts: the sentence encoder "
        "fine-tuned on same-class / cross-class pairs of training texts, then the linear probe on its new embeddings; see --pairs).",
        cli=("--strategy", "-s"))
    seed: int = opt(0, "Random seed of the split, the head and the training loop.")
    epochs: int = opt(20, "Epochs (per stage for progressive).")
    lr: float | None = opt(None, "Learning rate of the head (default: 2e-3 when fine-tuning a pretrained image backbone; 1e-3 for heads on "
                           "cached features, text and training from scratch).")
    batch_size: int = opt(64, "Items per batch.")
    patience: int | None = opt(5, "Epochs without a lower validation loss before a stage (or the run) stops.")
    unfreeze: int | str | None = opt(
        None, "finetune: train the last N layer groups (or 'all') from the start instead of the default recipe; progressive: the deepest stage (default all); setfit: the top N groups train on the pairs (default all).")
    backbone_lr: float | None = opt(None, "Learning rate of the top layer group (default lr/2; lower groups decay by --lr-decay).")
    lr_decay: float = opt(0.85, "Layer-wise learning-rate decay per group from the top (discriminative LRs).")
    freeze_epochs: int = opt(1, "Head warm-up epochs of the default finetune recipe.")
    # Default shuffle: see class_weights (the fine-tuned rows of benchmarks/medical.py, sampler vs none, are in its results JSON).
    sampler: str = opt("shuffle", "Training batches of the loop (finetune, progressive, auto's fine-tuning): shuffle (each item once per "
                       "epoch) | balanced (class-balanced sampling with replacement: every class equally likely in each batch).")
    augment: str | None = opt(None, "Training augmentation: none | light (random resized crop, flip) | strong (+ rotation, colour jitter). Default: none; auto fine-tunes with light.")
    schedule: str = opt("cosine", "Learning-rate schedule per stage: cosine (with warm-up) | onecycle.")
    label_smoothing: float = opt(0.0, "Label smoothing epsilon in [0, 1).")
    clip_grad: float | None = opt(None, "Clip the gradient norm to this value.")
    activation_cache: bool = opt(True, "Run the frozen lower layer groups once and cache their activations (--no-activation-cache: every step).",
                                 cli=("--activation-cache/--no-activation-cache",))
    train_bn: bool = opt(False, "Let BatchNorm layers update their running statistics while fine-tuning (default: fixed).", cli=("--train-bn/--no-train-bn",))
    pairs: int | None = opt(None, "--strategy setfit: pairs of training texts the encoder is trained on, half same-class, half cross-class, "
                            "seeded, one pass (default 640; --epochs is not used).")
    # Default auto = final on a small validation split (< 50 items in its smallest class), by measurement on BreastMNIST
    # (benchmarks/breast_search.py; 78 validation images): the best-of-epochs rule kept mid-schedule epochs (epoch 4 of 8 at 96 px,
    # epoch 2 of 8 at lr 5e-4) that were 2 validation images above the final epoch; on splits of 50+ per class it stays best.
    keep: str = opt("auto", "Which weights the loop keeps: best (the best epoch on validation accuracy and loss) | final (the end of "
                    "the schedule, if it beats the starting probe on validation; else the probe) | auto (final when the validation "
                    "split's smallest class has < 50 items, else best).")
    time_limit: float | None = opt(None, "Seconds for the whole fit: training stops in time with the best weights so far; auto decides between the probe and fine-tuning, and how many epochs, from it.")

    def __post_init__(self) -> None:
        _choice("strategy", self.strategy, STRATEGIES)
        _choice("augment", self.augment, (None, "none", "light", "strong"))
        _choice("schedule", self.schedule, ("cosine", "onecycle"))
        _choice("sampler", self.sampler, SAMPLERS)
        _choice("keep", self.keep, ("auto", "best", "final"))
        _fraction("label_smoothing", self.label_smoothing)
        _whole("epochs", self.epochs, 1)
        _whole("batch_size", self.batch_size, 1)
        _whole("freeze_epochs", self.freeze_epochs, 0)
        _whole("seed", self.seed, 0)
        if self.patience is not None:
            _whole("patience", self.patience, 1)
        _positive("lr", self.lr)
        _positive("backbone_lr", self.backbone_lr)
        _positive("clip_grad", self.clip_grad)
        _positive("time_limit", self.time_limit, what="number of seconds")
        if self.pairs is not None:
            _whole("pairs", self.pairs, 2)
            if self.strategy not in PAIR_STRATEGIES:  # read by setfit only (auto: when it picks setfit); never ignored
                raise HeadstartError(f"--pairs sets how many text pairs --strategy setfit trains the encoder on (auto's too, when it picks setfit), "
                                     f"and strategy {self.strategy!r} uses no pairs. Fix: add --strategy setfit (Python: strategy='setfit'), "
                                     "or drop --pairs.")
        if not 0.0 < float(self.lr_decay) <= 1.0:
            raise HeadstartError(f"The 'lr_decay' parameter must be in (0, 1]; got {self.lr_decay!r}.")
        if self.unfreeze is not None and self.unfreeze != "all":
            object.__setattr__(self, "unfreeze", _whole("unfreeze", _int_or(self.unfreeze), 0, " or 'all'"))


@dataclass(frozen=True)
class HardwareSettings:
    """Where the training loop runs (Lightning's accelerator, devices, strategy, precision)."""

    accelerator: str = opt("auto", "Lightning accelerator: auto | cpu | gpu.")
    devices: int | str = opt(1, "Number of devices (processes) per machine, or 'auto'.")
    dist: str = opt("auto", "Lightning's distributed strategy (not the transfer --strategy): auto | ddp | ddp_spawn | fsdp. 'ddp' with --devices N "
                    "(torchrun/SLURM launch work too); on CPU it uses gloo.")
    precision: str | None = opt(None, "Lightning precision: 32-true (default) | bf16-mixed | 16-mixed (GPU).")

    def __post_init__(self) -> None:
        if self.devices != "auto":
            object.__setattr__(self, "devices", _whole("devices", _int_or(self.devices), 1, " or 'auto'"))


@dataclass(frozen=True)
class OutputSettings:
    """What the run writes, and where."""

    out: str | None = opt(None, "Run folder (default runs/<backbone>-<strategy>-<time>).", cli=("--out", "-o"))
    overwrite: bool = opt(False, "Overwrite an existing run folder given with --out.", cli=("--overwrite/--no-overwrite",))
    logger: str = opt("csv", "Training logs in the run folder: csv (always written) | tensorboard | mlflow.")
    save: bool = opt(True, "Write the run folder (Python only; the command line always writes it).", cli=())
    progress: bool = opt(False, "Show progress bars (the command line always does).", cli=())

    def __post_init__(self) -> None:
        _choice("logger", self.logger, ("csv", "tensorboard", "mlflow"))
        if isinstance(self.out, Path):
            object.__setattr__(self, "out", str(self.out))


@dataclass(frozen=True)
class MethodSettings:
    """A method added to the training loop (:mod:`headstart.methods`) and its options."""

    name: str | None = opt(None, "A method added to the training loop (see headstart.methods), e.g. focal; --keep-old names one of "
                           "the continual methods (naive | ewc | lwf | rehearsal | l2sp, with --from).", flat="method", cli=("--method", "--keep-old"))
    options: dict = opt(None, "Options of --method as KEY=VALUE (repeatable), e.g. gamma=2.", flat="method_opt", cli=("--method-opt",))

    def __post_init__(self) -> None:
        from .methods import parse_options

        options = _key_values(self.options)
        if self.name is None:
            if options:
                raise HeadstartError(f"Method options {options} were given without a method. Fix: add --method NAME (e.g. focal).")
            object.__setattr__(self, "options", {})
            return
        typed = parse_options(self.name, options)  # unknown methods and options, wrong types: named errors
        object.__setattr__(self, "options", {k: getattr(typed, k) for k in options})


def parse_threshold_rule(rule: Any) -> tuple[str, float | None]:
    """``"youden"`` -> ``("youden", None)``; ``"sensitivity=0.95"`` -> ``("sensitivity", 0.95)``; also ``specificity=S``, ``f1``."""
    kind, sep, value = str(rule).strip().partition("=")
    kind = kind.strip().lower()
    fix = "Fix: --threshold youden | sensitivity=S | specificity=S | f1, with S a fraction in (0, 1], e.g. sensitivity=0.95."
    if kind in ("youden", "f1") and not sep:
        return kind, None
    if kind in ("sensitivity", "specificity") and sep:
        try:
            target = float(value)
        except ValueError:
            target = -1.0
        if 0.0 < target <= 1.0:
            return kind, target
        raise HeadstartError(f"The 'threshold' parameter {rule!r} needs a target {kind} in (0, 1]; got {value.strip()!r}. {fix}")
    raise HeadstartError(f"The 'threshold' parameter must be youden, sensitivity=S, specificity=S or f1; got {rule!r}. {fix}")


def _key_values(value: Any) -> dict:
    """``{"gamma": "2"}`` from a mapping, or from ``["gamma=2", ...]`` as the command line gives them."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str):
        value = [value]
    out = {}
    for item in value:
        key, sep, val = str(item).partition("=")
        if not sep or not key.strip():
            raise HeadstartError(f"A method option must be KEY=VALUE (e.g. gamma=2); got {item!r}.")
        out[key.strip()] = val.strip()
    return out


def _int_or(value: Any) -> Any:
    """``"3"`` -> 3 (command-line and YAML strings); anything else as it is."""
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return value
    return value


GROUPS: dict[str, type] = {
    "data": DataSettings, "backbone": BackboneSettings, "head": HeadSettings,
    "training": TrainingSettings, "method": MethodSettings, "hardware": HardwareSettings, "output": OutputSettings,
}


def flat_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flat", f.name)


def setting_fields() -> Iterator[tuple[str, dataclasses.Field]]:
    """``(group, field)`` for every setting, in declaration order."""
    for group, cls in GROUPS.items():
        for f in fields(cls):
            yield group, f


_WHERE = {flat_name(f): (group, f.name) for group, f in setting_fields()}
assert len(_WHERE) == sum(1 for _ in setting_fields()), "flat setting names must be unique"


def setting_location(name: str) -> tuple[str, str]:
    """``(group, field)`` of the setting with flat name ``name``."""
    if name not in _WHERE:
        raise KeyError(f"no setting named {name!r}")
    return _WHERE[name]


@dataclass(frozen=True)
class Settings:
    """All settings of one fit; see the module docstring."""

    data: DataSettings = field(default_factory=DataSettings)
    backbone: BackboneSettings = field(default_factory=BackboneSettings)
    head: HeadSettings = field(default_factory=HeadSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    method: MethodSettings = field(default_factory=MethodSettings)
    hardware: HardwareSettings = field(default_factory=HardwareSettings)
    output: OutputSettings = field(default_factory=OutputSettings)

    def __post_init__(self) -> None:
        if self.training.strategy == "setfit" and self.method.name is not None:
            raise HeadstartError(f"--strategy setfit trains the encoder on text pairs with its own loss, and method {self.method.name!r} adds "
                                 "to the classification loop. Fix: drop --method, or use --strategy finetune with it.")
        if self.head.kind in FEATURE_ONLY_HEADS and self.training.strategy not in ("linear", "setfit"):
            raise HeadstartError(f"The {self.head.kind!r} head is fit by scikit-learn on cached features and cannot train through the "
                                 f"backbone (--strategy {self.training.strategy}). Fix: --strategy linear, or --head logreg|mlp to fine-tune.")
        if self.training.sampler == "balanced" and self.training.strategy == "linear":
            raise HeadstartError("--sampler balanced draws the training loop's batches, and --strategy linear fits the probe on all cached "
                                 "features at once. Fix: --class-weights balanced for the probe, or --strategy finetune|progressive|auto.")

    @classmethod
    def from_flat(cls, base: Settings | None = None, **values: Any) -> Settings:
        """``base`` (default: all defaults) with the settings named by their flat names replaced."""
        unknown = sorted(set(values) - set(_WHERE))
        if unknown:
            import difflib

            hints = [m for u in unknown for m in difflib.get_close_matches(u, list(_WHERE), n=1)]
            raise HeadstartError(f"Unknown setting(s) {', '.join(map(repr, unknown))}." + (f" Did you mean {', '.join(map(repr, hints))}?" if hints else "")
                                 + " See headstart.settings.Settings (or 'headstart fit --help').")
        base = base or cls()
        by_group: dict[str, dict[str, Any]] = {}
        for name, value in values.items():
            group, attr = _WHERE[name]
            by_group.setdefault(group, {})[attr] = value
        return dataclasses.replace(base, **{g: dataclasses.replace(getattr(base, g), **kv) for g, kv in by_group.items()})

    def replace(self, **values: Any) -> Settings:
        """A copy with the settings named by their flat names replaced (validated again)."""
        return Settings.from_flat(self, **values)

    def flat(self) -> dict[str, Any]:
        """``{flat name: value}`` for every setting."""
        return {flat_name(f): getattr(getattr(self, group), f.name) for group, f in setting_fields()}

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """``{group: {field: value}}``: plain data for ``config.yaml``."""
        return {group: {f.name: getattr(getattr(self, group), f.name) for f in fields(cls)} for group, cls in GROUPS.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> Settings:
        """The inverse of :meth:`to_dict`; groups or fields left out keep their defaults; unknown names are an error."""
        d = dict(d or {})
        unknown = sorted(set(d) - set(GROUPS))
        if unknown:
            raise HeadstartError(f"Unknown settings group(s) {', '.join(map(repr, unknown))}; the groups are {', '.join(GROUPS)}.")
        out = {}
        for group, group_cls in GROUPS.items():
            values = dict(d.get(group) or {})
            names = {f.name for f in fields(group_cls)}
            bad = sorted(set(values) - names)
            if bad:
                raise HeadstartError(f"Unknown setting(s) {', '.join(map(repr, bad))} in group {group!r}; it has {', '.join(sorted(names))}.")
            out[group] = group_cls(**values)
        return cls(**out)
