"""Feature extraction: batched, streaming, on the fastest CPU runtime that gives the same features, cached.

``extract_features(backbone, dataset)`` returns ``(N, num_features)`` float32 in dataset order;
``backbone_fingerprint(backbone)`` is the cache key of a backbone (spec, weights, preprocessing).
"""

from .cache import backbone_fingerprint, default_cache_dir
from .extract import extract_features

__all__ = ["extract_features", "backbone_fingerprint", "default_cache_dir"]
