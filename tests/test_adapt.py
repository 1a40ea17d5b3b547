"""Domain adaptation in the method slot: dan, coral, dann; --target, --target-test; their checks."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import headstart
from headstart.data import LabeledDataset, make_shapes
from headstart.errors import HeadstartError
from headstart.methods import create_method
from headstart.methods.adapt import dann_lambda, grad_reverse
from headstart.methods.divergence import coral, mk_mmd2


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "cache"))


def styled(ds: LabeledDataset, seed: int = 0) -> LabeledDataset:
    """The same shapes, inverted and noisy: a style shift."""
    rng = np.random.default_rng(seed)
    x = 255 - ds.items.astype(np.int16)
    x = np.clip(x + rng.normal(0, 40, x.shape), 0, 255).astype(np.uint8)
    return LabeledDataset(x, ds.labels.copy(), list(ds.classes), "image", f"styled:{ds.source}")


def blobs(n: int, shift: tuple[float, float], seed: int):
    """Two classes at x1 = -1 / +1 (noise 0.3 along x1, 0.1 along x2); a domain moves them by ``shift`` (x1, x2)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.stack([y.float() * 2 - 1, torch.zeros(n)], 1) + torch.randn(n, 2, generator=g) * torch.tensor([0.3, 0.1]) + torch.tensor(shift)
    return x, y


def train_toy(method_name: str, weight: float, steps: int = 600) -> float:
    """Source at x2 = 0, target moved by (+1.2, +3): a source-only model puts most of target class 0
    across its boundary; a linear feature map can undo the move (x1 - 0.4 x2). Target accuracy after training."""
    torch.manual_seed(0)
    xs, ys = blobs(400, (0.0, 0.0), 1)
    xt, yt = blobs(400, (1.2, 3.0), 2)
    f, head = nn.Linear(2, 2), nn.Linear(2, 2)
    with torch.no_grad():  # start from identity features and a head on x1: x2 carries no signal in the source, so it stays unused
        f.weight.copy_(torch.eye(2))
        f.bias.zero_()
        head.weight.copy_(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
        head.bias.zero_()
    method = create_method(method_name, {"weight": weight})
    method.prepare({"target_unlabeled": DataLoader(TensorDataset(xt), batch_size=64, shuffle=True)}, num_features=2, num_classes=2)
    terms = method.loss_terms()
    module = SimpleNamespace(features=f, _trainer=SimpleNamespace(estimated_stepping_batches=steps, global_step=0))
    params = [*f.parameters(), *head.parameters(), *(p for t in terms for p in t.parameters())]
    opt = torch.optim.SGD(params, lr=0.1)  # not Adam: it would blow the tiny noise gradients on x2 up to full steps
    loader = DataLoader(TensorDataset(xs, ys), batch_size=64, shuffle=True)
    step = 0
    while step < steps:
        for xb, yb in loader:
            feats = f(xb)
            logits = head(feats)
            loss = nn.functional.cross_entropy(logits, yb)
            for t in terms:
                loss = loss + t(module, (xb, yb), {"features": feats, "logits": logits, "ce": loss})
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            module._trainer.global_step = step
    with torch.no_grad():
        return float((head(f(xt)).argmax(1) == yt).float().mean())


@pytest.mark.parametrize("name", ["dan", "dann"])
def test_adaptation_raises_target_accuracy_on_a_toy_shift(name):
    source_only = train_toy(name, 0.0)
    adapted = train_toy(name, 1.0)
    assert source_only < 0.75  # the shift hurts
    assert adapted > source_only + 0.15, (source_only, adapted)


def test_coral_matches_second_moments_only():
    x = torch.randn(500, 4)
    assert coral(x, x) == 0
    assert coral(x, x + 5.0) < 1e-10  # a mean shift is invisible to CORAL
    assert coral(x, 3.0 * x) > 0.1
    assert float(coral(x, 3.0 * x)) == pytest.approx(float(((9 - 1) * torch.cov(x.T)).pow(2).sum() / 64), rel=1e-5)


def test_mmd_is_about_zero_within_a_domain_and_large_across():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(300, 8, generator=g), torch.randn(300, 8, generator=g)
    assert abs(float(mk_mmd2(a, b))) < 0.01
    assert float(mk_mmd2(a, b + 1.0)) > 0.1


def test_dan_logits_option_adds_the_classifier_layer():
    """DAN's classifier layer: with logits=True the term is MK-MMD² of the features plus that of the head's logits."""
    g = torch.Generator().manual_seed(0)
    xs, xt = torch.randn(32, 4, generator=g), torch.randn(32, 4, generator=g) + 1.0
    f, head = nn.Linear(4, 4), nn.Linear(4, 3)
    module = SimpleNamespace(features=f, head=head)
    outputs = {"features": f(xs), "logits": head(f(xs))}
    terms = {}
    for logits in (False, True):
        method = create_method("dan", {"logits": logits, "weight": 2})
        method.prepare({"target_unlabeled": DataLoader(TensorDataset(xt), batch_size=32)}, num_features=4, num_classes=3)
        terms[logits] = float(method.loss_terms()[0](module, None, outputs))
    ft = f(xt)
    assert terms[False] == pytest.approx(2 * float(mk_mmd2(f(xs), ft)), rel=1e-5)
    assert terms[True] == pytest.approx(terms[False] + 2 * float(mk_mmd2(head(f(xs)), head(ft))), rel=1e-5)
    assert create_method("dan").loop_hooks()["keep"] == "latest" and "keep" not in create_method("dan", {"weight": 0}).loop_hooks()


def test_gradient_reversal_and_lambda_schedule():
    x = torch.ones(3, requires_grad=True)
    grad_reverse(x, 0.5).sum().backward()
    assert torch.equal(x.grad, torch.full((3,), -0.5))
    assert dann_lambda(0.0) == 0.0 and dann_lambda(1.0) == pytest.approx(1.0, abs=1e-3) and 0.46 < dann_lambda(0.1) < 0.47


# ---------------------------------------------------------------------------- through fit
@pytest.fixture(scope="module")
def shapes_pair():
    src = make_shapes(["circle", "square", "triangle"], n_per_class=24, size=32, seed=0)
    tgt = styled(make_shapes(["circle", "square", "triangle"], n_per_class=16, size=32, seed=1))
    return src, tgt


FAST = dict(backbone="tiny_cnn", strategy="finetune", epochs=2, batch_size=16, save=False, seed=0)


def state(model):
    return {k: v.clone() for k, v in model.backbone.state_dict().items()} | {f"head.{k}": v.clone() for k, v in model.head.state_dict().items()}


def test_weight_zero_is_the_source_only_run_exactly(shapes_pair):
    src, tgt = shapes_pair
    plain = headstart.fit(src, **FAST, target_test=tgt)
    for name in ("dan", "coral", "dann"):
        zero = headstart.fit(src, **FAST, method=name, method_opt={"weight": 0}, target=tgt, target_test=tgt)
        a, b = state(plain), state(zero)
        assert all(torch.equal(a[k], b[k]) for k in a), name
        assert zero.metrics["target_test"] == plain.metrics["target_test"]


def test_adaptation_run_reports_target_figures(shapes_pair, tmp_path):
    src, tgt = shapes_pair
    model = headstart.fit(src, **{**FAST, "save": True}, method="dann", target=tgt, target_test=tgt, out=str(tmp_path / "run"))
    m = model.metrics
    assert set(m["target_test"]) >= {"accuracy", "confusion_matrix"} and set(m["target_test"]) == set(m["test"])
    assert set(m["domain_gap"]) == {"after"} and {"mmd2", "mmd_p_value", "coral", "frechet", "pad"} <= set(m["domain_gap"]["after"])
    import yaml

    cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert cfg["settings"]["method"]["name"] == "dann" and cfg["settings"]["data"]["target"] is None  # in memory: not rebuildable
    assert cfg["training"]["method_data"] == {"target_unlabeled": len(tgt)}
    assert "the latest weights" in cfg["training"]["kept"]  # source validation cannot see the target: keep="latest"
    assert "Target domain" in (tmp_path / "run" / "report.html").read_text()


def test_target_test_before_and_after_with_a_pretrained_backbone(shapes_pair):
    src, tgt = shapes_pair
    model = headstart.fit(src, backbone="efficientnet_lite0", image_size=32, strategy="finetune", epochs=1, batch_size=16, save=False,
                          method="coral", target=tgt, target_test=tgt)
    m = model.metrics
    assert {"target_test", "target_test_before"} <= set(m)
    assert 0.0 <= m["target_test_before"]["accuracy"] <= 1.0
    assert set(m["domain_gap"]) == {"before", "after"} and m["domain_gap"]["before"]["pad"] > 0.5  # inverted noisy shapes: a clear shift


def write_images(folder, n, size=16):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_unlabeled_folder_is_a_target(shapes_pair, tmp_path):
    src, _ = shapes_pair
    model = headstart.fit(src, **FAST, method="dan", target=str(write_images(tmp_path / "unlabeled", 20)))
    assert model.metrics["strategy"] == "finetune"


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="dann"), "Method 'dann' needs unlabeled target-domain data"),
    (dict(target="shapes:circle,square"), "--target is read by method(s) coral, dan, dann, and this run has no method"),
    (dict(method="focal", target="shapes:circle,square"), "this run has method 'focal'. Fix: add --method coral"),
    (dict(method="dan", target="shapes:star,circle"), "has class(es) ['star'] that the labeled training data does not have"),
    (dict(target_test="shapes:circle,hexagon"), "has class(es) ['hexagon']"),
])
def test_bad_target_inputs_name_the_fix(shapes_pair, kwargs, message):
    src, _ = shapes_pair
    with pytest.raises(HeadstartError, match=None) as e:
        headstart.fit(src, **{**FAST, **kwargs})
    assert message in str(e.value)


def test_empty_and_unlabeled_targets_are_refused(shapes_pair, tmp_path):
    src, _ = shapes_pair
    (tmp_path / "empty").mkdir()
    with pytest.raises(HeadstartError, match="holds no image files"):
        headstart.fit(src, **FAST, method="dan", target=str(tmp_path / "empty"))
    with pytest.raises(HeadstartError, match="--target-test needs labeled data"):
        headstart.fit(src, **FAST, target_test=str(write_images(tmp_path / "u", 5)))


def test_text_target_for_images_is_refused(shapes_pair, tmp_path):
    src, _ = shapes_pair
    csv = tmp_path / "t.csv"
    csv.write_text("text,label\n" + "".join(f"some words {i},{'ab'[i % 2]}\n" for i in range(10)))
    with pytest.raises(HeadstartError, match="holds texts but the labeled data holds images"):
        headstart.fit(src, **FAST, method="dan", target=str(csv))


def write_class_folders(root, ds):
    for i, (x, y) in enumerate(zip(ds.items, ds.labels)):
        (root / ds.classes[y]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(x).save(root / ds.classes[y] / f"{i}.png")
    return root


def test_command_line_dann_with_target_and_target_test(shapes_pair, tmp_path):
    import json

    from typer.testing import CliRunner

    from headstart.cli import app

    src, tgt = shapes_pair
    s, t = write_class_folders(tmp_path / "src", src), write_class_folders(tmp_path / "tgt", tgt)
    r = CliRunner().invoke(app, ["fit", str(s), "-b", "tiny_cnn", "-s", "finetune", "--epochs", "1", "--method", "dann", "--method-opt", "weight=0.5",
                                 "--target", str(t), "--target-test", str(t), "-o", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output + repr(r.exception)
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["target_test"]["n"] == len(tgt)
