"""Data-fitted backbones (TF-IDF, hybrids holding it): fitted on the training split only, before any extraction.

:func:`fit_on_train` is what ``fit`` and ``rank`` call once the splits are known: a backbone with a
``fit_texts`` method (:class:`~headstart.backbones.tfidf.TfidfBackbone`) learns its vocabulary
from the training texts; a hybrid (:class:`~headstart.backbones.hybrid.HybridBackbone`) fits its
data-fitted parts, then scales each block to unit total variance on the training features (its
other parts' features come from the cache). Validation and test texts are only transformed. A
backbone that is already fitted (a saved run's, ``run:<folder>``) is left as it is. Others: no-op.
"""

from __future__ import annotations

import logging

import numpy as np

from ..data.dataset import LabeledDataset

logger = logging.getLogger("headstart.features")


def fit_on_train(backbone, train: LabeledDataset, **extract_kw) -> None:
    """Fit ``backbone`` on ``train`` if it learns from data and is not fitted yet (see the module doc)."""
    if getattr(backbone, "fitted", True) or getattr(train, "modality", "image") != "text":
        return
    parts = getattr(backbone, "parts", None)
    if parts is None:
        backbone.fit_texts(train.items, source=train.source)
        logger.info("%s: fitted on %d training texts, %d terms", backbone.name, len(train), backbone.num_features)
        return
    from .extract import extract_features

    for p in parts:
        if not getattr(p, "fitted", True):
            p.fit_texts(train.items, source=train.source)
    sigmas = []
    for p in parts:
        x = extract_features(p, train, **extract_kw)
        sigmas.append(float(np.sqrt(x.astype(np.float64).var(0).sum())) if len(x) > 1 else 1.0)
        del x
    backbone.set_scales(sigmas)
    logger.info("%s: block scales %s (unit total variance on %d training texts)", backbone.name,
                [round(float(s), 4) for s in backbone.scales], len(train))
