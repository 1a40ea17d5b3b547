"""The method registry and base class (see :mod:`headstart.methods`)."""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Callable, ClassVar, Mapping, NamedTuple

from ..errors import HeadstartError

_METHODS: dict[str, type["Method"]] = {}


class Need(NamedTuple):
    """An extra input a method can ask for: the data setting that gives it, its flag, and what it is."""

    setting: str
    flag: str
    what: str


#: What a method may list in ``needs``; ``fit`` requires the setting, loads it with the data checks
#: (:func:`headstart.data.load_domain`) and hands it to :meth:`Method.prepare` as a training loader.
NEEDS: dict[str, Need] = {
    "target_unlabeled": Need("target", "--target", "unlabeled target-domain data (a folder of images with or without class "
                             "folders, or any data source headstart reads; labels are not used)"),
    "unlabeled": Need("unlabeled", "--unlabeled", "unlabeled images for the transfer set (a folder of images with or without class "
                      "folders, or any data source headstart reads; labels are not used)"),
}


class Method:
    """Base class: subclasses set ``name``, ``Options`` (a frozen dataclass), ``needs`` and override the hooks.

    ``continual``: the method continues a finished run (``--from RUN``): ``fit`` requires one and
    hands the method the old task (:class:`OldTask`) through :meth:`continue_from`;
    ``needs_old_data``: it also needs the old task's training items (``--old-data``, or the data
    recorded by the old run). ``optional_needs``: inputs used when given (``--unlabeled``);
    ``indexed``: :meth:`items` wraps the training datasets so batches end with the items' indices
    (per-item targets computed once, e.g. a teacher's logits)."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    needs: ClassVar[tuple[str, ...]] = ()
    optional_needs: ClassVar[tuple[str, ...]] = ()  # loaded and attached when given; no error when not
    indexed: ClassVar[bool] = False  # the loop's batches carry each item's index last (see items)
    continual: ClassVar[bool] = False
    needs_old_data: ClassVar[bool] = False

    @dataclasses.dataclass(frozen=True)
    class Options:
        pass

    def __init__(self, options: Any = None):
        self.options = options if options is not None else self.Options()
        self.data: dict[str, Any] = {}  # need -> LabeledDataset, attached by fit
        self.loaders: dict[str, Any] = {}  # need -> training DataLoader, given by the recipe (prepare)

    def attach(self, need: str, dataset: Any) -> None:
        """Give the method the data of one of its ``needs`` (``fit`` does, after checking it)."""
        if need not in (*self.needs, *self.optional_needs):
            raise ValueError(f"method {self.name!r} does not need {need!r}")
        self.data[need] = dataset

    def inputs(self, data_settings: Any) -> tuple[str, ...]:
        """The needs ``fit`` loads: every required one, and the optional ones whose setting is given."""
        return (*self.needs, *(n for n in self.optional_needs if getattr(data_settings, NEEDS[n].setting) is not None))

    def begin(self, splits: Any, settings: Any) -> None:
        """Called by the training recipe before its datasets are built, with the run's splits and settings."""

    def items(self, name: str, dataset: Any) -> Any:
        """The torch dataset the loop trains on for ``name`` (``"train"``, or a need): ``dataset`` unless overridden."""
        return dataset

    def run_metrics(self, model: Any, eval_ds: Any, proba: Any, settings: Any) -> dict[str, Any]:
        """Entries ``fit`` adds to ``metrics.json`` after evaluating ``model`` on ``eval_ds`` (``proba``: its predictions)."""
        return {}

    def continue_from(self, old: "OldTask") -> None:
        """Called by ``fit`` before training when the run continues ``old`` (``--from``); methods that are not
        ``continual`` are not called."""
        self.old = old

    def missing(self) -> list[str]:
        """The ``needs`` no data has been attached for."""
        return [n for n in self.needs if n not in self.data]

    def prepare(self, loaders: Mapping[str, Any], *, num_features: int, num_classes: int) -> None:
        """Called by the training recipe before the loop: a shuffled training loader per attached need
        (the run's input transform and batch size; items as the loop's own batches), and the sizes of the
        features and classes (for modules a method adds, e.g. a domain classifier)."""
        self.loaders = dict(loaders)

    def criterion(self) -> Callable | None:
        """``loss(module, logits, y) -> scalar`` replacing the training cross-entropy; ``None``: keep it."""
        return None

    def loss_terms(self) -> list[Callable]:
        """Loss terms ``term(module, batch, outputs) -> scalar`` added to the training loss."""
        return []

    def callbacks(self) -> list[Any]:
        """Lightning callbacks added to the loop."""
        return []

    def run_files(self) -> dict[str, Any]:
        """``{file name: JSON-able content}`` the run folder keeps of this method (e.g. a replay memory's indices)."""
        return {}

    def loop_hooks(self) -> dict[str, Any]:
        """What :func:`headstart.train.train_classifier` takes from this method, as its keyword arguments."""
        return {"criterion": self.criterion(), "extra_losses": self.loss_terms(), "callbacks": self.callbacks()}


class OldTask(NamedTuple):
    """What a continual method knows of the task learned before (``fit --from RUN``).

    ``backbone``/``head``: frozen copies of the old run's model (eval mode); ``classes``: its classes,
    which are the first ``len(classes)`` classes of the new, joint head; ``train``: the old task's
    training items (a LabeledDataset, labels in ``classes`` order), or ``None`` when it is not given;
    ``old_items``/``new_items``: the old and the new training items as torch datasets of
    ``(input, label)`` with the evaluation transform (``old_items`` ``None`` without the old data);
    ``seed``: the new run's seed."""

    backbone: Any
    head: Any
    classes: list
    train: Any
    old_items: Any
    new_items: Any
    seed: int


class Cycled:
    """Endless batches from a DataLoader: a new order each pass (its sampler's ``set_epoch``), batches as the loader gives them."""

    def __init__(self, loader: Any, what: str = "data") -> None:
        self.loader, self.what = loader, what
        self._it: Any = None
        self._passes = 0

    def next(self) -> Any:
        for _ in range(2):
            if self._it is None:
                sampler = getattr(self.loader, "sampler", None)
                if hasattr(sampler, "set_epoch"):
                    sampler.set_epoch(self._passes)
                self._passes += 1
                self._it = iter(self.loader)
            try:
                return next(self._it)
            except StopIteration:
                self._it = None
        raise HeadstartError(f"The {self.what} gave no batch; it needs at least 2 items.")


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make ``cls`` selectable as ``cls.name``."""
    if not cls.name or cls.name in _METHODS:
        raise ValueError(f"method name {cls.name!r} is empty or taken")
    _METHODS[cls.name] = cls
    return cls


def list_methods() -> list[str]:
    return sorted(_METHODS)


def method_class(name: str) -> type[Method]:
    if name not in _METHODS:
        close = difflib.get_close_matches(str(name), list(_METHODS), n=1)
        raise HeadstartError(f"Unknown method {name!r}; the methods are {', '.join(map(repr, list_methods()))}."
                             + (f" Did you mean {close[0]!r}?" if close else ""))
    return _METHODS[name]


def _convert(name: str, value: Any, kind: str, method: str) -> Any:
    kinds = {k.strip() for k in str(kind).split("|")}
    if value is None or (isinstance(value, str) and value.lower() == "none"):
        if "None" in kinds:
            return None
        raise HeadstartError(f"Method {method!r} option {name!r} needs a value ({kind}); got {value!r}.")
    for t, conv in (("bool", lambda v: {"true": True, "false": False}[str(v).lower()] if isinstance(v, str) else bool(v)), ("int", int), ("float", float)):
        if t in kinds:
            try:
                out = conv(value)
            except (KeyError, TypeError, ValueError):
                raise HeadstartError(f"Method {method!r} option {name!r} must be {kind}; got {value!r}.") from None
            if t == "int" and isinstance(value, float) and value != int(value):
                raise HeadstartError(f"Method {method!r} option {name!r} must be a whole number; got {value!r}.")
            return out
    return str(value)


def parse_options(name: str, options: Mapping[str, Any] | None) -> Any:
    """The typed ``Options`` of method ``name`` from a mapping (values may be strings, as typed on a command line)."""
    cls = method_class(name)
    fields = {f.name: f for f in dataclasses.fields(cls.Options)}
    options = dict(options or {})
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise HeadstartError(f"Method {name!r} has no option(s) {', '.join(map(repr, unknown))}; its options are "
                             f"{', '.join(map(repr, fields)) or 'none'}.")
    return cls.Options(**{k: _convert(k, v, fields[k].type, name) for k, v in options.items()})


def create_method(name: str, options: Mapping[str, Any] | None = None) -> Method:
    """An instance of method ``name`` with its options checked and converted."""
    return method_class(name)(parse_options(name, options))
