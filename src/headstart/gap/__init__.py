"""How far apart two domains are, before any training: ``headstart gap`` and :func:`domain_gap`.

- :mod:`.measures`: pure functions on two feature arrays: multi-kernel MMD² with a permutation
  p-value, CORAL, Fréchet distance, proxy A-distance (:func:`gap_measures`: all of them);
- :mod:`.verdict`: the gap in plain words, with which adaptation method to try;
- :mod:`.run`: :func:`domain_gap`: load both domains, extract one backbone's features (cached),
  measure, write ``gap.json`` and a self-contained ``gap.html`` (:mod:`.report`, with a t-SNE map).
"""

from .measures import coral_distance, frechet_distance, gap_measures, mmd_test, proxy_a_distance
from .run import GapResult, domain_gap
from .verdict import gap_verdict

__all__ = ["GapResult", "coral_distance", "domain_gap", "frechet_distance", "gap_measures", "gap_verdict", "mmd_test", "proxy_a_distance"]
