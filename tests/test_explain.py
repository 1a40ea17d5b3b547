"""Grad-CAM (headstart explain): maps at the image's size, different per class, overlays written; clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import headstart
from headstart.errors import DataError, HeadstartError
from headstart.evaluate.gradcam import grad_cam, last_conv


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from headstart.data import from_arrays

    tmp = tmp_path_factory.mktemp("explain")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 120, (120, 40, 40, 3), dtype=np.uint8)
    y = rng.integers(0, 2, 120)
    x[y == 1, :14, :14] = 255  # class 1: a bright top-left corner
    headstart.fit(from_arrays(x, y, ["plain", "marked"]), backbone="tiny_cnn", strategy="finetune", epochs=3, runtime="torch",
                  out=str(tmp / "run"))
    for i in range(3):
        Image.fromarray(x[np.flatnonzero(y == 1)[i]]).resize((52, 40)).save(tmp / f"img{i}.png")  # not square, not the input size
    return tmp


def test_maps_have_the_images_size_differ_between_classes_and_are_written(run):
    images = [run / f"img{i}.png" for i in range(3)]
    a = headstart.explain(run / "run", images, class_name="marked", out=run / "out")
    b = headstart.explain(run / "run", images, class_name="plain")
    assert [r["map"].shape for r in a] == [(40, 52)] * 3
    assert all(0 <= r["map"].min() and r["map"].max() <= 1 for r in a)
    assert any(not np.allclose(ra["map"], rb["map"], atol=1e-3) for ra, rb in zip(a, b))
    assert all(r["class"] == "marked" for r in a) and all(r["class"] == "plain" for r in b)
    written = json.loads((run / "out" / "explain.json").read_text())
    assert len(written["images"]) == 3
    png = Image.open(a[0]["file"])
    assert png.size[0] >= 224 and png.mode == "RGB"
    plus = headstart.explain(run / "run", images[:1], method="gradcam++")
    assert plus[0]["map"].shape == (40, 52)


def test_grad_cam_changes_nothing_of_the_model():
    bb = headstart.create_backbone("tiny_cnn")
    head = torch.nn.Linear(bb.num_features, 3)
    bb.train()
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    maps, logits = grad_cam(bb, head, torch.randn(2, 3, 32, 32), target=[0, 2])
    assert maps.shape == (2, 32, 32) and logits.shape == (2, 3)
    assert bb.training and all(p.grad is None for p in bb.parameters())
    assert all(torch.equal(before[k], v) for k, v in bb.state_dict().items())
    assert isinstance(last_conv(bb), torch.nn.Conv2d)


def test_clear_errors(run, cli=None):
    from headstart.model import Model

    model = headstart.load(run / "run")
    with pytest.raises(HeadstartError, match="Unknown class 'tumour'.*Fix: --class"):
        headstart.explain(model, [run / "img0.png"], class_name="tumour")
    with pytest.raises(DataError, match="no such file"):
        headstart.explain(model, [run / "missing.png"])
    cut = run / "cut.png"
    cut.write_bytes((run / "img0.png").read_bytes()[:60])  # a truncated PNG: refused, named, before any map is computed
    with pytest.raises(DataError, match=r"cut\.png.*(truncated|not a readable image)"):
        headstart.explain(model, [run / "img0.png", cut])
    text = Model(model.backbone, model.head, model.classes, modality="text")
    with pytest.raises(HeadstartError, match="explains images.*classifies texts"):
        headstart.explain(text, [run / "img0.png"])

    class Trees(torch.nn.Module):
        def config(self):
            return {"kind": "boosting"}

    with pytest.raises(HeadstartError, match="no gradient.*--head logreg or mlp"):
        headstart.explain(Model(model.backbone, Trees(), model.classes), [run / "img0.png"])
    with pytest.raises(HeadstartError, match="no convolution layer"):
        last_conv(torch.nn.Sequential(torch.nn.Linear(3, 3)))


def test_cli_explain(run):
    from typer.testing import CliRunner

    from headstart.cli import app

    r = CliRunner().invoke(app, ["explain", str(run / "run"), str(run / "img1.png"), "--out", str(run / "cli")])
    assert r.exit_code == 0, r.output
    assert "img1.png" in r.output and list((run / "cli").glob("img1.*.gradcam.png"))
