"""Transferability scores (select/): behaviour on toy problems, independent references, stability,
and backbone ranking through the library, ``fit(backbone="auto")`` and the CLI (tiny_cnn, shapes)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.optimize
from scipy.stats import entropy
from sklearn.covariance import LedoitWolf, ledoit_wolf_shrinkage
from sklearn.metrics import mutual_info_score

import headstart
from headstart.data import make_shapes
from headstart.errors import BackboneError, DataError, HeadstartError
from headstart.select import hscore, hscore_shrinkage, leep, list_scores, logme, nce, rank_backbones
from headstart.select._spectral import spectrum
from headstart.select.hscore import ledoit_wolf_alpha


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "cache"))


def toy(n: int = 300, d: int = 20, C: int = 4, signal: float = 2.0, seed: int = 0):
    """Features whose first C dimensions carry the class (plus noise), and the labels."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % C
    f = rng.normal(size=(n, d))
    f[:, :C] += signal * np.eye(C)[y]
    return f.astype(np.float32), y, rng


def source_outputs(f: np.ndarray, Z: int = 12, seed: int = 1) -> np.ndarray:
    """A fixed random "source classifier" on the features: softmax(f W), (n, Z) probabilities."""
    w = np.random.default_rng(seed).normal(size=(f.shape[1], Z)) * 0.1
    w[:4] *= 20  # the source classes depend mostly on the dimensions that carry the target class
    logits = f @ w
    p = np.exp(logits - logits.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


# --- LogME against an independent slow reference -------------------------------------------


def reference_logme(f: np.ndarray, y: np.ndarray) -> float:
    """Direct evidence maximisation: for each class, maximise the Gaussian marginal likelihood
    log N(y_c; 0, I/beta + F F^T/alpha) over (log alpha, log beta) with Nelder-Mead, several starts."""
    f = f.astype(np.float64)
    n = len(y)
    G = f @ f.T
    out = []
    for c in np.unique(y):
        t = (y == c).astype(np.float64)

        def neg(p):
            a, b = np.exp(p)
            cov = np.eye(n) / b + G / a
            _, logdet = np.linalg.slogdet(cov)
            return 0.5 * (logdet + t @ np.linalg.solve(cov, t) + n * np.log(2 * np.pi))

        opts = {"xatol": 1e-9, "fatol": 1e-12, "maxiter": 4000}
        best = min((scipy.optimize.minimize(neg, x0, method="Nelder-Mead", options=opts) for x0 in ([0.0, 0.0], [3.0, -1.0], [-3.0, 2.0])), key=lambda r: r.fun)
        out.append(-best.fun / n)
    return float(np.mean(out))


@pytest.mark.parametrize(
    "n,d,C,dup",
    [(60, 5, 3, False), (40, 10, 4, True), (30, 50, 3, False), (25, 12, 2, True), (24, 40, 5, False)],
    ids=["n>d", "n>d-dup", "d>n", "n>d-dup-2cls", "d>n-5cls"],
)
def test_logme_matches_direct_evidence_maximisation(n, d, C, dup):
    rng = np.random.default_rng(n * d + C)
    y = rng.integers(0, C, n)
    f = rng.normal(size=(n, d))
    f[:, 0] += y
    if dup:
        f = np.hstack([f, f[:, :3]])  # duplicate columns: rank-deficient F^T F
        f[-2:], y[-2:] = f[:2], y[:2]  # duplicate rows
    assert logme(f, y) == pytest.approx(reference_logme(f, y), abs=5e-5)


def test_logme_is_finite_and_settled_where_the_evidence_is_unbounded():
    """d > n with duplicate rows: every labelling is interpolated and the evidence grows without
    bound as the noise vanishes; the score stays finite and does not depend on the iteration cap."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 30)
    f = rng.normal(size=(30, 80))
    f[-3:], y[-3:] = f[:3], y[:3]
    a, b = logme(f, y, max_iter=200), logme(f, y, max_iter=5000)
    assert np.isfinite(a) and a == pytest.approx(b, abs=1e-6)


def test_logme_is_scale_invariant_and_label_order_free():
    f, y, _ = toy(200, 12, 3)
    assert logme(f, y) == pytest.approx(logme(f * 1000.0, y), abs=1e-8)
    assert logme(f, y) == pytest.approx(logme(f, np.array(["abc"[k] for k in y])), abs=1e-12)


# --- independent references for the other scores --------------------------------------------


def test_hscore_matches_direct_formula():
    f, y, _ = toy(120, 15, 3)
    f = f.astype(np.float64)
    fc = f - f.mean(0)
    g = np.stack([fc[y == c].mean(0) for c in y])  # E[f | y] per sample
    direct = np.trace(np.linalg.pinv(fc.T @ fc / len(y), rcond=1e-15) @ (g.T @ g / len(y)))
    assert hscore(f, y) == pytest.approx(direct, rel=1e-8)


@pytest.mark.parametrize("n,d", [(120, 15), (30, 80)])
def test_hscore_shrinkage_matches_sklearn_ledoit_wolf(n, d):
    f, y, _ = toy(n, d, 3)
    f = f.astype(np.float64)
    fc = f - f.mean(0)
    lw = LedoitWolf(assume_centered=True).fit(fc)
    g = np.stack([fc[y == c].mean(0) for c in y])
    direct = np.trace(np.linalg.pinv(lw.covariance_, rcond=1e-15) @ ((1 - lw.shrinkage_) * g.T @ g / n))
    assert hscore_shrinkage(f, y) == pytest.approx(direct, rel=1e-6)
    assert ledoit_wolf_alpha(fc, spectrum(fc, y).sigma) == pytest.approx(ledoit_wolf_shrinkage(fc, assume_centered=True), rel=1e-9)


def test_leep_matches_the_paper_loop():
    f, y, _ = toy(90, 8, 3)
    p = source_outputs(f, Z=7)
    n, Z = p.shape
    joint = np.zeros((3, Z))
    for i in range(n):
        joint[y[i]] += p[i] / n
    cond = joint / joint.sum(0)
    direct = np.mean([np.log(sum(cond[y[i], z] * p[i, z] for z in range(Z))) for i in range(n)])
    assert leep(p, y) == pytest.approx(direct, rel=1e-10)


def test_nce_is_mutual_information_minus_label_entropy():
    f, y, _ = toy(150, 8, 3)
    z = source_outputs(f).argmax(1)
    expected = mutual_info_score(z, y) - entropy(np.bincount(y))  # -H(Y|Z) = I(Y;Z) - H(Y)
    assert nce(z, y) == pytest.approx(expected, abs=1e-10)
    assert nce(y, y) == pytest.approx(0.0, abs=1e-12)  # labels determined by the source labels


# --- behaviour: separable labels beat shuffled ones on the same features -------------------


@pytest.mark.parametrize("name", ["logme", "hscore", "hscore_shrink", "leep", "nce"])
@pytest.mark.parametrize("n,d", [(400, 20), (60, 200)], ids=["n>d", "d>n"])
def test_every_score_prefers_separable_over_shuffled_labels(name, n, d):
    if name == "hscore" and d >= n:
        pytest.skip("plain H-score is C-1 for any labels when d >= n-1 (see test_plain_hscore_saturates_when_d_exceeds_n)")
    f, y, rng = toy(n, d, 4, signal=3.0)
    shuffled = rng.permutation(y)
    info = headstart.select.get_score(name)
    if info.needs == "features":
        args = f
    else:
        p = source_outputs(f)
        args = p if info.needs == "source_proba" else p.argmax(1)
    assert info.fn(args, y) > info.fn(args, shuffled) + 1e-3


def test_plain_hscore_saturates_when_d_exceeds_n():
    f, y, rng = toy(40, 100, 4)
    assert hscore(f, y) == pytest.approx(3.0, abs=1e-6)
    assert hscore(f, rng.permutation(y)) == pytest.approx(3.0, abs=1e-6)


# --- numerical stability ---------------------------------------------------------------------


def _finite_scores(f, y):
    p = source_outputs(f)
    vals = {"logme": logme(f, y), "hscore": hscore(f, y), "hscore_shrink": hscore_shrinkage(f, y), "leep": leep(p, y), "nce": nce(p.argmax(1), y)}
    assert all(np.isfinite(v) for v in vals.values()), vals
    return vals


def test_stable_for_d_much_larger_than_n():
    f, y, _ = toy(30, 2000, 3)
    _finite_scores(f, y)


def test_stable_with_100_classes():
    f, y, _ = toy(300, 128, 100, signal=4.0)  # 3 samples per class
    v = _finite_scores(f, y)
    assert v["logme"] > logme(f, np.random.default_rng(5).permutation(y))


def test_stable_with_duplicate_rows_and_columns_and_constant_features():
    f, y, _ = toy(100, 10, 3)
    f = np.vstack([f, f[:50]])  # duplicate rows
    y = np.concatenate([y, y[:50]])
    f = np.hstack([f, f, np.ones((len(f), 3)), np.zeros((len(f), 2))])  # duplicate, constant, zero columns
    _finite_scores(f, y)


def test_degenerate_features_give_finite_scores():
    y = np.arange(40) % 4
    for f in (np.zeros((40, 16)), np.ones((40, 16)), np.tile(np.arange(16.0), (40, 1))):
        assert np.isfinite(logme(f, y)) and np.isfinite(hscore(f, y)) and np.isfinite(hscore_shrinkage(f, y))


def test_bad_inputs_are_data_errors():
    with pytest.raises(DataError, match="NaN"):
        logme(np.full((5, 2), np.nan), np.arange(5) % 2)
    with pytest.raises(DataError, match="one label per"):
        hscore(np.zeros((5, 2)), np.arange(4))
    with pytest.raises(DataError, match="softmax"):
        leep(np.ones((4, 3)), np.arange(4) % 2)


def test_logme_runs_on_10k_by_1280():
    # its speed (~0.5 s on 2 cores) is measured by benchmarks/select_speed.py, not asserted here
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 10_000)
    f = rng.normal(size=(10_000, 1280)).astype(np.float32)
    assert np.isfinite(logme(f, y))


# --- ranking backbones: library, fit(backbone="auto"), CLI ------------------------------------


@pytest.fixture(scope="module")
def shapes():
    return make_shapes(["circle", "square", "triangle"], n_per_class=20, size=32, seed=0)


def test_rank_backbones_orders_by_score_and_validates(shapes):
    r = rank_backbones(shapes, backbones="tiny_cnn, scratch_cnn,tiny_cnn", score="all", validate=True, folds=3, runtime="torch")
    assert [row.rank for row in r.rows] == [1, 2]
    assert {row.backbone for row in r.rows} == {"tiny_cnn", "scratch_cnn"}
    assert r.rows[0].score >= r.rows[1].score and r.score_name == "logme" and r.scores[0] == "logme"
    assert r.best == r.rows[0].backbone == r.best_backbone.name  # the scored instance, kept for fit
    for row in r.rows:
        assert row.scores["leep"] is None and "no source classifier" in row.notes["leep"]
        assert 0.0 <= row.cv_accuracy <= 1.0 and row.dim in (64, 1024)
    assert set(r.kendall) == set(list_scores()) and r.kendall["leep"]["tau"] is None
    tau = r.kendall["logme"]["tau"]
    assert r.kendall["logme"]["n"] == 2 and (tau is None or abs(tau) == 1.0)  # None: tied CV accuracies


def test_leep_alone_on_a_backbone_without_source_head_names_the_alternatives(shapes, monkeypatch):
    import headstart.features

    monkeypatch.setattr(headstart.features, "extract_features", lambda *a, **k: pytest.fail("extracted before the error"))
    with pytest.raises(BackboneError, match="logme"):
        rank_backbones(shapes, backbones=["tiny_cnn"], score="leep", runtime="torch")
    with pytest.raises(HeadstartError, match="'logme'"):
        rank_backbones(shapes, backbones=["tiny_cnn"], score="LogME", runtime="torch")


def test_a_previous_run_is_ranked_with_its_own_head_as_source(shapes, tmp_path):
    run = tmp_path / "src_run"
    headstart.fit(shapes, backbone="tiny_cnn", out=run, runtime="torch")
    r = rank_backbones(shapes, backbones=[f"run:{run}"], score="all", runtime="torch")
    row = r.rows[0]
    assert row.scores["leep"] is not None and row.scores["nce"] is not None and not row.notes
    assert row.scores["leep"] <= 0.0 and row.scores["nce"] <= 0.0


def test_fit_auto_fits_the_top_candidate_and_records_the_ranking(shapes, tmp_path):
    import yaml

    model = headstart.fit(shapes, backbone="auto", candidates="tiny_cnn,scratch_cnn", out=tmp_path / "run", runtime="torch")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    ranking = metrics["backbone_ranking"]
    assert [r["rank"] for r in ranking] == [1, 2]
    assert set(ranking[0]) >= {"backbone", "score", "score_name", "dim", "extract_s", "score_s", "rank"}
    assert config["backbone"] == ranking[0]["backbone"] == model.backbone.name
    assert (tmp_path / "run" / "report.html").read_text().count("Backbone ranking") == 1  # the report shows it
    assert config["backbone_selection"]["candidates"] == [r["backbone"] for r in ranking]


def test_fit_rejects_candidates_without_auto_and_weights_with_auto(shapes):
    with pytest.raises(HeadstartError, match="only with backbone='auto'"):
        headstart.fit(shapes, backbone="tiny_cnn", candidates="tiny_cnn", save=False)
    with pytest.raises(HeadstartError, match="weights"):
        headstart.fit(shapes, backbone="auto", candidates="tiny_cnn", weights="w.pth", save=False)


def test_cli_rank_prints_table_and_writes_json_and_csv(tmp_path):
    from typer.testing import CliRunner

    from headstart.cli import app

    out = tmp_path / "rank.json"
    res = CliRunner().invoke(app, ["rank", "shapes:circle,square", "--backbones", "tiny_cnn,scratch_cnn", "--validate", "--folds", "3", "--runtime", "torch", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "LogME" in res.output and "Kendall tau" in res.output and "tiny_cnn" in res.output
    d = json.loads(out.read_text())
    assert len(d["rows"]) == 2 and d["kendall"]["logme"]["n"] == 2
    res = CliRunner().invoke(app, ["rank", "shapes:circle,square", "--backbones", "tiny_cnn", "--runtime", "torch", "--out", str(tmp_path / "r.csv")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "r.csv").read_text().splitlines()[0].startswith("rank,backbone,score_name,score")
