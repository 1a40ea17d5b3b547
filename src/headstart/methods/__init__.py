"""Methods: what a fit adds to the one training loop, selected by name (``--method NAME``).

A method is a :class:`Method` subclass registered with :func:`register_method`. It declares:

- ``Options``: a frozen dataclass of its typed options (``--method-opt gamma=2``, or
  ``settings: method: options:`` in a config file), checked when the settings are built;
- ``needs``: extra inputs it requires beyond the labeled data, from :data:`NEEDS` (e.g.
  ``"target_unlabeled"``: ``--target DATA``); ``fit`` requires and loads them with the data checks,
  and the recipe hands them to :meth:`Method.prepare` as training loaders;
- what it adds to the loop: :meth:`Method.criterion` (replaces the training loss),
  :meth:`Method.loss_terms` (added to it) and :meth:`Method.callbacks` (Lightning callbacks).

Validation keeps the plain (class-weighted) cross-entropy whatever the method, so the weights kept
and the probe they are compared with are judged by one measure.

Example::

    from headstart.methods import create_method
    focal = create_method("focal", {"gamma": "2"})   # options from strings are converted by type
    focal.options.gamma                              # 2.0
"""

from .base import NEEDS, Method, Need, OldTask, create_method, list_methods, method_class, parse_options, register_method
from . import adapt, distill, focal, forgetting  # noqa: F401  (register "dan", "coral", "dann"; "distill"; "focal"; "naive", "ewc", "lwf", "rehearsal", "l2sp")

__all__ = ["NEEDS", "Need", "Method", "OldTask", "create_method", "list_methods", "method_class", "parse_options", "register_method"]
