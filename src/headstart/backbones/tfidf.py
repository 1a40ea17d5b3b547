r"""TF-IDF as a text backbone: scikit-learn's ``TfidfVectorizer``, fitted on the training split only.

``tfidf``: word 1-2-grams; ``tfidf_char``: character 2-5-grams inside word boundaries
(``char_wb``). Both: lower-cased, sublinear tf, ``min_df = 2``, at most :data:`MAX_FEATURES` terms
(the most frequent), rows L2-normalised, as scikit-learn computes them:

.. math:: f(x)_j = \frac{v_j}{\lVert v \rVert_2}, \qquad
          v_j = \bigl(1 + \log \mathrm{tf}_j(x)\bigr)\, \mathrm{idf}_j \ \ (\mathrm{tf}_j > 0), \qquad
          \mathrm{idf}_j = 1 + \log\frac{1 + n}{1 + \mathrm{df}_j}

with :math:`n` the training texts and :math:`\mathrm{df}_j` how many of them hold term :math:`j`.

A data-fitted backbone: built empty (``fitted is False``), it learns its vocabulary and idf from the
training texts (:meth:`TfidfBackbone.fit_texts`, which ``fit``, ``rank`` and ``curve`` call through
:func:`headstart.features.fitted.fit_on_train`); a word seen only in validation or test gets no
column. The vocabulary (JSON, ``backbone/tfidf.json``) and the idf (a buffer, in
``model.safetensors``) travel in the run folder, so a saved run predicts in a fresh process. The
feature-cache fingerprint hashes both, through ``provenance.weights_sha256``.

Features are dense float32 ``(N, V)``, like every backbone's (the heads, LogME and the gap measures
take arrays). Measured on Rotten Tomatoes' default split (8,966 training texts): the vocabulary is
25,302 terms, so the training features take 0.9 GB, and headstart's linear probe on them peaked at
3.7 GB of memory; :data:`MAX_FEATURES` = 30,000 keeps that vocabulary whole (capping it at 20,000 /
10,000 terms cost the TF-IDF + LinearSVC baseline 0.6 / 0.9 points of test accuracy). They are
not written to the disk feature cache: ``transform`` takes about a second for 10,000 texts, and a
cached row would be ~100 KB. ``forward`` computes the same features in torch from the term ids that
:meth:`TextBackbone.tokenize` pads (for the training loop's collate); there is nothing to train
(``layer_groups() == []``).

:func:`sparse_baseline`: TF-IDF (word 1-2-grams) + ``LinearSVC(C=0.5)`` on a run's own split, the
bag-of-words baseline that ``fit`` stores beside a text run's figures (``metrics.json``).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import BackboneError
from .base import BackboneSpec, Provenance, TextPreprocessing
from .registry import register_backbone
from .text import TextBackbone

#: The vectorizer of each registered name (scikit-learn ``TfidfVectorizer`` arguments).
KINDS: dict[str, dict[str, Any]] = {
    "tfidf": {"analyzer": "word", "ngram_range": [1, 2]},
    "tfidf_char": {"analyzer": "char_wb", "ngram_range": [2, 5]},
}
COMMON: dict[str, Any] = {"lowercase": True, "sublinear_tf": True, "min_df": 2}
#: Most terms kept (the most frequent ones): see the module doc for the measurement.
MAX_FEATURES = 30_000
#: Texts transformed at a time (bounds the sparse-to-dense step's temporary memory).
CHUNK = 4096
FILES = "tfidf.json"


def _vectorizer(params: dict[str, Any], vocabulary: dict[str, int] | None = None):
    from sklearn.feature_extraction.text import TfidfVectorizer

    p = {**params, "ngram_range": tuple(params["ngram_range"])}
    return TfidfVectorizer(**p, vocabulary=vocabulary, dtype=np.float32)


class TfidfBackbone(TextBackbone):
    """TF-IDF features of texts (see the module doc); empty until :meth:`fit_texts`."""

    preferred_runtime = "torch"
    cacheable = False  # transform is cheap and a row is V floats: not worth the disk cache

    def __init__(self, kind: str, vocab: list[str] | None = None, *, fitted_on: str = ""):
        super().__init__()
        self.kind, self.params = kind, {**KINDS[kind], **COMMON, "max_features": MAX_FEATURES}
        self.spec = BackboneSpec(kind, {})
        self.register_buffer("idf", torch.zeros(len(vocab or ())))
        self._set_vocab(list(vocab or ()), fitted_on)

    # --- fitting -------------------------------------------------------------------------------
    @property
    def fitted(self) -> bool:
        return bool(self.vocab)

    def fit_texts(self, texts: Sequence[str], *, source: str = "") -> "TfidfBackbone":
        """Learn the vocabulary and idf from ``texts`` (the training split's, never validation or test)."""
        vec = _vectorizer(self.params)
        try:
            vec.fit([str(t) for t in texts])
        except ValueError as e:  # "empty vocabulary; perhaps the documents only contain stop words"
            raise BackboneError(f"{self.kind} found no term in at least {COMMON['min_df']} of the {len(texts)} training texts ({e}). "
                                "Fix: give more training texts, or use a pretrained text backbone (minilm_l6, glove50).") from e
        vocab = [t for t, _ in sorted(vec.vocabulary_.items(), key=lambda kv: kv[1])]
        self.idf = torch.as_tensor(vec.idf_, dtype=torch.float32)
        self._set_vocab(vocab, f"{len(texts)} training texts" + (f" of {source}" if source else ""))
        return self

    def _set_vocab(self, vocab: list[str], fitted_on: str) -> None:
        self.vocab = vocab
        self.index = {t: i for i, t in enumerate(vocab)}
        self.num_features = len(vocab)
        self._vec = None
        definition = json.dumps({"params": self.params, "vocabulary": vocab}, sort_keys=True)
        h = hashlib.sha256(definition.encode()).hexdigest()
        self.preprocessing = TextPreprocessing(f"sklearn TfidfVectorizer ({self.params['analyzer']} {self.params['ngram_range']}-grams)",
                                               h, 1_000_000)
        idf_hash = hashlib.sha256(self.idf.numpy().tobytes()).hexdigest()
        self.provenance = Provenance(f"fitted:{self.kind}", hashlib.sha256((h + idf_hash).encode()).hexdigest() if vocab else None,
                                     fitted_on or None, None)

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise BackboneError(f"Backbone {self.kind!r} has no vocabulary yet: it is fitted on the training split of the data it encodes. "
                                "Fix: call backbone.fit_texts(training texts) first (headstart fit, rank and curve do this).")

    # --- features ------------------------------------------------------------------------------
    def transform_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Dense ``(N, V)`` float32 TF-IDF rows (scikit-learn's transform with the fitted vocabulary and idf)."""
        self._check_fitted()
        if self._vec is None:
            self._vec = _vectorizer(self.params, self.index)
            self._vec.idf_ = self.idf.numpy().astype(np.float64)
        out = np.zeros((len(texts), self.num_features), dtype=np.float32)
        for i in range(0, len(texts), CHUNK):
            out[i : i + CHUNK] = self._vec.transform([str(t) for t in texts[i : i + CHUNK]]).toarray()
        return out

    def encode_ids(self, texts: Sequence[str]) -> tuple[list[list[int]], int]:
        self._check_fitted()
        if self._vec is None:
            self.transform_texts([])
        analyze, get = self._vec.build_analyzer(), self.index.get
        return [[i for i in (get(g) for g in analyze(t)) if i is not None] for t in texts], 0

    def forward_features(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        ids, mask = x["input_ids"], x["attention_mask"]
        tf = torch.zeros(len(ids), self.num_features, dtype=self.idf.dtype, device=ids.device)
        tf.scatter_add_(1, ids, mask.to(tf.dtype))
        v = torch.where(tf > 0, 1 + torch.log(tf.clamp(min=1)), tf) * self.idf
        return nn.functional.normalize(v, dim=1)

    def layer_groups(self) -> list[nn.Module]:
        return []

    def save_files(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        doc = {"kind": self.kind, "params": self.params, "fitted_on": self.provenance.pretrained_on, "vocabulary": self.vocab}
        (folder / FILES).write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")


def _factory(kind: str):
    def build(*, pretrained: bool = True, weights: str | None = None, files: str | None = None, **kwargs: Any) -> TfidfBackbone:
        if weights is not None:
            raise BackboneError(f"{kind} takes no --weights: it learns its vocabulary from the training split.")
        if kwargs:
            raise BackboneError(f"{kind} takes no options; got {sorted(kwargs)}.")
        saved = Path(files) / FILES if files is not None else None
        if saved is not None and saved.is_file():  # a run folder's vocabulary; the idf comes with the weights
            doc = json.loads(saved.read_text(encoding="utf-8"))
            bb = TfidfBackbone(kind, doc["vocabulary"], fitted_on=doc.get("fitted_on") or "")
            if doc.get("params") != bb.params:
                raise BackboneError(f"{saved} was written with vectorizer settings {doc.get('params')}, this headstart uses {bb.params}. "
                                    "Fix: predict with the headstart version that trained the run, or refit it.")
            return bb
        return TfidfBackbone(kind)

    return build


register_backbone("tfidf", modality="text", description="TF-IDF word 1-2-grams (sublinear tf, min_df 2), fitted on the training split")(_factory("tfidf"))
register_backbone("tfidf_char", modality="text", description="TF-IDF character 2-5-grams in word boundaries, fitted on the training split")(_factory("tfidf_char"))


#: What :func:`sparse_baseline` fits: the issue's baseline (LinearSVC's C as measured there).
BASELINE = "TF-IDF word 1-2-grams (sublinear tf, min_df 2) + LinearSVC(C=0.5)"


def sparse_baseline(train_texts: Sequence[str], train_labels: Any, test_texts: Sequence[str], test_labels: Any) -> dict[str, Any]:
    """Test accuracy of :data:`BASELINE` trained on ``train_*`` (sparse, scikit-learn; about a second for 10,000 texts)."""
    from sklearn.svm import LinearSVC

    t = time.perf_counter()
    vec = _vectorizer({**KINDS["tfidf"], **COMMON})
    try:
        x_tr = vec.fit_transform([str(s) for s in train_texts])
    except ValueError as e:
        return {"model": BASELINE, "accuracy": None, "note": f"not fitted: {e}"}
    y_tr = np.asarray(train_labels)
    if len(np.unique(y_tr)) < 2:
        return {"model": BASELINE, "accuracy": None, "note": "one class in the training split"}
    svm = LinearSVC(C=0.5).fit(x_tr, y_tr)
    acc = float((svm.predict(vec.transform([str(s) for s in test_texts])) == np.asarray(test_labels)).mean())
    return {"model": BASELINE, "accuracy": acc, "n_train": len(y_tr), "n_test": len(test_texts), "seconds": round(time.perf_counter() - t, 3)}
