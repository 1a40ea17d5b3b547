"""Choose the backbone before training: transferability scores and backbone ranking.

Scores (one module each; higher is better; no training):

* :func:`logme` (You et al., ICML 2021) and :func:`hscore` / :func:`hscore_shrinkage` (Bao et al.,
  ICIP 2019; Ibrahim et al., ECML-PKDD 2022): ``score(features (n, d), labels (n,)) -> float``;
* :func:`leep` (Nguyen et al., ICML 2020): ``leep(source_proba (n, Z), labels)``;
* :func:`nce` (Tran et al., ICCV 2019): ``nce(source_labels (n,), labels)``.

:func:`rank_backbones` scores candidate backbones on a dataset (features cached) and optionally
validates the ranking against cross-validated linear-probe accuracy (Kendall tau);
:func:`choose_backbone` is what ``fit(backbone="auto", candidates=[...])`` uses.
"""

from .logme import logme  # first: registration order is the column order of ``score="all"``
from .hscore import hscore, hscore_shrinkage  # noqa: I001
from .leep import leep
from .nce import nce
from .rank import DEFAULT_CANDIDATES, BackboneScore, Ranking, choose_backbone, cv_accuracy, rank_backbones
from .registry import get_score, list_scores, register_score

__all__ = [
    "BackboneScore",
    "DEFAULT_CANDIDATES",
    "Ranking",
    "choose_backbone",
    "cv_accuracy",
    "get_score",
    "hscore",
    "hscore_shrinkage",
    "leep",
    "list_scores",
    "logme",
    "nce",
    "rank_backbones",
    "register_score",
]
