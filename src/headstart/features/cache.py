"""On-disk feature cache keyed by content: the same (backbone, preprocessing, item bytes) -> the same row.

Layout: ``<cache_dir>/features/<backbone fingerprint>/<block>.hsf``. A *block* holds the features of
many items written together by one extraction (flushed every few thousand items, so an interrupted
run keeps what it computed). Each block file is::

    b"HSFEAT1\\n" | uint32 header length | header JSON | keys (n x 32 bytes) | features (n x dim float32)

The header carries ``n``, ``dim`` and the sha256 of the key and feature sections, so a truncated,
half-written or garbled block is detected and ignored (its items are recomputed), never used. Blocks
are written to a temporary file and renamed into place (:func:`headstart._io.atomic_path`); two
processes may write the same directory at once.

An item's key is ``sha256(backbone fingerprint + item bytes)``; the fingerprint
(:func:`backbone_fingerprint`) covers the spec, the weights and the preprocessing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import uuid
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .._io import atomic_path
from .._util import state_dict_sha256

logger = logging.getLogger("headstart.features")

_MAGIC = b"HSFEAT1\n"
_KEY_BYTES = 32
_SUFFIX = ".hsf"


def default_cache_dir() -> Path:
    """``$HEADSTART_CACHE`` when set, else ``~/.cache/headstart``."""
    env = os.environ.get("HEADSTART_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "headstart"


def cache_root(cache_dir: str | os.PathLike | None) -> Path:
    """``cache_dir`` with ``~`` expanded, or :func:`default_cache_dir` when it is ``None``."""
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def backbone_fingerprint(backbone) -> str:
    """A hex key that changes whenever the backbone's features could change.

    It hashes the spec (name and kwargs), the weights (``provenance.weights_sha256``; when that is
    ``None`` — random-init or trained weights — a hash of the state dict) and the preprocessing.
    Code that changes a backbone's weights in place must set ``provenance.weights_sha256`` to None.
    """
    weights = backbone.provenance.weights_sha256 or "state_dict:" + state_dict_sha256(backbone)
    payload = {
        "spec": backbone.spec.to_dict(),
        "weights": weights,
        "preprocessing": backbone.preprocessing.to_dict(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def item_keys(fingerprint: str, n: int, item_bytes: Callable[[int], bytes]) -> list[bytes]:
    """The 32-byte cache key of items ``0..n-1``: ``sha256(fingerprint + b"\\0" + item bytes)``."""
    base = hashlib.sha256(fingerprint.encode() + b"\0")
    keys = []
    for i in range(n):
        h = base.copy()
        h.update(item_bytes(i))
        keys.append(h.digest())
    return keys


class FeatureCache:
    """The blocks of one backbone fingerprint: look rows up by key, add new rows, flush blocks."""

    def __init__(self, cache_dir: str | os.PathLike | None, fingerprint: str, *, flush_every: int = 4096):
        self.root = cache_root(cache_dir)
        self.dir = self.root / "features" / fingerprint
        self.flush_every = flush_every
        self._pending_keys: list[bytes] = []
        self._pending_feats: list[np.ndarray] = []

    # -- reading -------------------------------------------------------------------------------
    def lookup(self, keys: list[bytes], out: np.ndarray) -> np.ndarray:
        """Fill ``out[i]`` for every cached ``keys[i]``; return the boolean mask of rows found."""
        found = np.zeros(len(keys), dtype=bool)
        if not keys or not self.dir.is_dir():
            return found
        wanted: dict[bytes, list[int]] = {}
        for i, k in enumerate(keys):
            wanted.setdefault(k, []).append(i)
        for path in sorted(self.dir.glob("*" + _SUFFIX)):
            if not wanted:
                break
            block = _read_keys(path, out.shape[1])
            if block is None:
                continue
            header, block_keys = block
            rows_here = [(r, wanted[k]) for r, k in enumerate(block_keys) if k in wanted]
            if not rows_here:
                continue
            feats = _read_feats(path, header)
            if feats is None:
                continue
            for r, targets in rows_here:
                key = block_keys[r]
                if key not in wanted:  # duplicate key inside the block
                    continue
                out[targets] = feats[r]
                found[targets] = True
                del wanted[key]
        return found

    # -- writing -------------------------------------------------------------------------------
    def add(self, keys: Iterable[bytes], feats: np.ndarray) -> None:
        """Queue rows; a block is written every ``flush_every`` rows and on :meth:`flush`."""
        self._pending_keys.extend(keys)
        self._pending_feats.append(np.asarray(feats, dtype=np.float32))
        if len(self._pending_keys) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Write the queued rows as one new block (atomically); a failed write only logs a warning."""
        if not self._pending_keys:
            return
        keys, feats = self._pending_keys, np.concatenate(self._pending_feats)
        self._pending_keys, self._pending_feats = [], []
        # The same content may occur twice in one dataset: keep one row per key.
        uniq: dict[bytes, int] = {}
        for r, k in enumerate(keys):
            uniq.setdefault(k, r)
        if len(uniq) < len(keys):
            rows = np.fromiter(uniq.values(), dtype=np.int64)
            keys, feats = list(uniq), feats[rows]
        try:
            write_block(self.dir / f"{uuid.uuid4().hex}{_SUFFIX}", keys, feats)
        except OSError as e:
            logger.warning("could not write feature cache block in %s (%s); continuing without caching it", self.dir, e)


def write_block(path: Path, keys: list[bytes], feats: np.ndarray) -> None:
    """Write one block file atomically (see the module docstring for the format)."""
    key_bytes = b"".join(keys)
    feats = np.ascontiguousarray(feats, dtype="<f4")
    if len(key_bytes) != _KEY_BYTES * len(feats):
        raise ValueError(f"{len(keys)} keys for {len(feats)} feature rows")
    header = json.dumps(
        {
            "n": int(feats.shape[0]),
            "dim": int(feats.shape[1]),
            "keys_sha256": hashlib.sha256(key_bytes).hexdigest(),
            "feats_sha256": hashlib.sha256(feats.data).hexdigest(),
        }
    ).encode()
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(_MAGIC + struct.pack("<I", len(header)) + header)
            fh.write(key_bytes)
            fh.write(feats.data)


def _corrupt(path: Path, why: str) -> None:
    logger.warning("feature cache block %s is corrupt (%s); ignoring it, its items will be recomputed", path, why)
    try:
        path.unlink()
    except OSError:
        pass


def _read_keys(path: Path, dim: int) -> tuple[dict, list[bytes]] | None:
    """Header and keys of a block, or None (logged, file removed) if it is corrupt."""
    try:
        with open(path, "rb") as fh:
            if fh.read(len(_MAGIC)) != _MAGIC:
                return _corrupt(path, "bad magic")
            (hlen,) = struct.unpack("<I", fh.read(4))
            header = json.loads(fh.read(hlen))
            n, d = int(header["n"]), int(header["dim"])
            if d != dim:
                return _corrupt(path, f"feature dim {d}, expected {dim}")
            size = os.fstat(fh.fileno()).st_size
            offset = len(_MAGIC) + 4 + hlen
            if size != offset + n * _KEY_BYTES + n * d * 4:
                return _corrupt(path, f"length {size} does not match its header")
            key_bytes = fh.read(n * _KEY_BYTES)
    except FileNotFoundError:
        return None  # removed by another process meanwhile
    except (OSError, ValueError, KeyError, TypeError, struct.error) as e:
        return _corrupt(path, f"unreadable header: {e}")
    if hashlib.sha256(key_bytes).hexdigest() != header.get("keys_sha256"):
        return _corrupt(path, "key checksum mismatch")
    header["_offset"] = offset + n * _KEY_BYTES
    return header, [key_bytes[i : i + _KEY_BYTES] for i in range(0, len(key_bytes), _KEY_BYTES)]


def _read_feats(path: Path, header: dict) -> np.ndarray | None:
    """The feature rows of a block whose keys were read, checksum-verified; None if corrupt."""
    n, d = int(header["n"]), int(header["dim"])
    try:
        with open(path, "rb") as fh:
            fh.seek(header["_offset"])
            data = fh.read(n * d * 4)
    except OSError as e:
        return _corrupt(path, f"unreadable features: {e}")
    if len(data) != n * d * 4 or hashlib.sha256(data).hexdigest() != header.get("feats_sha256"):
        return _corrupt(path, "feature checksum mismatch")
    return np.frombuffer(data, dtype="<f4").reshape(n, d)
