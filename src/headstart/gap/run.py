"""``domain_gap``: how far apart two domains are, on one backbone's features, before any training.

Steps: load both domains (:func:`headstart.data.load_domain`: labeled or not, of one modality) ->
a seeded subsample of at most ``max_items`` items of each (the measures' cost grows with the square
of the items) -> the backbone's features of both, at one input size chosen from the source's
native size, through the feature cache -> the measures of :mod:`.measures` -> the verdict of
:mod:`.verdict` -> ``gap.json``, ``gap_map.png`` and ``gap.html`` in ``out`` (atomic writes).

Example:
    >>> res = domain_gap("mnist/", "digits.npz", backbone="efficientnet_lite0")  # doctest: +SKIP
    >>> res.pad, res.mmd_p_value, res.verdict.title  # doctest: +SKIP
    (1.99, 0.005, 'A large gap: the backbone's features separate the domains')
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackboneError, DataError, HeadstartError
from ..evaluate.diagnostics import Finding
from ..backbones.size import resolve_image_size
from .measures import MIN_ITEMS, gap_measures
from .verdict import gap_verdict

log = logging.getLogger("headstart")



@dataclass
class GapResult:
    """What :func:`domain_gap` measured; ``to_dict()`` is ``gap.json``."""

    source_name: str
    target_name: str
    backbone: str
    image_size: int | None
    measures: dict[str, Any]
    verdict: Finding
    source_info: dict[str, Any]
    target_info: dict[str, Any]
    sample_note: str
    settings: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)
    map_items: int = 0
    map_png: Path | None = None
    map_note: str | None = None
    out: Path | None = None

    @property
    def pad(self) -> float:
        return self.measures["pad"]

    @property
    def mmd2(self) -> float:
        return self.measures["mmd2"]

    @property
    def mmd_p_value(self) -> float:
        return self.measures["mmd_p_value"]

    @property
    def coral(self) -> float:
        return self.measures["coral"]

    @property
    def frechet(self) -> float:
        return self.measures["frechet"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source_info, "target": self.target_info, "backbone": self.backbone, "image_size": self.image_size,
            "measures": self.measures, "verdict": dataclasses.asdict(self.verdict), "sample_note": self.sample_note,
            "settings": self.settings, "seconds": self.seconds,
            "files": {"html": "gap.html", "map": self.map_png.name if self.map_png else None},
        }


def image_size_for(image_size: int | str, bb: Any, source: Any) -> int:
    """The side images of both domains are resized to: ``image_size``, or for ``"auto"`` fit's probe
    rule (:func:`headstart.backbones.size.resolve_image_size`) on the source's native size."""
    if isinstance(image_size, str) and image_size.isdigit():
        image_size = int(image_size)
    if image_size != "auto" and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 16):
        raise HeadstartError(f"The 'image_size' parameter must be 'auto' or a whole number of pixels >= 16; got {image_size!r}.")
    return resolve_image_size(image_size, bb, source, "linear")


def short_name(arg: Any, ds: Any) -> str:
    """A file-name-safe short name of a data argument: a path's name, a built-in set's name, or the dataset's source kind."""
    if isinstance(arg, (str, os.PathLike)):
        s = str(arg).rstrip("/\\")
        s = s.split(":", 1)[0] if ":" in s and not Path(s).exists() else Path(s).stem or Path(s).name
    else:
        s = str(getattr(ds, "source", "") or "data").split(":", 1)[0]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("._")[:40] or "data"


def _check_params(max_items: int, n_perm: int, folds: int, map_items: int) -> None:
    for name, value, least in (("max_items", max_items, MIN_ITEMS), ("n_perm", n_perm, 1), ("folds", folds, 2), ("map_items", map_items, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise HeadstartError(f"The '{name}' parameter must be a whole number >= {least}; got {value!r}.")


def _subsample(n: int, k: int, seed: int, stream: int) -> np.ndarray:
    if n <= k:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, stream]).choice(n, k, replace=False))


def _info(arg: Any, ds: Any, measured: int) -> dict[str, Any]:
    return {"data": str(arg) if isinstance(arg, (str, os.PathLike)) else ds.source, "items": len(ds), "measured": measured,
            "classes": list(ds.classes), "modality": ds.modality, "native_size": ds.native_size()}


def domain_gap(
    source: Any,
    target: Any,
    *,
    backbone: str = "efficientnet_lite0",
    out: str | Path | None = None,
    save: bool = True,
    seed: int = 0,
    n_perm: int = 200,
    max_items: int = 1000,
    folds: int = 5,
    map_items: int = 500,
    image_size: int | str = "auto",
    weights: str | None = None,
    batch_size: int = 64,
    runtime: str = "auto",
    cache: bool = True,
    strict: bool = False,
    progress: bool = False,
) -> GapResult:
    """Measure how far apart the domains ``source`` and ``target`` are on ``backbone``'s features.

    ``source``, ``target``: anything :func:`headstart.data.load_domain` reads (a folder of class
    folders or of images, a manifest, a ``.npz``, ``shapes:<names>``, a :class:`LabeledDataset`);
    both of one modality. Measures (:mod:`headstart.gap.measures`): multi-kernel MMD² with a
    permutation p-value (``n_perm`` permutations), CORAL, Fréchet distance, proxy A-distance
    (``folds``-fold domain classifier), on a seeded subsample of at most ``max_items`` items per
    domain; then a verdict with what to try (:mod:`headstart.gap.verdict`).

    With ``save`` (default), writes ``gap.json``, ``gap_map.png`` (t-SNE of at most ``map_items``
    items per domain; ``map_items=0``: no map) and ``gap.html`` into ``out`` (default
    ``runs/gap-<source>-<target>-<time>``). ``image_size``: ``"auto"`` (the backbone's size, or 4x
    the source's native side when its images are small: one size for both domains) or pixels.
    ``seed`` fixes the subsamples, the permutations, the folds and the map.
    """
    from ..backbones import create_backbone
    from ..data import align_classes, is_labeled, load_domain
    from ..features import extract_features

    _check_params(max_items, n_perm, folds, map_items)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    src = load_domain(source, role="source", seed=seed, strict=strict)
    tgt = load_domain(target, role="target", seed=seed, strict=strict, modality=src.modality)
    for role, ds in (("source", src), ("target", tgt)):
        if len(ds) < MIN_ITEMS:
            raise DataError(f"the {role} data ({ds.source}) has {len(ds)} usable item(s); measuring a gap needs at least {MIN_ITEMS} "
                            f"of each domain (a few hundred for a reliable answer): add data")
    seconds["load"] = time.perf_counter() - t0

    import torch

    with torch.random.fork_rng(devices=[]):  # a random-init backbone: the same seed, the same network; global RNG untouched
        torch.manual_seed(seed)
        bb = create_backbone(backbone, weights=weights)
    if (src.modality == "text") != hasattr(bb, "tokenize"):
        kind = "text" if hasattr(bb, "tokenize") else "image"
        raise BackboneError(f"Backbone {backbone!r} is a {kind} backbone but the data holds {src.modality} items. "
                            f"Fix: pass a backbone of the data's kind with --backbone (see 'headstart backbones --modality {src.modality}').")
    size = None
    if src.modality == "image":
        size = image_size_for(image_size, bb, src)
        bb.preprocessing = dataclasses.replace(bb.preprocessing, input_size=(size, size))
        log.info("gap: input size %d px for both domains (%s)", size, "from the source's native size" if image_size == "auto" else "set")

    src_sub = src.subset(_subsample(len(src), max_items, seed, 0))
    tgt_sub = tgt.subset(_subsample(len(tgt), max_items, seed, 1))
    t = time.perf_counter()
    fs = extract_features(bb, src_sub, batch_size=batch_size, runtime=runtime, cache=cache, progress=progress)
    ft = extract_features(bb, tgt_sub, batch_size=batch_size, runtime=runtime, cache=cache, progress=progress)
    seconds["features"] = time.perf_counter() - t
    if not (np.isfinite(fs).all() and np.isfinite(ft).all()):
        raise BackboneError(f"Backbone {backbone!r} gave non-finite features (NaN or inf); the gap cannot be measured on them. Fix: check its weights, or try another backbone.")

    m = gap_measures(fs, ft, n_perm=n_perm, folds=folds, seed=seed)
    seconds.update({k: v for k, v in m["seconds"].items()})
    verdict = gap_verdict(m, **({"target": str(target)} if isinstance(target, (str, os.PathLike)) else {}))
    cut = [f"{role} {len(sub)} of {len(ds)}" for role, sub, ds in (("source", src_sub, src), ("target", tgt_sub, tgt)) if len(sub) < len(ds)]
    note = (f"Measured on a seeded random subsample ({'; '.join(cut)} items; at most {max_items} per domain, for cost: the MMD test "
            "grows with the square of the items)." if cut else f"Measured on every item ({len(src)} source, {len(tgt)} target).")
    note += f" MMD p-value from {n_perm} permutations (it cannot go below 1/{n_perm + 1} = {1 / (n_perm + 1):.3g}); domain classifier: {m['pad_folds']}-fold CV on {min(len(fs), len(ft))} items of each domain."
    names = (short_name(source, src), short_name(target, tgt))
    settings = {"backbone": backbone, "weights": weights, "image_size": image_size, "seed": seed, "n_perm": n_perm, "max_items": max_items,
                "folds": folds, "map_items": map_items, "runtime": runtime, "cache": cache, "batch_size": batch_size, "strict": strict}
    res = GapResult(names[0], names[1], backbone, size, m, verdict, _info(source, src, len(src_sub)), _info(target, tgt, len(tgt_sub)),
                    note, settings, map_items=map_items)
    if save:
        from .._io import write_json, write_text
        from ..run_folder import new_run_dir
        from .report import build_html, map_plot

        res.out = new_run_dir(out, name=f"gap-{names[0]}-{names[1]}", add=True)
        if map_items:
            t = time.perf_counter()
            try:
                from ..evaluate.plots import tsne_2d

                i_s, i_t = _subsample(len(fs), map_items, seed, 2), _subsample(len(ft), map_items, seed, 3)
                labeled = [ds for ds in (src_sub, tgt_sub) if is_labeled(ds)]
                classes = list(dict.fromkeys(c for ds in labeled for c in ds.classes))
                lab = np.concatenate([align_classes(src_sub.subset(i_s), classes, role="source").labels,
                                      align_classes(tgt_sub.subset(i_t), classes).labels])
                xy = tsne_2d(np.concatenate([fs[i_s], ft[i_t]]), seed=seed)
                dom = np.repeat([0, 1], [len(i_s), len(i_t)])
                res.map_png = map_plot(xy, dom, lab, classes, names, res.out / "gap_map.png")
            except Exception as e:  # noqa: BLE001 - the measures stand without the picture
                res.map_note = f"{type(e).__name__}: {e}"
                log.warning("gap: the map could not be drawn (%s); the measures are written", res.map_note)
            seconds["map"] = time.perf_counter() - t
        else:
            res.map_note = "map_items is 0"
    seconds["total"] = time.perf_counter() - t0
    res.seconds = {k: round(v, 3) for k, v in seconds.items()}
    if save:
        write_json(res.out / "gap.json", res.to_dict())
        write_text(res.out / "gap.html", build_html(res))
        log.info("gap: written to %s", res.out)
    return res


#: Items of each domain the gap measures of a run use (seeded subsample): enough for a stable
#: MMD test and domain classifier, a few seconds of extraction.
GAP_ITEMS = 500


def run_gap(bb: Any, source: Any, target: Any, *, batch_size: int, runtime: str, cache: bool, seed: int, trained: bool = False,
            items: int = GAP_ITEMS) -> dict[str, Any]:
    """The gap measures between ``bb``'s features of two loaded datasets, for a run's ``metrics.json``.

    ``trained``: the backbone's weights changed in this run (eager torch, no feature cache). At most
    ``items`` of each (seeded), 100 permutations; too few items give ``{}`` and a warning, so the run
    stands without its gap measures.
    """
    from ..features import extract_features

    rng = np.random.default_rng(seed)
    feats = []
    for ds in (source, target):
        idx = np.sort(rng.permutation(len(ds))[:items])
        feats.append(extract_features(bb, ds.subset(idx), batch_size=batch_size, runtime="torch" if trained else runtime,
                                      cache=cache and not trained, progress=False))
    try:
        out = gap_measures(feats[0], feats[1], n_perm=100, seed=seed)
    except ValueError as e:
        log.warning("domain gap not measured: %s", e)
        return {}
    return {k: v for k, v in out.items() if k != "seconds"}
