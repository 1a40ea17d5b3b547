"""Any timm model as a backbone: ``timm:<model name>``.

Pretrained weights come through timm's normal loading (the Hugging Face hub) when it is reachable,
from the local hub cache when not, or from a local file given with ``weights=``. Offline with none
of these, a :class:`WeightsUnavailableError` names the fix instead of a minute of retries.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._io import sha256_file
from ..errors import BackboneError, WeightsUnavailableError
from .base import Backbone, BackboneSpec, Preprocessing, Provenance
from .registry import register_family


class LayerGroup(nn.Module):
    """A named group of a model's layers (not registered on the model: it only refers to them)."""

    def __init__(self, name: str, modules: list[tuple[str, nn.Module]], params: list[tuple[str, nn.Parameter]] = ()):
        super().__init__()
        self.group_name = name
        for i, (_, m) in enumerate(modules):
            self.add_module(f"m{i}", m)
        for i, (_, p) in enumerate(params):
            self.register_parameter(f"p{i}", p)
        self.member_names = [n for n, _ in modules] + [n for n, _ in params]

    def extra_repr(self) -> str:
        return f"name={self.group_name!r}"


def timm_layer_groups(model: nn.Module, exclude: set[str] = frozenset()) -> list[LayerGroup]:
    """Ordered layer groups from timm's own ``group_matcher`` (coarse: stem, stages, head).

    Parameters owned by a module in ``exclude`` (the source classifier) are left out.
    """
    from timm.models import group_parameters

    groups = group_parameters(model, model.group_matcher(coarse=True))
    out: list[LayerGroup] = []
    named_params = dict(model.named_parameters())
    for gid, pnames in sorted(groups.items()):
        modules: dict[str, nn.Module] = {}
        bare: list[tuple[str, nn.Parameter]] = []
        for pname in pnames:
            owner = pname.rpartition(".")[0]
            if any(owner == e or owner.startswith(e + ".") for e in exclude):
                continue
            if owner:
                # Group by the leaf module that owns the parameter (keeps BatchNorm modules whole).
                modules.setdefault(owner, model.get_submodule(owner))
            else:
                bare.append((pname, named_params[pname]))
        if modules or bare:
            out.append(LayerGroup(f"group{len(out)}", list(modules.items()), bare))
    # Parameter-free normalisation layers (rare) still need to follow the train/eval switch of their group;
    # BatchNorm always has affine params in timm models, so every BN is in some group.
    return out


def preprocessing_from_timm(model: nn.Module) -> Preprocessing:
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    size = cfg.get("input_size", (3, 224, 224))
    return Preprocessing(
        input_size=(int(size[1]), int(size[2])),
        mean=tuple(float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225))),
        interpolation=cfg.get("interpolation", "bicubic"),
        crop_pct=float(cfg.get("crop_pct", 0.875)),
    )


class TimmBackbone(Backbone):
    """A timm model; features are its pooled pre-logits (``forward_head(..., pre_logits=True)``)."""

    def __init__(self, model: nn.Module, spec: BackboneSpec, provenance: Provenance, preprocessing: Preprocessing | None = None):
        super().__init__()
        self.model = model
        self.spec = spec
        self.provenance = provenance
        self.preprocessing = preprocessing or preprocessing_from_timm(model)
        self.num_features = int(getattr(model, "num_features"))
        classifier = model.get_classifier()
        self._classifier_names = {n for n, m in model.named_modules() if m is classifier and n}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)

    def layer_groups(self) -> list[nn.Module]:
        return timm_layer_groups(self.model, exclude=self._classifier_names)

    def _split_plan(self) -> list[int]:
        """For EfficientNet-style models (conv_stem/bn1, blocks.0..m-1, conv_head/bn2): the layer group of
        each segment [stem, block 0, ..., block m-1, head]; other architectures cannot be split."""
        m = self.model
        if not all(hasattr(m, a) for a in ("conv_stem", "bn1", "blocks", "conv_head", "bn2")):
            raise NotImplementedError(f"{self.name}: only EfficientNet-style timm models can be split at a layer group")
        n_blocks = len(m.blocks)
        seg_of = {"conv_stem": 0, "bn1": 0, "conv_head": n_blocks + 1, "bn2": n_blocks + 1}
        plan: dict[int, int] = {}
        for gi, g in enumerate(self.layer_groups()):
            for name in getattr(g, "member_names", []):
                parts = name.split(".")
                seg = int(parts[1]) + 1 if parts[0] == "blocks" else seg_of.get(parts[0])
                if seg is None or plan.setdefault(seg, gi) != gi:
                    raise NotImplementedError(f"{self.name}: layer group {gi} does not follow the stem/blocks/head order")
        order = [plan.get(i) for i in range(n_blocks + 2)]
        if None in order or order != sorted(order):
            raise NotImplementedError(f"{self.name}: layer groups do not cover stem, blocks and head in order")
        return order  # type: ignore[return-value]

    def _run_segment(self, i: int, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        if i == 0:
            return m.bn1(m.conv_stem(x))
        if i == len(m.blocks) + 1:
            return m.bn2(m.conv_head(x))
        return m.blocks[i - 1](x)

    def forward_until(self, group: int, x: torch.Tensor) -> torch.Tensor:
        for i, g in enumerate(self._split_plan()):
            if g < group:
                x = self._run_segment(i, x)
        return x

    def forward_from(self, group: int, h: torch.Tensor) -> torch.Tensor:
        for i, g in enumerate(self._split_plan()):
            if g >= group:
                h = self._run_segment(i, h)
        return self.model.forward_head(h, pre_logits=True)

    def source_head(self) -> nn.Module | None:
        head = self.model.get_classifier()
        return None if isinstance(head, nn.Identity) else head


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict from ``.safetensors`` or a ``torch.save`` file (``weights_only=True``)."""
    path = Path(path)
    if path.is_dir():
        for cand in ("model.safetensors", "pytorch_model.bin", "model.pth"):
            if (path / cand).is_file():
                path = path / cand
                break
        else:
            raise WeightsUnavailableError(
                f"No weights file in folder {str(path)!r}; expected model.safetensors, pytorch_model.bin or model.pth."
            )
    if not path.is_file():
        raise WeightsUnavailableError(f"Weights file {str(path)!r} does not exist; check the --weights path.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    else:
        try:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:
            raise WeightsUnavailableError(
                f"Cannot read weights file {str(path)!r} as a PyTorch state dict ({type(e).__name__}: {e}). "
                "Give a .safetensors file or a torch.save()d state dict of tensors."
            ) from e
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsUnavailableError(f"Weights file {str(path)!r} does not hold a state dict of tensors.")
    return sd


def map_state_dict_by_position(src: dict[str, torch.Tensor], model: nn.Module, source: str) -> dict[str, torch.Tensor]:
    """Map a state dict onto ``model`` by key position when names differ (shapes and suffixes must agree)."""
    target = model.state_dict()
    if set(src) == set(target):
        return src
    if len(src) != len(target):
        raise BackboneError(
            f"Weights from {source} have {len(src)} tensors but the model expects {len(target)}; "
            "they are for a different architecture."
        )
    out = {}
    for (sk, sv), (tk, tv) in zip(src.items(), target.items()):
        if sv.shape != tv.shape or sk.rsplit(".", 1)[-1] != tk.rsplit(".", 1)[-1]:
            raise BackboneError(
                f"Weights from {source} do not fit the model: {sk} {tuple(sv.shape)} vs {tk} {tuple(tv.shape)}."
            )
        out[tk] = sv
    return out


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _cached_hub_weights(model_name: str) -> str | None:
    try:
        import timm
        from huggingface_hub import try_to_load_from_cache

        cfg = timm.models.get_pretrained_cfg(model_name)
        hub_id = getattr(cfg, "hf_hub_id", None) if cfg else None
        if not hub_id:
            return None
        for fname in ("model.safetensors", "pytorch_model.bin"):
            p = try_to_load_from_cache(hub_id, fname)
            if isinstance(p, str):
                return p
    except Exception:
        return None
    return None


def build_timm(
    model_name: str,
    *,
    pretrained: bool,
    weights: str | None,
    spec_name: str,
    default_weights: str | None = None,
    weights_source: str | None = None,
    pretrained_on: str | None = "imagenet-1k",
    license: str | None = None,
    **kwargs: Any,
) -> TimmBackbone:
    """Shared construction path for every timm-based backbone (embedded or hub or local file)."""
    import timm

    try:
        model = timm.create_model(model_name, pretrained=False, **kwargs)
    except RuntimeError as e:
        if "Unknown model" in str(e):
            import difflib

            close = difflib.get_close_matches(model_name, timm.list_models(), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise BackboneError(f"timm has no model {model_name!r}.{hint} See timm.list_models().") from e
        raise
    spec = BackboneSpec(spec_name, {})
    if not pretrained:
        model.eval()
        return TimmBackbone(model, spec, Provenance("random-init", None, None, license))
    path = weights or default_weights
    if path is None:
        path = _cached_hub_weights(model_name)
        if path is None and not hub_reachable():
            raise WeightsUnavailableError(
                f"Pretrained weights for timm model {model_name!r} are not on this machine and the Hugging Face hub "
                "cannot be reached (offline). Fix: pass a local weights file with --weights FILE (weights=... in "
                "Python), use an embedded backbone such as 'efficientnet_lite0' (see 'headstart backbones'), "
                "or connect to the internet once so timm can cache them."
            )
    if path is not None:
        sd = load_state_dict_file(path)
        sd = map_state_dict_by_position(sd, model, str(path))
        model.load_state_dict(sd)
        prov = Provenance(weights_source or f"file:{path}", sha256_file(_resolve_file(path)), pretrained_on, license)
    else:
        model = timm.create_model(model_name, pretrained=True, **kwargs)
        sd_bytes = b"".join(t.detach().cpu().numpy().tobytes() for t in model.state_dict().values())
        import hashlib

        prov = Provenance(f"timm-hub:{model_name}", hashlib.sha256(sd_bytes).hexdigest(), pretrained_on, license)
    model.eval()
    return TimmBackbone(model, spec, prov)


def _resolve_file(path: str | Path) -> Path:
    p = Path(path)
    if p.is_dir():
        for cand in ("model.safetensors", "pytorch_model.bin", "model.pth"):
            if (p / cand).is_file():
                return p / cand
    return p


def _timm_offline() -> tuple[bool, str]:
    return False, "needs the hub or --weights FILE offline"


@register_family("timm", description="any timm model by name (pretrained from the hub, or --weights FILE)", offline_check=_timm_offline)
def timm_any(model_name: str, *, pretrained: bool = True, weights: str | None = None, **kwargs: Any) -> TimmBackbone:
    return build_timm(model_name, pretrained=pretrained, weights=weights, spec_name=f"timm:{model_name}", **kwargs)
