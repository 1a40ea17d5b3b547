"""The gap in plain words, with what to try (in the style of :mod:`headstart.evaluate.diagnostics`).

The verdict reads the measures that need no unit. The MMD test's p-value says whether there is a
shift at all; the MMD² itself says how large it is (its Gaussian kernels take values in [0, 1]
and their bandwidths scale with the median distance of the pooled features, so it does not grow
with the feature scale); the proxy A-distance (PAD) says how easily a linear classifier tells the
domains apart. CORAL and Fréchet depend on the feature scale, so they are read against their
no-shift reference only. Tiers:

- **no measurable gap**: MMD p-value >= 0.05 (the conventional 5 % level) and PAD < 0.5 (a
  domain classifier within 12.5 points of chance);
- **inconclusive**: p >= 0.05 but PAD >= 0.5: the two disagree, which happens with few items;
- **small**: p < 0.05 and MMD² < 0.01 (or PAD < 0.5);
- **moderate**: 0.01 <= MMD² < 0.15;
- **large**: MMD² >= 0.15.

Why MMD² and not PAD sizes the gap: on the deep features of real pairs PAD saturates. Measured
with EfficientNet-Lite0 (at most 1,000 items per domain, 200 permutations; :data:`CALIBRATION`),
PAD is 1.97-2.0 for every restyled pair, whether a linear probe trained on the source loses 0.5
points on the target (shapes with light pixel noise) or 56 (shapes grey on heavy noise), while MMD²
orders them: below 0.003 where the probe lost at most 3 points, 0.018-0.13 where it lost 0.5-8
points, 0.18-0.41 where it lost half its accuracy. The cut points 0.01 and 0.15 fall between
those groups; they are rules of thumb from nine pairs and one backbone, stated in the verdict's
text, not tests.

What to try follows the adaptation methods ``fit`` offers: a moderate shift is what CORAL (Sun &
Saenko 2016), which aligns the features' second-order statistics with no extra network, is made
for; a large one needs DANN (Ganin et al. 2016), features a domain classifier cannot tell apart,
or DAN (Long et al. 2015), the multi-kernel MMD measured here, as a loss.
"""

from __future__ import annotations

from typing import Any

from ..evaluate.diagnostics import Finding

SAME_P = 0.05  # the MMD test's level
SMALL_PAD = 0.5  # domain classifier error > 0.375: within 12.5 points of chance
SMALL_MMD2 = 0.01
LARGE_MMD2 = 0.15
FEW_ITEMS = 100  # below this many items per domain, "no measurable gap" says the test had little power

#: The real pairs the thresholds were set on: EfficientNet-Lite0, at most 1,000 items per domain, seed 0.
#: ``drop``: accuracy of a linear probe (5-fold CV on the source) minus its accuracy on the target when
#: trained on the source alone, in points; CORAL and Fréchet as multiples of their no-shift reference.
CALIBRATION = (
    # pair,                                 MMD²,    p,     PAD,  CORAL x, Fréchet x, drop
    ("MNIST 5k, two halves",                0.00012, 0.24,  0.03, 1.1,  1.0,  -0.2),
    ("shapes, two seeds",                   0.00006, 0.30,  0.07, 1.8,  1.1,  -0.1),
    ("MNIST vs MNIST at 85 % contrast",     0.0027,  0.005, 1.22, 1.8,  1.4,   3.0),
    ("MNIST vs MNIST at 60 % contrast",     0.018,   0.005, 1.78, 3.1,  2.3,   7.9),
    ("shapes vs shapes + noise (sd 12)",    0.047,   0.005, 1.97, 14.8, 6.1,   0.5),
    ("shapes vs shapes + noise (sd 25)",    0.104,   0.005, 2.00, 29.1, 12.0,  3.1),
    ("shapes vs grey shapes",               0.128,   0.005, 1.98, 69.6, 21.3,  6.5),
    ("MNIST 5k vs scikit-learn digits",     0.177,   0.005, 2.00, 25.1, 15.6, 49.4),
    ("shapes vs grey shapes + noise (sd 50)", 0.408, 0.005, 2.00, 90.1, 38.3, 55.7),
)


def _ratio(value: float, null: float) -> str:
    return f"{value / null:.1f}x" if null > 0 else ("0x" if value == 0 else "far above")


def gap_verdict(m: dict[str, Any], *, target: str = "<target data>") -> Finding:
    """The :class:`~headstart.evaluate.diagnostics.Finding` (severity ``ok``, ``info`` or ``warning``) of
    the measures ``m`` of :func:`~headstart.gap.measures.gap_measures`; ``target`` names the target data in the advice."""
    pad, err, p, mmd2 = m["pad"], m["pad_error"], m["mmd_p_value"], m["mmd2"]
    seen = (f"MMD² is {mmd2:.3g} (small below {SMALL_MMD2:g}, large from {LARGE_MMD2:g}) with p = {p:.3g}"
            + (" (no evidence of a shift at the 5 % level)" if p >= SAME_P else " (a shift, at the 5 % level)")
            + f"; a linear domain classifier errs on {err:.1%} of the items (chance is 50 %; PAD {pad:.2f} of 2)."
            + f" Against a shuffled split of the pooled items (no shift), CORAL is {_ratio(m['coral'], m['coral_null'])} "
            + f"and Fréchet {_ratio(m['frechet'], m['frechet_null'])} theirs.")
    few = min(m.get("n_source", 0), m.get("n_target", 0))
    fit = f"'headstart fit ... --target {target} --method"
    if p >= SAME_P and pad < SMALL_PAD:
        caveat = f" With only {few} items per domain a small shift can go unseen: measure more if you have them." if 0 < few < FEW_ITEMS else ""
        return Finding("No measurable gap: the domains look alike to this backbone", seen,
                       "Train as usual (linear probe or fine-tuning on the labeled data); domain adaptation has nothing to align." + caveat, "ok")
    if p >= SAME_P:
        return Finding("Inconclusive: the MMD test sees no shift, the domain classifier does", seen,
                       "Measure again with more items of each domain (--max-items, or more data). Until then treat the gap as "
                       "small: train as usual, and check accuracy on a few labeled target examples.", "info")
    if mmd2 < SMALL_MMD2 or pad < SMALL_PAD:
        return Finding("A small gap", seen,
                       "Train as usual: on such pairs a probe trained on the source lost at most a few points on the target. "
                       f"If accuracy on the target falls short, the cheapest alignment is {fit} coral'; a few labeled target "
                       "examples help more.", "info")
    if mmd2 < LARGE_MMD2:
        return Finding("A moderate gap: the domains differ, but overlap", seen,
                       f"Adapt: {fit} coral' (aligns the features' covariances; no extra network, cheap; the target's labels "
                       "are not needed), and check with labeled target examples (--target-test) that it helps: on such pairs a "
                       "probe trained on the source alone lost up to about 8 points. If some target labels exist, fine-tune on them too.",
                       "warning")
    return Finding("A large gap: the domains barely overlap", seen,
                   f"Adapt: {fit} dann' (features a domain classifier cannot tell apart) or '--method dan' (multi-kernel MMD, the "
                   "distance measured here); '--method coral' is the cheap first try but aligns covariances only. On such pairs a "
                   "probe trained on the source alone lost half its accuracy on the target. Label a few target examples if you can "
                   "(they help more than any adaptation), consider a backbone whose features suit the target ('headstart rank'), "
                   "and run 'headstart gap' again to see how much is left.", "warning")
