"""The outputs of ``headstart gap``: the map of the two domains (PNG) and ``gap.html``.

The map is a 2-D t-SNE (van der Maaten & Hinton 2008; :func:`headstart.evaluate.plots.tsne_2d`)
of both domains' features, drawn twice: coloured by domain, and coloured by class where items have
labels (unlabeled items in grey). ``gap.html`` is one self-contained file in the style of the run
report (:mod:`headstart.evaluate.report`: its CSS and its HTML builder, every user string escaped),
with the map embedded as a base64 PNG; it makes no network request.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..evaluate.plots import _figure, _save, class_colors
from ..evaluate.report import CSS, _Doc, _e

#: Colours of the two domains on the map (source, target).
DOMAIN_COLORS = ("#1f77b4", "#ff7f0e")

#: What each measure's row of the table says (also the terminal table's last column).
MEANINGS = {
    "mmd2": "multi-kernel MMD² (unbiased; ~0 for one distribution, may dip below 0): the gap's size, small < 0.01, large >= 0.15",
    "mmd_p_value": "chance of an MMD² this large with no shift (permutation test); < 0.05: the domains differ",
    "pad": "2(1-2ε) of a linear domain classifier: 0 = at chance (the domains look alike), 2 = it never errs",
    "coral": "covariance gap ||C_S - C_T||²_F / 4d² (the Deep CORAL loss)",
    "frechet": "Fréchet distance of the two feature Gaussians (the FID formula)",
}
TITLES = {"mmd2": "MMD²", "mmd_p_value": "MMD p-value", "pad": "proxy A-distance", "coral": "CORAL", "frechet": "Fréchet"}


def measure_rows(m: dict[str, Any]) -> list[list[Any]]:
    """``[measure, value, no-shift reference, meaning]`` rows of the measures ``m`` (of ``gap_measures``)."""
    ref = {
        "pad": "0",
        "mmd2": f"{m['mmd_null_q95']:.3g} (95% of shuffles below)",
        "mmd_p_value": f"uniform on (0, 1]; {m['mmd_n_perm']} permutations",
        "coral": f"{m['coral_null']:.4g} (a shuffled split)",
        "frechet": f"{m['frechet_null']:.4g} (a shuffled split)",
    }
    value = {"pad": f"{m['pad']:.3f} (error {m['pad_error']:.3f})", "mmd2": f"{m['mmd2']:.4g}", "mmd_p_value": f"{m['mmd_p_value']:.3g}",
             "coral": f"{m['coral']:.4g}", "frechet": f"{m['frechet']:.4g}"}
    return [[TITLES[k], value[k], ref[k], MEANINGS[k]] for k in TITLES]


def map_plot(xy: np.ndarray, domain: np.ndarray, labels: np.ndarray, classes: Sequence[str], names: tuple[str, str], path: Path) -> Path:
    """Left: points coloured by domain (0 source, 1 target); right: by class (``labels`` ``-1`` in grey),
    source as dots, target as crosses. Only the left panel when no item has a label."""
    has_classes = bool(len(classes)) and bool((labels >= 0).any())
    fig = _figure(13 if has_classes else 7.5, 5.6)
    axes = np.atleast_1d(fig.subplots(1, 2 if has_classes else 1))
    ax = axes[0]
    for d in (0, 1):
        sel = domain == d
        ax.scatter(xy[sel, 0], xy[sel, 1], s=10, color=DOMAIN_COLORS[d], alpha=0.6, linewidths=0, label=f"{names[d]} ({int(sel.sum())})")
    ax.set_title("coloured by domain")
    if has_classes:
        ax = axes[1]
        colors = class_colors(len(classes))
        unl = labels < 0
        if unl.any():
            ax.scatter(xy[unl, 0], xy[unl, 1], s=10, color="#bbbbbb", alpha=0.5, linewidths=0, label=f"unlabeled ({int(unl.sum())})")
        for c in np.unique(labels[~unl]):
            for d, marker in ((0, "o"), (1, "x")):
                sel = (labels == c) & (domain == d)
                if sel.any():
                    ax.scatter(xy[sel, 0], xy[sel, 1], s=10 if d == 0 else 14, marker=marker, color=colors[c], alpha=0.7,
                               linewidths=0 if d == 0 else 0.8, label=str(classes[c]) if d == 0 or not ((labels == c) & (domain == 0)).any() else None)
        ax.set_title("coloured by class (dots: source, crosses: target)")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, markerscale=1.5)
    return _save(fig, path)


def build_html(res: Any) -> str:
    """``gap.html`` of a :class:`~headstart.gap.run.GapResult`, one self-contained page."""
    m, v = res.measures, res.verdict
    doc = _Doc()
    title = f"headstart gap: {res.source_name} → {res.target_name}"
    doc.h(1, title)
    doc.p(" · ".join(x for x in (f"backbone {res.backbone}", f"{res.image_size} px" if res.image_size else "",
                                 f"{m['dim']}-d features", time.strftime("%Y-%m-%d %H:%M")) if x), "sub")
    cards = [("MMD²", f"{m['mmd2']:.3g}"), ("MMD p-value", f"{m['mmd_p_value']:.3g}"), ("proxy A-distance", f"{m['pad']:.2f}"),
             ("CORAL", f"{m['coral']:.3g}"), ("Fréchet", f"{m['frechet']:.4g}")]
    doc.raw("<div class=\"cards\">" + "".join(f"<div class=\"card\"><div class=\"v\">{_e(val)}</div><div class=\"k\">{_e(k)}</div></div>" for k, val in cards) + "</div>",
            " · ".join(f"**{k}** {val}" for k, val in cards) + "\n")
    doc.h(2, "Verdict", "verdict")
    doc.raw(f"<div class=\"finding {_e(v.severity)}\"><b>{_e(v.title)}</b>{_e(v.seen)}<div class=\"try\"><i>What to try:</i> {_e(v.advice)}</div></div>",
            f"- **{v.title}.** {v.seen} *What to try:* {v.advice}\n")
    doc.h(2, "Measures", "measures")
    doc.table(["measure", "value", "no-shift reference", "what it means"], measure_rows(m), numeric={1})
    doc.p(res.sample_note, "note")
    if res.map_png is not None and Path(res.map_png).is_file():
        doc.h(2, "Map of the two domains", "map")
        doc.figure(Path(res.map_png), "t-SNE of the features", f"{res.map_items} items per domain at most (seeded); "
                   "domains that overlap on the left are close; on the right, a class whose source dots and target crosses "
                   "lie apart is one the shift moves.", Path(res.map_png).name)
    elif res.map_note:
        doc.p(f"Map not drawn: {res.map_note}", "note")
    doc.h(2, "Data", "data")
    doc.table(["domain", "data", "items", "measured", "classes", "native size (px)"],
              [[role, d["data"], d["items"], d["measured"], ", ".join(d["classes"]) if d["classes"] else "unlabeled", d["native_size"]]
               for role, d in (("source", res.source_info), ("target", res.target_info))], numeric={2, 3})
    doc.h(2, "Timings", "timings")
    doc.table(["step", "seconds"], [[k, float(s)] for k, s in res.seconds.items()], numeric={1})
    doc.h(2, "Settings", "settings")
    doc.table(["setting", "value"], [[k, str(val)] for k, val in res.settings.items()])
    doc.p("Written by headstart gap (headstart.domain_gap).", "note")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{_e(title)}</title><style>{CSS}</style></head><body><main>\n" + "\n".join(doc.html) + "\n</main></body></html>\n")
