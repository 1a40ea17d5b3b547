"""features.split: an exported graph cut in two (fp32 stem, bf16 rest), on any CPU."""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from headstart._util import ov_cpu_model
from headstart.features import split
from headstart.features.precision import bf16_supported, row_cosine
from headstart.features.runtime import OpenVinoRunner

pytest.importorskip("openvino")


class _Net(nn.Module):
    """Six convolutions (one with a residual connection), pooled: cut points between layers only."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU6())
        self.a = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU6())
        self.b = nn.Conv2d(8, 8, 1)  # its output is added back: no cut inside the residual
        self.c = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU6())
        self.d = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU6(), nn.Conv2d(16, 32, 1))

    def forward(self, x):
        x = self.a(self.stem(x))
        x = x + self.b(x)
        return self.d(self.c(x)).mean((2, 3))


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    net = _Net().eval()
    path = tmp_path_factory.mktemp("split") / "net.onnx"
    x = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), str(path), input_names=["images"], output_names=["features"],
                          dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}}, opset_version=17, dynamo=False)
    return path, np.random.default_rng(0).normal(0, 1, (6, 3, 32, 32)).astype(np.float32)


def test_cuts_lie_between_layers_in_the_first_third(graph):
    path, _ = graph
    cuts = split.fp32_prefix_cuts(path, limit=10)
    assert cuts, "a plain stack of convolutions has cut points"
    import openvino as ov

    ops = {op.get_friendly_name(): op for op in ov.Core().read_model(str(path)).get_ops()}
    for cut in cuts:
        consumers = [t.get_node().get_type_name() for t in ops[cut].output(0).get_target_inputs()]
        assert all(c in split.HEAVY or c in ("Pad", "ShapeOf") for c in consumers), (cut, consumers)
    assert len(split.fp32_prefix_cuts(path, limit=1)) == 1


def test_the_two_parts_give_the_whole_graphs_output(graph):
    path, x = graph
    whole = ov_cpu_model(path).create_infer_request().infer({0: x})[0]
    for cut in split.fp32_prefix_cuts(path, limit=10):
        prefix, suffix = split.split_model(path, cut)
        mid = ov_cpu_model(prefix).create_infer_request().infer({0: x})[0]
        out = ov_cpu_model(suffix).create_infer_request().infer({0: mid})[0]
        np.testing.assert_allclose(out, whole, rtol=1e-5, atol=1e-5, err_msg=cut)


def test_a_cut_that_is_not_in_the_graph_says_to_choose_again(graph):
    path, _ = graph
    with pytest.raises(ValueError, match="no node 'nowhere'.*choose it again"):
        split.split_model(path, "nowhere")


def test_mixed_precision_strings():
    assert split.is_precision("f32") and split.is_precision("bf16") and split.is_precision("bf16@/stem/Clip")
    assert not split.is_precision("bf16@") and not split.is_precision("fp16") and not split.is_precision(None)
    assert split.cut_of("bf16@/stem/Clip") == "/stem/Clip" and split.cut_of("bf16") is None
    assert split.describe("bf16@x") == "bf16 (fp32 up to x)" and split.describe("f32") == "f32"


@pytest.mark.parametrize("hint", ["LATENCY", "THROUGHPUT"])
def test_the_mixed_runner_is_near_fp32_and_keeps_the_order(graph, hint):
    path, x = graph
    whole = OpenVinoRunner(path, hint=hint, chunk=2)(torch.from_numpy(x))
    cut = split.fp32_prefix_cuts(path)[0]
    mixed = OpenVinoRunner(path, hint=hint, chunk=2, precision=split.MIXED + cut)(torch.from_numpy(x))
    assert mixed.shape == whole.shape and mixed.dtype == np.float32
    if bf16_supported():  # the suffix really runs in bf16: close, not equal
        assert row_cosine(whole, mixed).min() > 0.99
    else:  # OpenVINO runs a bf16 request in fp32 here: the two parts give the whole
        np.testing.assert_allclose(mixed, whole, rtol=1e-5, atol=1e-5)
