"""``headstart gap`` / ``headstart.domain_gap``: the measures on arrays, the verdict, and end to end
on tiny image sets (the ``tiny_cnn`` backbone), the command line included."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import headstart
from headstart.data import LabeledDataset, make_shapes
from headstart.errors import BackboneError, DataError, HeadstartError
from headstart.gap import coral_distance, frechet_distance, gap_measures, gap_verdict, mmd_test, proxy_a_distance
from headstart.gap.measures import permutation_mmd2
from headstart.gap.run import image_size_for, short_name
from headstart.methods.divergence import MMD_MULTIPLIERS, coral, kernel_matrix, median_sq_distance, mmd2_from_kernel


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "cache"))


def gaussians(n: int, m: int, d: int = 12, shift: float = 0.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.normal(size=(m, d)) + shift


def styled(ds: LabeledDataset, seed: int = 0) -> LabeledDataset:
    """The same shapes in another style: grey, on heavy pixel noise (a domain shift, classes kept)."""
    grey = ds.items.astype(np.float32).mean(-1, keepdims=True).repeat(3, -1)
    noisy = grey + np.random.default_rng(seed).normal(0, 50, grey.shape)
    return LabeledDataset(np.clip(noisy, 0, 255).astype(np.uint8), ds.labels, list(ds.classes), "image", "styled")


# --- the measures, on arrays -------------------------------------------------------------------


def test_one_distribution_gives_no_gap():
    x, y = gaussians(150, 120)
    m = gap_measures(x, y, n_perm=200, seed=0)
    assert m["mmd_p_value"] > 0.05
    assert abs(m["mmd2"]) < m["mmd_null_q95"] + 1e-9
    assert m["pad"] < 0.5
    assert m["coral"] < 3 * m["coral_null"] and m["frechet"] < 3 * m["frechet_null"]
    assert gap_verdict(m).title.startswith("No measurable gap")


def test_a_shift_gives_a_large_gap():
    x, y = gaussians(150, 120, shift=1.5)
    m = gap_measures(x, y, n_perm=200, seed=0)
    assert m["mmd_p_value"] == pytest.approx(1 / 201)  # no permutation reaches the observed statistic
    assert m["mmd2"] > 10 * m["mmd_null_q95"]
    assert m["pad"] > 1.5 and m["pad_error"] < 0.125
    assert m["frechet"] > 10 * m["frechet_null"]
    v = gap_verdict(m)
    assert v.title.startswith("A large gap") and "--method dann" in v.advice and v.severity == "warning"


def test_permutation_p_value_is_seeded():
    x, y = gaussians(40, 40, shift=0.25, seed=3)  # a borderline shift: the p-value depends on the permutations drawn
    p = [mmd_test(x, y, n_perm=50, seed=s)["p_value"] for s in range(4)]
    assert mmd_test(x, y, n_perm=50, seed=0)["p_value"] == p[0]
    assert len(set(p)) > 1
    assert all(1 / 51 <= v <= 1 for v in p)


def test_batched_permutations_equal_the_shared_estimator():
    """The permutation statistics are ``methods.divergence.mmd2_from_kernel`` of the permuted kernel matrix, exactly."""
    x, y = gaussians(30, 25, shift=0.3)
    z = torch.as_tensor(np.concatenate([x, y]))
    k = kernel_matrix(z, [median_sq_distance(z).double() * s for s in MMD_MULTIPLIERS])
    gen = torch.Generator().manual_seed(0)
    perms = [torch.randperm(55, generator=gen) for _ in range(5)]
    in_x = torch.zeros(5, 55, dtype=k.dtype)
    for i, p in enumerate(perms):
        in_x[i, p[:30]] = 1
    batched = permutation_mmd2(k, in_x)
    gathered = torch.stack([mmd2_from_kernel(k[p][:, p], 30) for p in perms])
    torch.testing.assert_close(batched, gathered, rtol=1e-10, atol=1e-12)
    assert mmd_test(x, y, n_perm=10)["mmd2"] == pytest.approx(float(mmd2_from_kernel(k, 30)), rel=1e-12)


def test_frechet_distance():
    x, y = gaussians(80, 70, d=6, shift=0.5)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)
    from scipy.linalg import sqrtm

    c1, c2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    ref = np.sum((x.mean(0) - y.mean(0)) ** 2) + np.trace(c1 + c2 - 2 * sqrtm(c1 @ c2).real)
    assert frechet_distance(x, y) == pytest.approx(ref, rel=1e-6)
    low_rank = np.random.default_rng(0).normal(size=(5, 40))  # 5 items in 40-d: singular covariances, still >= 0
    assert frechet_distance(low_rank, low_rank) >= 0.0


def test_frechet_with_fewer_items_than_dimensions_matches_the_full_formula():
    # CI once failed here: LAPACK's eigh did not converge on the 1,280-d covariance of 16 images
    # whose features were mostly exact zeros; the sample-space form needs no such decomposition
    rng = np.random.default_rng(1)
    x, y = np.zeros((16, 1280)), np.zeros((12, 1280))
    x[:, :30], y[:, :30] = rng.random((16, 30)), rng.random((12, 30)) + 0.2
    from scipy.linalg import sqrtm

    c1, c2 = np.cov(x[:, :30], rowvar=False), np.cov(y[:, :30], rowvar=False)
    ref = np.sum((x.mean(0) - y.mean(0)) ** 2) + np.trace(c1 + c2 - 2 * sqrtm(c1 @ c2).real)
    assert frechet_distance(x, y) == pytest.approx(ref, rel=1e-6)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)


def test_coral_is_the_adaptation_loss():
    x, y = gaussians(50, 60, d=8)
    y = y * 2.0
    assert coral_distance(x, y) == pytest.approx(float(coral(torch.as_tensor(x), torch.as_tensor(y))), rel=1e-6)
    assert coral_distance(x, x) == 0.0


def test_proxy_a_distance_range_and_balance():
    x, y = gaussians(200, 40, shift=4.0)
    r = proxy_a_distance(x, y, seed=0)
    assert r["n_per_domain"] == 40 and r["pad"] == pytest.approx(2.0) and r["error"] == 0.0
    with pytest.raises(ValueError, match="at least 5 items"):
        proxy_a_distance(x, y[:3])


def test_verdict_tiers():
    base = {"coral": 1.0, "coral_null": 1.0, "frechet": 1.0, "frechet_null": 1.0, "n_source": 500, "n_target": 500}

    def verdict(mmd2, pad, p):
        return gap_verdict({**base, "mmd2": mmd2, "pad": pad, "pad_error": (1 - pad / 2) / 2, "mmd_p_value": p})

    assert verdict(0.0001, 0.1, 0.4).title.startswith("No measurable gap")
    assert verdict(0.0001, 1.2, 0.4).title.startswith("Inconclusive")
    assert verdict(0.003, 1.2, 0.005).title.startswith("A small gap")  # PAD saturates; MMD² sizes the gap
    assert verdict(0.05, 0.3, 0.005).title.startswith("A small gap")  # a linear classifier near chance
    moderate = verdict(0.05, 1.9, 0.005)
    assert moderate.title.startswith("A moderate gap") and "--method coral" in moderate.advice
    large = verdict(0.3, 2.0, 0.005)
    assert large.title.startswith("A large gap") and "--method dann" in large.advice and "--method dan'" in large.advice
    assert "--target data/target --method coral" in gap_verdict({**base, "mmd2": 0.05, "pad": 1.9, "pad_error": 0.02, "mmd_p_value": 0.005},
                                                              target="data/target").advice
    assert "only 20 items" in gap_verdict({**base, "n_source": 20, "mmd2": 0.0, "pad": 0.0, "pad_error": 0.5, "mmd_p_value": 0.5}).advice


# --- domain_gap, end to end ----------------------------------------------------------------------


def test_halves_of_one_domain_vs_a_styled_domain(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shapes = make_shapes(n_per_class=40, size=32, seed=0)
    order = np.random.default_rng(0).permutation(len(shapes))
    half_a, half_b = shapes.subset(np.sort(order[:60])), shapes.subset(np.sort(order[60:]))
    same = headstart.domain_gap(half_a, half_b, backbone="tiny_cnn", save=False, n_perm=100, runtime="torch")
    assert same.mmd_p_value > 0.05 and same.pad < 0.5, same.measures
    assert same.verdict.severity == "ok"
    shifted = headstart.domain_gap(half_a, styled(half_b), backbone="tiny_cnn", save=False, n_perm=100, runtime="torch")
    assert shifted.mmd_p_value < 0.02 and shifted.pad > 1.5, shifted.measures
    assert shifted.verdict.title.startswith("A large gap")
    assert shifted.out is None and not list(tmp_path.rglob("gap*"))  # save=False writes nothing


def test_subsample_and_files(tmp_path):
    a = make_shapes(n_per_class=20, size=32, seed=0)
    b = styled(make_shapes(n_per_class=20, size=32, seed=1))
    res = headstart.domain_gap(a, b, backbone="tiny_cnn", out=tmp_path / "g", max_items=30, n_perm=50, map_items=15, seed=1, runtime="torch")
    assert res.measures["n_source"] == res.measures["n_target"] == 30
    assert "source 30 of 60" in res.sample_note and "at most 30 per domain" in res.sample_note
    saved = json.loads((tmp_path / "g" / "gap.json").read_text())
    assert saved["measures"]["mmd_p_value"] == res.mmd_p_value and saved["verdict"]["title"] == res.verdict.title
    assert saved["source"]["measured"] == 30 and saved["source"]["items"] == 60
    html = (tmp_path / "g" / "gap.html").read_text()
    assert "data:image/png;base64," in html and "http://" not in html and "https://" not in html and "<script" not in html
    assert (tmp_path / "g" / "gap_map.png").stat().st_size > 1000
    again = headstart.domain_gap(a, b, backbone="tiny_cnn", save=False, max_items=30, n_perm=50, seed=1, runtime="torch")
    assert again.measures == {**res.measures, "seconds": again.measures["seconds"]}  # the same seed, the same numbers


def test_image_size_is_chosen_from_the_source():
    class Pre:
        input_size = (224, 224)

    class BB:
        preprocessing = Pre()

    mnist_like = LabeledDataset(np.zeros((4, 28, 28, 3), np.uint8), np.zeros(4, int), ["a"], "image", "x")
    digits_like = LabeledDataset(np.zeros((4, 8, 8, 3), np.uint8), np.zeros(4, int), ["a"], "image", "x")
    big = LabeledDataset(np.zeros((2, 300, 300, 3), np.uint8), np.zeros(2, int), ["a"], "image", "x")
    assert image_size_for("auto", BB(), mnist_like) == 112
    assert image_size_for("auto", BB(), digits_like) == 64
    assert image_size_for("auto", BB(), big) == 224
    assert image_size_for("96", BB(), big) == 96
    with pytest.raises(HeadstartError, match="'image_size'"):
        image_size_for("huge", BB(), big)


def test_short_names():
    assert short_name("data/mnist/", None) == "mnist"
    assert short_name("shapes:circle,square", None) == "shapes"
    assert short_name("x/digits.npz", None) == "digits"


# --- bad input ------------------------------------------------------------------------------------


def write_images(root, ds, *, classes: bool):
    for i, (x, y) in enumerate(zip(ds.items, ds.labels)):
        folder = root / ds.classes[y] if classes else root
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x).save(folder / f"{i:03d}.png")
    return root


def test_bad_input_is_a_clear_error(tmp_path):
    src = write_images(tmp_path / "src", make_shapes(n_per_class=4, size=32), classes=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="target folder .* holds no image files"):
        headstart.domain_gap(src, tmp_path / "empty", backbone="tiny_cnn", save=False)
    texts = tmp_path / "texts.csv"
    texts.write_text("text,label\n" + "".join(f"a fine review {i},pos\nan awful review {i},neg\n" for i in range(5)))
    with pytest.raises(DataError, match="holds images but .* texts"):
        headstart.domain_gap(texts, src, backbone="tiny_cnn", save=False)
    few = write_images(tmp_path / "few", make_shapes(["circle"], n_per_class=3, size=32), classes=False)
    with pytest.raises(DataError, match="target data .* has 3 usable item.*at least 5"):
        headstart.domain_gap(src, few, backbone="tiny_cnn", save=False)
    with pytest.raises(BackboneError, match="text backbone but the data holds image"):
        headstart.domain_gap(src, src, backbone="glove50", save=False)
    with pytest.raises(HeadstartError, match="'n_perm' parameter must be a whole number >= 1; got 0"):
        headstart.domain_gap(src, src, backbone="tiny_cnn", n_perm=0)


# --- the command line -----------------------------------------------------------------------------


def test_cli_end_to_end(tmp_path, cli):
    src = write_images(tmp_path / "src", make_shapes(n_per_class=8, size=32, seed=0), classes=True)
    tgt = write_images(tmp_path / "tgt", styled(make_shapes(n_per_class=8, size=32, seed=1)), classes=False)  # unlabeled
    res = cli("gap", src, tgt, "--backbone", "tiny_cnn", "--out", tmp_path / "out", "--n-perm", "50", "--map-items", "10", "--runtime", "torch")
    assert res.returncode == 0, res.stderr
    for needle in ("proxy A-distance", "MMD p-value", "CORAL", "Fréchet", "What to try", "gap.html"):
        assert needle in res.stdout, res.stdout
    saved = json.loads((tmp_path / "out" / "gap.json").read_text())
    assert saved["target"]["classes"] == [] and saved["source"]["classes"] == ["circle", "square", "triangle"]
    assert set(saved["measures"]) >= {"mmd2", "mmd_p_value", "coral", "frechet", "pad"}
    assert "data:image/png;base64," in (tmp_path / "out" / "gap.html").read_text()
    (tmp_path / "empty").mkdir()
    bad = cli("gap", src, tmp_path / "empty", "--backbone", "tiny_cnn", "--out", tmp_path / "never")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("error:") and "holds no image files" in bad.stderr
    assert not (tmp_path / "never").exists()  # nothing written before the inputs are checked
