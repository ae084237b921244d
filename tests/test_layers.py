"""Imports run one way (DESIGN.md, docs/architecture.md): read every module's imports with
``ast`` (lazy imports inside functions included) and fail on any that runs upward, across
a layer's packages, or from one model family into another.

Layers, bottom to top; a module may import its own package and anything in a lower layer:

0. the bottom layer: errors, config, registry, io, optim, version, devices
1. data
2. nn, samplers (torch-level blocks; neither imports the other)
3. models (base, latent and networks are shared; each other file is a family that imports no other family)
4. training, metrics (neither imports the other)
5. apps
6. presentation: analysis, viz, pictures, report, bench
7. the command line: cli, __main__, and the package's __init__ (which re-exports the API)
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "deepgen"

LAYERS: dict[str, int] = {
    "errors": 0, "config": 0, "registry": 0, "io": 0, "optim": 0, "version": 0, "devices": 0,
    "data": 1,
    "nn": 2, "samplers": 2,
    "models": 3,
    "training": 4, "metrics": 4,
    "apps": 5,
    "analysis": 6, "viz": 6, "pictures": 6, "report": 6, "bench": 6,
    "cli": 7, "__main__": 7, "__init__": 7,
}
SHARED_MODEL_MODULES = {"base", "latent", "networks", "__init__"}
# Units of one layer that never import each other (the others of a layer may).
SEALED = {frozenset({"training", "metrics"}), frozenset({"nn", "samplers"})}


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py"))


def _dotted(path: Path) -> list[str]:
    """src/deepgen/models/vae.py -> ["models", "vae"]; src/deepgen/__init__.py -> ["__init__"]."""
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return parts


def _unit(parts: list[str]) -> str:
    """The top-level unit a module belongs to (its package, or the module itself)."""
    return parts[0]


def _imports(path: Path) -> list[tuple[int, list[str]]]:
    """(line, target as parts below deepgen) for every deepgen import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = _dotted(path)
    package = here[:-1] if here[-1] != "__init__" else here[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "deepgen" or alias.name.startswith("deepgen."):
                    out.append((node.lineno, alias.name.split(".")[1:] or ["__init__"]))
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if node.module is None or not (node.module == "deepgen" or node.module.startswith("deepgen.")):
                    continue
                base = node.module.split(".")[1:]
            else:
                anchor = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                if node.level - 1 > len(package):
                    raise AssertionError(f"{path}: relative import beyond the package")
                base = anchor + (node.module.split(".") if node.module else [])
            if base:
                out.append((node.lineno, base))
            else:  # "from .. import x": x are modules or names of the package itself
                for alias in node.names:
                    target = [alias.name]
                    out.append((node.lineno, target if target[0] in LAYERS else ["__init__"]))
    return out


def _violations() -> list[str]:
    bad = []
    for path in _modules():
        here = _dotted(path)
        unit = _unit(here)
        assert unit in LAYERS, f"{path.relative_to(SRC)} is in no layer: add it to LAYERS (and docs/architecture.md)"
        level = LAYERS[unit]
        for line, target in _imports(path):
            t_unit = _unit(target)
            where = f"{path.relative_to(SRC)}:{line} imports deepgen.{'.'.join(target)}"
            if t_unit not in LAYERS:
                bad.append(f"{where}: unknown module")
                continue
            t_level = LAYERS[t_unit]
            if t_unit == unit:
                if unit == "models" and len(here) > 1 and len(target) > 1:
                    src_mod, dst_mod = here[1], target[1]
                    if src_mod not in SHARED_MODEL_MODULES and dst_mod not in SHARED_MODEL_MODULES and src_mod != dst_mod:
                        bad.append(f"{where}: a family imports another family (move what they share to nn/ or models/latent.py)")
                    if src_mod in SHARED_MODEL_MODULES - {"__init__"} and dst_mod not in SHARED_MODEL_MODULES:
                        bad.append(f"{where}: the shared model modules import no family")
                continue
            if t_level > level:
                bad.append(f"{where}: upward (layer {level} -> {t_level})")
            elif t_level == level and frozenset({unit, t_unit}) in SEALED:
                bad.append(f"{where}: sideways between {unit} and {t_unit}, which never import each other")
    return bad


def test_imports_run_one_way():
    bad = _violations()
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    "source,expect",
    [
        ("from ..training import Trainer\n", "upward"),
        ("from ..metrics.evaluate import evaluate\n", "sideways"),
        ("from .gan import MLPDiscriminator\n", "a family imports another family"),
        ("import deepgen.cli\n", "upward"),
        ("from .. import __version__\n", "upward"),
    ],
)
def test_the_check_catches_what_it_should(tmp_path, monkeypatch, source, expect):
    """The checker itself can fail: plant one bad import in a copy of a family file."""
    fake_src = tmp_path / "deepgen"
    (fake_src / "models").mkdir(parents=True)
    for name in ("base.py", "__init__.py", "gan.py"):
        (fake_src / "models" / name).write_text("")
    (fake_src / "models" / "vae.py").write_text(source)
    if "metrics" in source:
        (fake_src / "models" / "vae.py").write_text("")
        (fake_src / "training").mkdir()
        (fake_src / "training" / "trainer.py").write_text(source)
    monkeypatch.setattr(sys.modules[__name__], "SRC", fake_src)
    bad = _violations()
    assert any(expect in b for b in bad), bad
