r"""Freezing on named layer groups, discriminative (layer-wise) learning rates, and the freeze state.

A backbone's :meth:`~headstart.backbones.Backbone.layer_groups` are ordered from the input to the
output; "unfreeze the last ``n``" makes groups ``G-n .. G-1`` trainable and leaves ``0 .. G-n-1``
frozen, so the frozen part is always a *prefix* (what the activation cache relies on). This works
unchanged for a transformer whose groups are ``embeddings, layer.0 .. layer.N, pooler``.

Layer-wise learning-rate decay (discriminative learning rates; Howard & Ruder 2018, ULMFiT,
arXiv:1801.06146): with top backbone rate :math:`\eta_b` and decay :math:`d \in (0, 1]`, group
:math:`i` of :math:`G` trains at

.. math::  \eta_i = \eta_b \, d^{\,G-1-i}

so layers near the input, which hold the most general features, move least.

The freeze state is plain data (``{parameter name: requires_grad}``) so it can be written into a
checkpoint and put back on resume (see ``ClassifierModule.on_save_checkpoint``) — unlike Lightning's
``BackboneFinetuning``, which re-freezes on resume.
"""

from __future__ import annotations

from typing import Sequence

from torch import nn


def num_groups(backbone: nn.Module | None) -> int:
    """How many layer groups ``backbone`` has (0 without a backbone or groups)."""
    if backbone is None or not hasattr(backbone, "layer_groups"):
        return 0
    return len(backbone.layer_groups())


def resolve_unfreeze(unfreeze: int | str | None, n_groups: int) -> int:
    """``"all"`` -> ``n_groups``; an int is checked against ``0 .. n_groups``; ``None`` -> ``n_groups``."""
    if unfreeze is None or unfreeze == "all":
        return n_groups
    try:
        n = int(unfreeze)
    except (TypeError, ValueError):
        raise ValueError(f"unfreeze must be a number of layer groups or 'all'; got {unfreeze!r}.") from None
    if not 0 <= n <= n_groups:
        raise ValueError(f"unfreeze must be between 0 and {n_groups} (the backbone's layer groups) or 'all'; got {n}.")
    return n


def set_trainable_groups(backbone: nn.Module | None, n_trainable: int) -> None:
    """Make the last ``n_trainable`` layer groups trainable and freeze the others (a frozen prefix).

    Parameters outside every group (there should be none) follow the first group.
    """
    if backbone is None:
        return
    groups = backbone.layer_groups()
    n = len(groups)
    first = n - max(0, min(int(n_trainable), n))
    backbone.requires_grad_(first == 0 and n > 0)
    for i, g in enumerate(groups):
        g.requires_grad_(i >= first)


def trainable_group_count(backbone: nn.Module | None) -> int:
    """How many groups, counted from the top, have all their parameters trainable."""
    if backbone is None:
        return 0
    count = 0
    for g in reversed(backbone.layer_groups()):
        ps = list(g.parameters())
        if ps and all(p.requires_grad for p in ps):
            count += 1
        else:
            break
    return count


def layerwise_lrs(n_groups: int, backbone_lr: float, decay: float) -> list[float]:
    """:math:`\\eta_i = \\eta_b d^{G-1-i}` for groups ``0 .. G-1`` (input to output)."""
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"The layer-wise learning-rate decay must be in (0, 1]; got {decay}.")
    return [float(backbone_lr) * decay ** (n_groups - 1 - i) for i in range(n_groups)]


def freeze_state(module: nn.Module) -> dict[str, bool]:
    """``{parameter name: requires_grad}`` for every parameter of ``module``."""
    return {name: bool(p.requires_grad) for name, p in module.named_parameters()}


def load_freeze_state(module: nn.Module, state: dict[str, bool]) -> None:
    """Put back a :func:`freeze_state`; names not in ``module`` are an error (a different model)."""
    params = dict(module.named_parameters())
    unknown = sorted(set(state) - set(params))
    if unknown:
        raise ValueError(f"The freeze state names parameters this model does not have: {unknown[:5]}")
    for name, flag in state.items():
        params[name].requires_grad_(bool(flag))


def group_index_of_params(backbone: nn.Module) -> dict[int, int]:
    """``id(parameter) -> layer-group index`` for the parameters of ``backbone``."""
    out: dict[int, int] = {}
    for i, g in enumerate(backbone.layer_groups()):
        for p in g.parameters():
            out.setdefault(id(p), i)
    return out


def describe_groups(backbone: nn.Module | None) -> Sequence[str]:
    """Human names of the layer groups (``group_name`` where given, else ``group<i>``)."""
    if backbone is None:
        return []
    return [getattr(g, "group_name", f"group{i}") for i, g in enumerate(backbone.layer_groups())]
