"""Evaluation from saved predictions (never by retraining): metrics, plots, diagnostics, the run
report and comparisons of runs. (Transfer-vs-scratch curves train, so they sit above ``fit``:
:mod:`headstart.experiments.curve`; this package only plots and reports their saved results.)

- :mod:`.metrics`: :func:`~.metrics.classification_metrics` (scikit-learn) and the expected calibration error;
- :mod:`.run_data`: reading a run folder back; ``report_data.npz`` (features for the map, gallery thumbnails);
- :mod:`.plots`: confusion matrix, ROC/PR, learning curves, reliability, t-SNE map, gallery, curve (matplotlib, Agg);
- :mod:`.diagnostics`: over-/under-fitting, imbalance, confused classes, calibration, in plain words;
- :mod:`.report`: ``report.html`` (self-contained) and ``report.md``; ``headstart report``;
- :mod:`.compare`: ``headstart compare``.
"""
