"""bf16 features where they agree with fp32: the check that decides, once per run, on its own images.

On CPUs with native bf16 (AVX-512 BF16 / AMX), OpenVINO runs EfficientNet-Lite0 about twice as fast
in bf16 as in fp32 (``benchmarks/extract_speed.py``), but bf16 features are not fp32 features. So a
run with ``--feature-precision auto`` (the default) extracts a seeded sample of its training images
in fp32 and in each bf16 candidate: all of the network in bf16, and the first layers in fp32 with
the rest in bf16 (cut at each of up to three points of the graph, :mod:`.split`; for
EfficientNet-Lite0 all-bf16 misses the cosine below, fp32 up to block 0 meets it). It uses the
fastest candidate that is faster than fp32 on the sample and for which

- the features agree: mean cosine similarity >= :data:`MIN_COSINE`, and
- a probe agrees: logistic regressions fit on the fp32 features (two folds, each predicting the
  half it was not fit on) give the same top-1 class on the bf16 features for >= :data:`MIN_AGREEMENT`
  of the sample.

Otherwise fp32, and the log and ``model.json`` say which and why, with every candidate's figures. The decision is stored on the
backbone (``feature_precision``, with the backbone fingerprint it was checked for), so every later
extraction of the run, and ``predict`` on the saved run, use the same precision; a backbone whose
weights change (fine-tuning) has another fingerprint and goes back to fp32. bf16 features have their
own cache key. ``--feature-precision f32`` never uses bf16; ``bf16`` skips the check.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from .split import describe, is_precision

logger = logging.getLogger("headstart.features")

PRECISIONS = ("auto", "f32", "bf16")
MIN_AGREEMENT = 0.995  # probe top-1 agreement, bf16 vs fp32 features (issue 16)
MIN_COSINE = 0.999  # mean cosine similarity of bf16 and fp32 features
SAMPLE = 512  # training images checked
#: Below this many images to extract in the run, the check costs more than bf16 saves. Measured on 2
#: cores (AVX-512 BF16, Lite0, ``benchmarks/extract_speed.py``): the check of 512 500-px JPEGs (fp32,
#: all-bf16 and three cuts) takes ~10 s, 2.5 s of which come back as the sample's cached features;
#: the chosen bf16 saves 2.2 ms per image end to end (200 vs 138 img/s): even at ~3,400 images.
MIN_ITEMS = 4096


def bf16_supported() -> bool:
    """Whether OpenVINO is installed and reports native bf16 on this CPU."""
    try:
        import openvino as ov

        return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # noqa: BLE001 - not installed, or no CPU plugin
        return False


def choose_precision(backbone: Any, dataset: Any, *, setting: str = "auto", runtime: str = "auto", total_items: int | None = None,
                     batch_size: int = 64, cache: bool = True, cache_dir: Any = None, sample: int = SAMPLE, seed: int = 0) -> dict[str, Any]:
    """Decide the precision of ``backbone``'s features for a run on ``dataset`` (its training split);
    store the decision on the backbone (``backbone.feature_precision``) and return it:
    ``{"precision": "f32" | "bf16", "reason": ..., and the check's figures when it ran}``.

    ``total_items``: the images the run will extract (default ``len(dataset)``); below
    :data:`MIN_ITEMS`, ``auto`` stays fp32 without checking.
    """
    from .cache import backbone_fingerprint

    if setting not in PRECISIONS:
        raise ValueError(f"The 'precision' parameter must be one of {set(PRECISIONS)}; got {setting!r}.")
    decision: dict[str, Any] = {"precision": "f32", "fingerprint": backbone_fingerprint(backbone)}
    total = len(dataset) if total_items is None else int(total_items)
    if setting == "f32":
        decision["reason"] = "--feature-precision f32"
    elif runtime not in ("auto", "openvino"):
        decision["reason"] = f"runtime {runtime!r} (bf16 features need OpenVINO)"
    elif _on_gpu(backbone):
        decision["reason"] = "backbone on a GPU (features in torch)"
    elif setting == "auto" and total < MIN_ITEMS:
        decision["reason"] = f"{total} images to extract: fewer than {MIN_ITEMS}, bf16 would save less than its check costs"
    elif not bf16_supported():
        decision["reason"] = "this CPU has no native bf16 (or OpenVINO is not installed)"
    elif setting == "bf16":
        decision.update(precision="bf16", reason="--feature-precision bf16 (not checked)")
    else:
        decision.update(check(backbone, dataset, batch_size=batch_size, cache=cache, cache_dir=cache_dir, sample=sample, seed=seed))
    backbone.feature_precision = decision
    logger.info("features: precision %s (%s)", decision["precision"], decision["reason"])
    return decision


def choose_for_run(backbone: Any, splits: Any, settings: Any) -> dict[str, Any]:
    """:func:`choose_precision` for a run of ``settings`` on ``splits`` (checked on its training split)."""
    b, tr = settings.backbone, settings.training
    total = sum(len(x) for x in (splits.train, splits.val, splits.test) if x is not None)
    return choose_precision(backbone, splits.train, setting=b.feature_precision, runtime=b.runtime, total_items=total,
                            batch_size=tr.batch_size, cache=b.cache, seed=tr.seed)


def check(backbone: Any, dataset: Any, *, batch_size: int = 64, cache: bool = True, cache_dir: Any = None, sample: int = SAMPLE, seed: int = 0,
          min_agreement: float = MIN_AGREEMENT, min_cosine: float = MIN_COSINE) -> dict[str, Any]:
    """Extract a seeded sample of ``dataset`` in fp32 and in each bf16 candidate (OpenVINO: all
    bf16, then fp32 up to each cut of :func:`.split.fp32_prefix_cuts` and bf16 after) and compare.

    The fastest candidate that agrees (probe agreement >= ``min_agreement``, mean cosine >=
    ``min_cosine``) and is faster than fp32 on the sample is chosen, else fp32. Returns the decision
    ``{"precision", "reason", "agreement", "cosine_mean", "cosine_min", "checked", "tried"}``: the
    figures of the chosen candidate (of the closest one when none agrees), and every candidate's in
    ``tried`` (with its inference ms per image on the sample, fp32 included). ``cache``: the
    sample's features at the chosen precision go into the feature cache, so the run does not
    extract them again."""
    if not bf16_supported():  # OpenVINO would run the "bf16" half in fp32: identical features, a check that cannot refuse
        return {"precision": "f32", "reason": "this CPU has no native bf16 (or OpenVINO is not installed): nothing to check"}
    labels = np.asarray(dataset.labels)
    idx = np.sort(np.random.default_rng(seed).permutation(len(dataset))[:sample])
    classes, counts = np.unique(labels[idx], return_counts=True)
    if len(classes) < 2 or counts.min() < 2:
        return {"precision": "f32", "reason": f"too few labeled images to check bf16 ({len(idx)} sampled, {len(classes)} classes)"}
    sub = dataset.subset(idx)
    runs = run_precisions(backbone, sub, batch_size=batch_size, cache_dir=cache_dir)
    ref, ref_s = runs["f32"]
    ms = lambda seconds: round(1e3 * seconds / len(idx), 3)  # noqa: E731
    tried = [{"precision": "f32", "ms_per_item": ms(ref_s)}]
    for name, (feats, seconds) in list(runs.items())[1:]:
        cosine = row_cosine(ref, feats)
        tried.append({"precision": name, "agreement": probe_agreement(ref, feats, labels[idx], seed=seed), "cosine_mean": float(cosine.mean()),
                      "cosine_min": float(cosine.min()), "ms_per_item": ms(seconds)})
    bf16 = tried[1:]
    agreeing = [t for t in bf16 if t["agreement"] >= min_agreement and t["cosine_mean"] >= min_cosine]
    faster = [t for t in agreeing if t["ms_per_item"] < tried[0]["ms_per_item"]]
    best = min(faster, key=lambda t: t["ms_per_item"]) if faster else max(bf16, key=lambda t: (t["agreement"], t["cosine_mean"]))
    said = f"on {len(idx)} training images: " + "; ".join(
        f"{describe(t['precision'])}: probe agreement {100 * t['agreement']:.2f}%, cosine mean {t['cosine_mean']:.5f}, "
        f"{t['ms_per_item']:.2f} ms/image" for t in ([best] if faster else bf16))
    need = f"(>= {100 * min_agreement:g}% and >= {min_cosine:g} needed; fp32 {tried[0]['ms_per_item']:.2f} ms/image)"
    if faster:
        reason = f"bf16 agrees with fp32 {said} {need}"
    elif agreeing:
        reason = f"bf16 refused: it agrees but is no faster than fp32 here {said} {need}"
    else:
        reason = f"bf16 refused {said} {need}"
    figures = {k: best[k] for k in ("agreement", "cosine_mean", "cosine_min")}
    chosen = best["precision"] if faster else "f32"
    if cache:
        _store(backbone, sub, runs[chosen][0], chosen, cache_dir)
    return {"precision": chosen, "reason": reason, **figures, "checked": int(len(idx)), "tried": tried}


def _store(backbone: Any, dataset: Any, feats: np.ndarray, precision: str, cache_dir: Any) -> None:
    """``feats`` of ``dataset`` into the feature cache of ``backbone`` at ``precision``, keyed as :func:`.extract.extract_features` looks them up."""
    from .cache import backbone_fingerprint, cache_root
    from .extract import image_cache

    store, keys = image_cache(cache_root(cache_dir), backbone_fingerprint(backbone), precision, dataset)
    store.add(keys, np.asarray(feats, dtype=np.float32))
    store.flush()


def run_precisions(backbone: Any, dataset: Any, *, batch_size: int = 64, cache_dir: Any = None) -> dict[str, tuple[np.ndarray, float]]:
    """``dataset`` decoded once and run through OpenVINO in fp32 and in each bf16 candidate (all
    bf16, then each fp32-prefix cut): ``{precision: (features, seconds of inference)}``, fp32 first."""
    import time

    from .._util import available_cores
    from ..data.dataset import TorchDataset
    from .cache import backbone_fingerprint, cache_root
    from .extract import _decoded_batches, _eval_mode
    from .runtime import make_runner, onnx_model
    from .split import MIXED, fp32_prefix_cuts

    root = cache_root(cache_dir)
    fingerprint = backbone_fingerprint(backbone)
    tds = TorchDataset(dataset, backbone.preprocessing.transform())
    out: dict[str, tuple[np.ndarray, float]] = {}
    with _eval_mode(backbone):
        batches = list(_decoded_batches(tds, np.arange(len(dataset)), batch_size, available_cores(), {}))
        path = onnx_model(backbone, batches[0], fingerprint=fingerprint, cache_dir=root)
        for name in ("f32", "bf16", *(MIXED + cut for cut in fp32_prefix_cuts(path))):
            runner = make_runner("openvino", backbone, batches[0], fingerprint=fingerprint, cache_dir=root, precision=name)
            runner(batches[0][:4])  # compiled; first inference not timed
            t = time.perf_counter()
            feats = np.concatenate([runner(x) for x in batches])
            out[name] = (feats, time.perf_counter() - t)
    return out


def probe_agreement(reference: np.ndarray, other: np.ndarray, labels: np.ndarray, *, seed: int = 0) -> float:
    """Share of items whose top-1 class is the same on ``reference`` and ``other`` features, for
    logistic regressions fit on ``reference`` (standardised), each item predicted by the fold it
    was not fit on (two stratified folds)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    same = np.zeros(len(labels), dtype=bool)
    for fit_idx, held in StratifiedKFold(2, shuffle=True, random_state=seed).split(reference, labels):
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(reference[fit_idx], labels[fit_idx])
        same[held] = probe.predict(reference[held]) == probe.predict(other[held])
    return float(same.mean())


def row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of ``a`` with the same row of ``b`` (1 for two zero rows)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    both_zero = (na == 0) & (nb == 0)
    cos = (a * b).sum(1) / np.maximum(na * nb, 1e-30)
    return np.where(both_zero, 1.0, cos)


def backbone_precision(backbone: Any, fingerprint: str) -> str:
    """The precision decided for ``backbone`` (``feature_precision``), if it was decided for these
    weights and preprocessing (``fingerprint``); else fp32."""
    decision = getattr(backbone, "feature_precision", None) or {}
    chosen = decision.get("precision")
    return chosen if is_precision(chosen) and decision.get("fingerprint") == fingerprint else "f32"


def _on_gpu(backbone: Any) -> bool:
    return any(p.device.type != "cpu" for p in backbone.parameters())
