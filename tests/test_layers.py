"""Imports point down the layers that ``headstart.LAYERS`` declares: no module imports from its own
layer's siblings or from a layer above (every import counts, those inside functions too)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import headstart
from headstart import LAYERS

SRC = Path(headstart.__file__).parent
RANK = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}

# Upward imports kept on purpose, (importing module, unit it imports): why. The package doc names them too.
ALLOWED = {
    ("headstart.heads.mlp", "train"): "the MLP head's fitter runs the one training loop; the training recipes build heads",
    ("headstart.backbones.run_backbone", "model"): "a run:<folder> backbone is read by model's run-folder reader, kept next to its writer",
    ("headstart.evaluate.compare", "model"): "'headstart compare' times each run's forward pass, which needs the model loaded",
    ("headstart.methods.distill", "model"): "distillation's teacher is a finished run, read by model's run-folder reader",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def headstart_imports(module: str, source: str, *, is_package: bool = False) -> list[tuple[list[str], list[str], int]]:
    """``(module path, names, line)`` of every import of headstart in ``module``'s source, at any depth;
    relative imports made absolute (``["headstart", "train", "loop"]``), names empty for ``import x``."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [(alias.name.split("."), []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            targets = [(base + (node.module.split(".") if node.module else []), [a.name for a in node.names])]
        else:
            continue
        found += [(parts, names, node.lineno) for parts, names in targets if parts[:1] == ["headstart"]]
    return sorted(found, key=lambda f: f[2])


def imported_units(module: str, source: str, *, is_package: bool = False) -> list[tuple[str, int]]:
    """``(unit, line)`` of every headstart unit that ``module``'s source imports, at any depth."""
    found = []
    for parts, names, line in headstart_imports(module, source, is_package=is_package):
        if len(parts) > 1:
            found.append((parts[1], line))
        for name in names if len(parts) == 1 else ():  # from headstart import X: a unit, a lazy export, or __version__
            if name in RANK:
                found.append((name, line))
            elif name in headstart._EXPORTS:
                found.append((headstart._EXPORTS[name].split(".")[1], line))
    return found


def upward_imports(module: str, source: str, *, is_package: bool = False) -> list[tuple[str, str, int]]:
    """``(module, unit, line)`` of each import of a sibling or higher layer that ``ALLOWED`` does not name."""
    own = module.split(".")[1]
    return [
        (module, unit, line)
        for unit, line in imported_units(module, source, is_package=is_package)
        if unit != own and RANK.get(unit, len(LAYERS)) >= RANK[own] and (module, unit) not in ALLOWED
    ]


def package_sources() -> list[tuple[str, str, bool]]:
    """``(module, source, is_package)`` of every module under ``src/headstart`` but the package's own ``__init__``."""
    return [(module_name(p), p.read_text(encoding="utf-8"), p.name == "__init__.py") for p in sorted(SRC.rglob("*.py")) if p != SRC / "__init__.py"]


def test_every_unit_has_one_layer():
    units = [u for layer in LAYERS for u in layer]
    assert len(units) == len(set(units)), "a unit is listed in two layers"
    present = {p.name if p.is_dir() else p.stem for p in SRC.iterdir() if (p / "__init__.py").is_file() or (p.suffix == ".py" and p.stem != "__init__")}
    assert present == set(units), f"not in headstart.LAYERS: {sorted(present - set(units))}; listed but missing: {sorted(set(units) - present)}"


def test_package_doc_shows_the_layers():
    order = " -> ".join(" | ".join(layer) for layer in LAYERS)
    assert order in re.sub(r"\s+", " ", headstart.__doc__)


def test_imports_point_down_the_layers():
    bad = [v for module, source, is_package in package_sources() for v in upward_imports(module, source, is_package=is_package)]
    assert not bad, "imports from a sibling or a higher layer (see headstart.LAYERS): " + "; ".join(f"{m}:{line} -> {u}" for m, u, line in bad)


def test_allowed_upward_imports_are_still_there():
    used = {(module, unit) for module, source, is_package in package_sources() for unit, _ in imported_units(module, source, is_package=is_package)}
    assert set(ALLOWED) <= used, f"no longer imported, drop from ALLOWED and the package doc: {sorted(set(ALLOWED) - used)}"


def test_imported_modules_exist():  # a module moved without updating an import of it fails here, not at run time
    missing = [
        f"{module}:{line} imports {'.'.join(parts)}"
        for module, source, is_package in package_sources()
        for parts, _, line in headstart_imports(module, source, is_package=is_package)
        if not (SRC.parent.joinpath(*parts).with_suffix(".py").is_file() or SRC.parent.joinpath(*parts, "__init__.py").is_file())
    ]
    assert not missing, "; ".join(missing)


def test_checker_reports_upward_imports():
    source = "from ..errors import DataError\n\ndef f():\n    from ..fitting import fit\n    import headstart.cli\n    from headstart import load\n    from .. import model\n"
    assert upward_imports("headstart.data.fake", source) == [
        ("headstart.data.fake", "fitting", 4), ("headstart.data.fake", "cli", 5), ("headstart.data.fake", "ensemble", 6), ("headstart.data.fake", "model", 7),
    ]
    assert upward_imports("headstart.heads.fake", "from ..features import extract_features\n") == [("headstart.heads.fake", "features", 1)]  # a sibling
    assert upward_imports("headstart.cli", "from .fitting import fit\nfrom . import __version__\n") == []
    assert upward_imports("headstart.train", "from .loop import train_classifier\nfrom ..heads import fit_head\n", is_package=True) == []
