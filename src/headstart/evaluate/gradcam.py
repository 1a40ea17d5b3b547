"""Grad-CAM and Grad-CAM++: where in an image a class's score comes from.

Grad-CAM (Selvaraju et al., ICCV 2017): with ``A^k`` the ``K`` feature maps ``(h, w)`` of a
convolution layer and ``y^c`` the class-``c`` logit of the whole classifier (backbone + head),

.. math::  \\alpha_k^c = \\frac{1}{hw} \\sum_{i,j} \\frac{\\partial y^c}{\\partial A^k_{ij}}, \\qquad
           L^c = \\mathrm{ReLU}\\Big(\\sum_k \\alpha_k^c A^k\\Big)

Grad-CAM++ (Chattopadhay et al., WACV 2018) weights each location's positive gradient instead,
``\\alpha_k^c = \\sum_{ij} a^{kc}_{ij} \\mathrm{ReLU}(\\partial y^c / \\partial A^k_{ij})`` with
``a = g^2 / (2 g^2 + \\sum_{ij} A^k_{ij}\\, g^3)`` (``g`` the gradient; the exponential-score form
of the paper's closed expression), which separates several instances of a class better.

The layer is the backbone's last convolution (the last ``nn.Conv2d`` it registers: EfficientNet's
``conv_head``, the scratch CNNs' last block), the deepest layer that still has a spatial map. The map
is upsampled (bilinear) to the model's input size, then to the image's own size, and scaled to
``[0, 1]`` per image (all zeros when no location raises the score). Written here, with a forward
hook and :func:`torch.autograd.grad`, rather than through ``grad-cam`` (pytorch-grad-cam), which
pulls in OpenCV for the resizing and colouring that torch and matplotlib already do; nothing of the
model changes (no parameter gradients are accumulated, no mode is left changed).

Shapes: ``x`` ``(B, 3, H, W)`` preprocessed; returns maps ``(B, H, W)`` and logits ``(B, K)``.
Example::

    maps, logits = grad_cam(model.backbone, model.head, x, target=1)
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import HeadstartError

METHODS = ("gradcam", "gradcam++")


def last_conv(backbone: nn.Module) -> nn.Module:
    """The last ``nn.Conv2d`` of ``backbone`` (registration order); an error naming the fix when it has none."""
    convs = [m for m in backbone.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        name = getattr(getattr(backbone, "spec", None), "name", type(backbone).__name__)
        raise HeadstartError(f"Grad-CAM needs a convolutional image backbone, and {name!r} has no convolution layer (no spatial map to "
                             "explain). Fix: explain a run trained on images with a CNN backbone (e.g. efficientnet_lite0).")
    return convs[-1]


def grad_cam(backbone: nn.Module, head: nn.Module, x: torch.Tensor,
             target: int | Sequence[int] | Callable[[torch.Tensor], Any] | None = None, *, method: str = "gradcam") -> tuple[np.ndarray, np.ndarray]:
    """Heat maps ``(B, H, W)`` in ``[0, 1]`` at ``x``'s size for class ``target`` (one index for all, one
    per image, a function of the detached logits ``(B, K)`` giving one index per image, or ``None``:
    each image's top class), and the logits ``(B, K)``. One forward pass serves both."""
    if method not in METHODS:
        raise HeadstartError(f"The 'method' parameter must be one of {{{', '.join(map(repr, METHODS))}}}; got {method!r}.")
    layer = last_conv(backbone)
    seen: dict[str, torch.Tensor] = {}
    hook = layer.register_forward_hook(lambda _m, _i, out: seen.__setitem__("a", out))
    modes = [(m, m.training) for m in (backbone, head)]
    try:
        backbone.eval(), head.eval()
        with torch.inference_mode(False), torch.enable_grad():
            x = x.detach().clone().requires_grad_(True)  # a graph to the feature maps even when every weight is frozen
            logits = head(backbone(x))
            if target is None:
                idx = logits.argmax(1)
            elif callable(target):
                idx = torch.as_tensor(np.asarray(target(logits.detach())), dtype=torch.int64)
            else:
                idx = torch.as_tensor([target] * len(x) if isinstance(target, (int, np.integer)) else list(target), dtype=torch.int64)
            a = seen["a"]
            (g,) = torch.autograd.grad(logits.gather(1, idx[:, None]).sum(), a)
    finally:
        hook.remove()
        for m, was in modes:
            m.train(was)
    a, g = a.detach(), g.detach()
    if method == "gradcam":
        w = g.mean((2, 3), keepdim=True)
    else:
        g2, g3 = g.pow(2), g.pow(3)
        denom = 2 * g2 + a.sum((2, 3), keepdim=True) * g3
        alpha = g2 / torch.where(denom != 0, denom, torch.ones_like(denom))
        w = (alpha * torch.relu(g)).sum((2, 3), keepdim=True)
    cam = torch.relu((w * a).sum(1, keepdim=True))
    cam = torch.nn.functional.interpolate(cam, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)[:, 0]
    top = cam.flatten(1).max(1).values.clamp_min(1e-12)[:, None, None]
    return (cam / top).numpy().astype(np.float32), logits.detach().numpy()


def resize_map(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``cam`` ``(h, w)`` resized (bilinear) to ``size`` ``(H, W)``, kept in ``[0, 1]``."""
    t = torch.as_tensor(cam, dtype=torch.float32)[None, None]
    return torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False)[0, 0].clamp(0, 1).numpy()


def overlay(image: np.ndarray, cam: np.ndarray, *, alpha: float = 0.45, min_side: int = 224) -> np.ndarray:
    """The RGB ``image`` ``(H, W, 3)`` uint8 with ``cam`` ``(H, W)`` blended over it in the ``jet``
    colour map; small images are enlarged (nearest) to at least ``min_side`` pixels so the map can be seen."""
    from matplotlib import colormaps

    scale = max(1, int(np.ceil(min_side / max(min(image.shape[:2]), 1))))
    img = np.repeat(np.repeat(image, scale, 0), scale, 1).astype(np.float32)
    heat = colormaps["jet"](resize_map(cam, img.shape[:2]))[..., :3] * 255
    return np.clip((1 - alpha) * img + alpha * heat, 0, 255).astype(np.uint8)


def explain_images(model: Any, images: Sequence[Any], *, target: int | None = None, method: str = "gradcam",
                   batch_size: int = 16) -> list[dict[str, Any]]:
    """Grad-CAM of ``model`` (a :class:`headstart.model.Model` on images) for PIL ``images``: per image
    ``{"map" (H, W) at the image's size, "image" (H, W, 3) uint8, "class" (index explained), "proba" (K,)}``.
    ``target``: a class index, or ``None`` for each image's predicted class."""
    check_explainable(model)
    tf = model.backbone.preprocessing.transform()
    out: list[dict[str, Any]] = []
    for start in range(0, len(images), batch_size):
        chunk = [im.convert("RGB") for im in images[start:start + batch_size]]
        x = torch.stack([tf(im) for im in chunk])
        proba_of = lambda z: torch.softmax(z / model.temperature, 1).numpy()  # noqa: E731
        # by default the run's own decision (its operating point, if any) picks the class explained
        pick = (lambda z: model.decide(proba_of(z))) if target is None else int(target)
        maps, logits = grad_cam(model.backbone, model.head, x, pick, method=method)
        proba = proba_of(torch.as_tensor(logits))
        classes = model.decide(proba) if target is None else np.full(len(chunk), int(target))
        for im, cam, p, k in zip(chunk, maps, proba, classes):
            arr = np.asarray(im)
            out.append({"map": resize_map(cam, arr.shape[:2]), "image": arr, "class": int(k), "proba": p})
    return out


def check_explainable(model: Any) -> None:
    """Errors naming the fix for runs Grad-CAM cannot explain: texts, and heads without gradients."""
    if model.modality != "image":
        raise HeadstartError(f"Grad-CAM explains images, and this run classifies {model.modality}s (there are no pixels to map). "
                             "Fix: explain an image run; for texts, look at the report's most confidently wrong examples.")
    kind = (model.head.config() or {}).get("kind") if hasattr(model.head, "config") else None
    if kind in ("bagging", "boosting", "stacking"):
        raise HeadstartError(f"This run's {kind!r} head is a scikit-learn ensemble fit on cached features: its trees have no gradient with "
                             "respect to the features, so Grad-CAM has nothing to follow. Fix: explain a run with --head logreg or mlp.")
    last_conv(model.backbone)
