r"""Hybrid text backbones: ``a+b`` puts the features of two or more text backbones side by side.

``minilm_l6+tfidf``: a sentence encoder's embedding and the TF-IDF bag of words, each block scaled
to unit total variance on the training split, times a weight :math:`w_k`:

.. math:: f(x) = \bigl[\, w_1 \, f_1(x) / \sigma_1,\ \ldots,\ w_m \, f_m(x) / \sigma_m \,\bigr], \qquad
          \sigma_k^2 = \sum_j \operatorname{Var}_{\text{train}}\bigl(f_k(x)_j\bigr)

Why: the linear probe centres the features and divides them all by one common scale, so a block's
share of the penalty follows its total variance; without the scaling the block with more variance
(usually the one with more dimensions) takes the probe. :data:`WEIGHTS` is 1 for every block;
measured on Rotten Tomatoes (``benchmarks/text_strategies.py``): with it, minilm_l6+tfidf 0.809
test accuracy on full data against 0.779 / 0.781 for each alone, but below minilm_l6 alone at
8-64 texts per class (the TF-IDF block is noise there). The benchmark also compares unscaled blocks
and TF-IDF weighted 2x / 0.5x on the validation split (``hybrid scaling`` rows). The scales
are fitted with the data-fitted parts (TF-IDF's vocabulary) on the training split by
:func:`headstart.features.fitted.fit_on_train`, and saved as the buffer ``scales``.

Each part keeps its own runtime and feature cache (extraction runs part by part: the encoder through
ONNX Runtime and its cache, TF-IDF through scikit-learn); ``forward`` (the training loop) runs the
parts on a token dict whose keys carry the part's index (``"0.input_ids"``, ``"1.input_ids"``, ...).
Layer groups: the parts' groups, in order.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..errors import BackboneError
from .base import BackboneSpec, Provenance, TextPreprocessing
from .text import TextBackbone

#: Weight of each block after unit-variance scaling (see the module doc).
WEIGHTS = 1.0


class HybridBackbone(TextBackbone):
    """Text backbones side by side, each block scaled (see the module doc)."""

    preferred_runtime = "torch"
    cacheable = False  # the parts use the cache; the scaled concatenation is cheap

    def __init__(self, name: str, parts: Sequence[TextBackbone]):
        super().__init__()
        self.parts = nn.ModuleList(parts)
        self.spec = BackboneSpec(name, {})
        self.register_buffer("scales", torch.ones(len(parts)))
        self.refresh()

    @property
    def fitted(self) -> bool:
        return all(getattr(p, "fitted", True) for p in self.parts) and bool(getattr(self, "_scaled", False))

    def refresh(self) -> None:
        """Recompute the size, preprocessing and provenance from the parts (after a part was fitted)."""
        ps = list(self.parts)
        self.num_features = sum(int(p.num_features) for p in ps)
        toks = " + ".join(p.preprocessing.tokenizer for p in ps)
        hashes = "|".join(str(p.preprocessing.tokenizer_sha256) for p in ps)
        self.preprocessing = TextPreprocessing(toks, hashlib.sha256(hashes.encode()).hexdigest(), max(p.preprocessing.max_length for p in ps))
        w = [p.provenance.weights_sha256 for p in ps]
        scale = ",".join(f"{float(s):.9g}" for s in self.scales)
        self.provenance = Provenance(" + ".join(p.provenance.source for p in ps),
                                     hashlib.sha256(("|".join(w) + scale).encode()).hexdigest() if all(w) else None,
                                     " + ".join(str(p.provenance.pretrained_on) for p in ps), None)

    def set_scales(self, sigmas: Sequence[float], weights: Sequence[float] | None = None) -> None:
        """``scales[k] = weights[k] / sigmas[k]`` (see the module doc)."""
        weights = [WEIGHTS] * len(self.parts) if weights is None else list(weights)
        self.scales = torch.as_tensor([w / max(float(s), 1e-12) for w, s in zip(weights, sigmas)], dtype=torch.float32)
        self._scaled = True
        self.refresh()

    def tokenize(self, texts: Sequence[str], *, warn: bool = True) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        self.last_truncated = 0
        for k, p in enumerate(self.parts):
            out.update({f"{k}.{key}": v for key, v in p.tokenize(texts, warn=warn).items()})
            self.last_truncated = max(self.last_truncated, p.last_truncated)
        return out

    def encode_ids(self, texts: Sequence[str]) -> tuple[list[list[int]], int]:
        return self.parts[0].encode_ids(texts)  # lengths for batching: the first part's tokens

    def forward_features(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        feats = []
        for k, p in enumerate(self.parts):
            sub = {key.split(".", 1)[1]: v for key, v in x.items() if key.startswith(f"{k}.")}
            feats.append(p(sub) * self.scales[k])
        return torch.cat(feats, 1)

    def layer_groups(self) -> list[nn.Module]:
        return [g for p in self.parts for g in p.layer_groups()]

    def save_files(self, folder: Path) -> None:
        for k, p in enumerate(self.parts):
            p.save_files(Path(folder) / str(k))


def create_hybrid(name: str, *, pretrained: bool = True, weights: str | None = None, files: str | None = None, **kwargs: Any) -> HybridBackbone:
    """The hybrid backbone ``name`` (``"a+b"``); every part must be a registered text backbone."""
    from .registry import _REGISTRY, create_backbone

    names = [n.strip() for n in name.split("+")]
    if len(names) < 2 or any(not n for n in names):
        raise BackboneError(f"Backbone {name!r} is not a hybrid of named parts. Fix: join two or more text backbones with '+', "
                            "e.g. 'minilm_l6+tfidf'.")
    if len(set(names)) < len(names):
        raise BackboneError(f"Backbone {name!r} names a part twice. Fix: name each part once, e.g. 'minilm_l6+tfidf'.")
    if weights is not None:
        raise BackboneError(f"A hybrid backbone ({name!r}) takes no --weights: each part uses its own (use a part's 'hf:<folder>' form for local weights).")
    parts = []
    for k, part in enumerate(names):
        entry = _REGISTRY.get(part) or _REGISTRY.get(part.partition(":")[0] + ":")
        if entry is not None and entry.modality != "text":  # before building it (loading its weights)
            raise BackboneError(f"Part {part!r} of hybrid backbone {name!r} is an {entry.modality} backbone; a hybrid joins text backbones. "
                                "Fix: use text parts (see 'headstart backbones --modality text'), e.g. 'minilm_l6+tfidf'.")
        extra = {"files": str(Path(files) / str(k))} if files is not None else {}
        try:
            bb = create_backbone(part, pretrained=pretrained, **extra, **kwargs)
        except BackboneError as e:
            raise BackboneError(f"Part {part!r} of hybrid backbone {name!r}: {e}") from e
        if not isinstance(bb, TextBackbone):  # e.g. run:<folder> of an image run
            raise BackboneError(f"Part {part!r} of hybrid backbone {name!r} is an image backbone; a hybrid joins text backbones. "
                                "Fix: use text parts (see 'headstart backbones --modality text'), e.g. 'minilm_l6+tfidf'.")
        parts.append(bb)
    bb = HybridBackbone(name, parts)
    bb._scaled = files is not None  # a run folder's hybrid: its scales come with the weights
    return bb
