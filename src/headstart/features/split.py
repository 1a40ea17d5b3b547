"""bf16 after an fp32 stem: an exported graph cut in two, the first part run in fp32, the rest in bf16.

Why: on a CPU with native bf16, OpenVINO runs EfficientNet-Lite0 about 2.3x faster in bf16 than
in fp32, but its bf16 features miss the agreement :mod:`.precision` asks for (mean cosine 0.9988
against fp32; 0.999 needed). Most of that error comes from the first, high-resolution layers:
on 32 500x375 JPEGs the cosine of bf16 and fp32 activations is 0.99999 after the stem
convolution, 0.9999 after block 0's depthwise convolution and 0.998 by the end of block 1, and
stays there to the last layer. Running only the stem and block 0 (3 of 49 convolutions) in fp32
and the rest in bf16 gives a mean feature cosine of 0.9996 (min 0.9992) at 4.4 core-ms per image,
against 3.4 for bf16 and 8.0 for fp32 (one thread, ``/tmp``-style probe of the issue-16 work; the
check in :mod:`.precision` measures agreement on each run's own images).

OpenVINO's CPU plugin has no per-layer precision switch that survives its fusions (marking nodes
"keep fp32" in their runtime info changed nothing here, OpenVINO 2026.4), so the graph is cut into
two models: ``prefix`` (input -> the cut node's output) compiled in fp32 and ``suffix`` (that tensor
-> the features) compiled in bf16. A precision string ``"bf16@<node>"`` names the cut.

Cut points are found on the graph itself, not per architecture: a node is a candidate if its one
output is the only tensor computed so far that is still needed later (so the two parts exchange
exactly one tensor), every consumer of it is a convolution, matrix product or padding (so no
fusion of a layer with its bias or activation is broken), and it lies in the first third of the
network's heavy layers (else little is left to run in bf16).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

MIXED = "bf16@"  # prefix of a mixed precision: "bf16@<node>" = fp32 up to <node>'s output, bf16 after
HEAVY = frozenset({"Convolution", "GroupConvolution", "MatMul", "ConvolutionBackpropData"})
MAX_PREFIX_SHARE = 1 / 3  # of the heavy layers, at most this share runs in fp32
MAX_CUTS = 3  # candidate cuts tried by the precision check, shallowest first


def is_precision(precision: Any) -> bool:
    """Whether ``precision`` is ``"f32"``, ``"bf16"`` or a mixed ``"bf16@<node>"``."""
    return precision in ("f32", "bf16") or (isinstance(precision, str) and precision.startswith(MIXED) and len(precision) > len(MIXED))


def cut_of(precision: str) -> str | None:
    """The cut node of a mixed precision (``"bf16@<node>"``), else ``None``."""
    return precision[len(MIXED):] if precision.startswith(MIXED) else None


def describe(precision: str) -> str:
    """A precision for logs: ``"bf16 (fp32 up to <node>)"`` for a mixed one."""
    cut = cut_of(precision)
    return f"bf16 (fp32 up to {cut})" if cut else precision


def fp32_prefix_cuts(path: str | Path | Any, limit: int = MAX_CUTS) -> list[str]:
    """Up to ``limit`` cut nodes of the graph at ``path`` (ONNX/IR file or ``openvino.Model``),
    shallowest first (see the module docstring for what qualifies)."""
    import openvino as ov

    model = path if isinstance(path, ov.Model) else ov.Core().read_model(str(path))
    ops = model.get_ordered_ops()
    pos = {op.get_friendly_name(): i for i, op in enumerate(ops)}
    heavy = [i for i, op in enumerate(ops) if op.get_type_name() in HEAVY]
    if not heavy:
        return []
    last_allowed = heavy[min(len(heavy) - 1, int(len(heavy) * MAX_PREFIX_SHARE))]
    constant: set[str] = set()  # constants and what is computed from constants alone: the suffix has its own copy
    cuts: list[str] = []
    live_until = -1  # the last position that reads a tensor computed before the current op
    for i, op in enumerate(ops):
        name = op.get_friendly_name()
        inputs = [v.get_source_output().get_node().get_friendly_name() for v in op.inputs()]
        if op.get_type_name() == "Constant" or (inputs and all(n in constant for n in inputs)):
            constant.add(name)
            continue
        consumers = [t.get_node() for out in op.outputs() for t in out.get_target_inputs()]
        if (heavy[0] < i <= last_allowed and live_until <= i and op.get_type_name() != "Parameter" and op.get_output_size() == 1
                and _feeds_a_layer(consumers)):
            cuts.append(name)
            if len(cuts) >= limit:
                break
        live_until = max([live_until, *(pos[c.get_friendly_name()] for c in consumers)])
    return cuts


def _feeds_a_layer(consumers: list) -> bool:
    """Whether a tensor goes straight into heavy layers (or into padding for them; reading its
    shape is allowed), so that cutting before them breaks no fusion with a bias or activation."""
    uses = [c for c in consumers if c.get_type_name() != "ShapeOf"]
    if not uses:
        return False
    for c in uses:
        if c.get_type_name() == "Pad":
            if not all(t.get_node().get_type_name() in HEAVY for t in c.output(0).get_target_inputs()):
                return False
        elif c.get_type_name() not in HEAVY:
            return False
    return True


def split_model(path: str | Path, cut: str) -> tuple[Any, Any]:
    """The graph at ``path`` cut after node ``cut``: ``(prefix, suffix)`` ``openvino.Model`` s, the
    prefix from the input to ``cut``'s output, the suffix from that tensor to the outputs. Raises
    ``ValueError`` if there is no such node or the graph does not come apart there."""
    import openvino as ov

    core = ov.Core()
    head = core.read_model(str(path))
    node = _node(head, cut, path)
    prefix = ov.Model([node.output(0)], head.get_parameters(), "prefix")
    tail = core.read_model(str(path))
    node = _node(tail, cut, path)
    out = node.output(0)
    joint = ov.opset13.parameter(out.get_partial_shape(), out.get_element_type(), name="stem")
    for target in list(out.get_target_inputs()):
        target.replace_source_output(joint.output(0))
    try:
        suffix = ov.Model(tail.get_results(), [joint], "suffix")
    except Exception as e:  # noqa: BLE001 - another tensor than the cut's crosses the cut
        raise ValueError(f"the graph {path} does not come apart after {cut!r}: {e}") from None
    return prefix, suffix


def _node(model: Any, name: str, path: Any) -> Any:
    for op in model.get_ops():
        if op.get_friendly_name() == name:
            return op
    raise ValueError(f"no node {name!r} in the graph {path}; the export changed since the precision was chosen: choose it again")
