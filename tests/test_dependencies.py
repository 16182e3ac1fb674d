"""Packaging: every import is declared, the base install has no napari/Qt, the CLI runs without."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "napari_lmadda"
# import name -> distribution name, where they differ
DIST = {"skimage": "scikit-image", "PIL": "pillow", "yaml": "pyyaml",
        "bioimageio": "bioimageio.spec"}
GUI = ("widgets", "_reader.py", "_writer.py", "_sample_data.py")
GUI_STACK = {"napari", "npe2", "qtpy", "superqt", "psygnal", "pyqtgraph", "magicgui", "vispy",
             "pyqt5", "pyqt6", "pyside2", "pyside6"}


def _name(req: str) -> str:
    return re.split(r"[\s\[<>=!~;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


@pytest.fixture(scope="module")
def project():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _imports(path: Path) -> list[tuple[str, bool]]:
    """Third-party top-level modules a file imports, and whether at module level."""
    tree = ast.parse(path.read_text(), str(path))
    top = {id(n) for n in tree.body}
    for node in tree.body:  # `try: import x` at module level counts as module level
        if isinstance(node, ast.Try | ast.If):
            top |= {id(n) for n in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names = [node.module]
        else:
            continue
        for n in names:
            root = n.split(".")[0]
            if root in sys.stdlib_module_names or root in ("napari_lmadda", "__future__"):
                continue
            found.append((root, id(node) in top))
    return found


def test_every_import_is_declared(project):
    base = {_name(r) for r in project["dependencies"]}
    extras = {k: {_name(r) for r in v} for k, v in project["optional-dependencies"].items()}
    optional = {"bioimageio.spec": "bioimageio", "distributed": "cluster"}
    missing = []
    for f in sorted(PKG.rglob("*.py")):
        rel = f.relative_to(PKG).as_posix()
        gui = rel.startswith(GUI)
        for mod, at_top in _imports(f):
            dist = DIST.get(mod, mod).lower()
            if dist in base:
                continue
            if gui and dist in extras["napari"]:
                continue
            if dist in optional and dist in extras[optional[dist]] and not at_top:
                continue  # an optional feature, imported only when used
            if dist == "torch":
                continue
            missing.append(f"{rel}: {mod}")
    assert "torch" in base
    assert not missing, missing


def test_base_install_has_no_gui_stack(project):
    base = {_name(r) for r in project["dependencies"]}
    assert not base & GUI_STACK
    napari = {_name(r) for r in project["optional-dependencies"]["napari"]}
    assert {"napari", "npe2", "qtpy"} <= napari
    assert "napari-lmadda[napari]" in project["optional-dependencies"]["pyqt6"]


def test_bounds_and_python_versions(project):
    deps = {_name(r): r for r in project["dependencies"]}
    assert "2025.5.21" in deps["tifffile"]  # zarr 3 stores of tifffile
    assert re.search(r">=\s*2\.([3-9]|\d\d)", deps["torch"])  # torch.amp.GradScaler(device)
    assert project["requires-python"] == ">=3.11"
    versions = [c for c in project["classifiers"] if re.search(r"Python :: 3\.\d+$", c)]
    assert versions and all(int(c.rsplit(".", 1)[1]) >= 11 for c in versions)
    ruff = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ruff"]
    assert ruff["target-version"] == "py311"
    assert "py310" not in (ROOT / "tox.ini").read_text()


def test_no_placeholder_metadata(project):
    text = (ROOT / "pyproject.toml").read_text() + (PKG / "napari.yaml").read_text()
    assert "example.invalid" not in text
    assert project["description"] and project["license"] and project["authors"]
    assert "Framework :: napari" in project["classifiers"]


def test_manifest_is_valid_and_its_commands_exist():
    npe2 = pytest.importorskip("npe2")
    import importlib

    manifest = npe2.PluginManifest.from_file(PKG / "napari.yaml")
    assert manifest.name == "napari-lmadda" and manifest.categories
    for cmd in manifest.contributions.commands:
        module, attr = cmd.python_name.split(":")
        assert hasattr(importlib.import_module(module), attr), cmd.python_name


BLOCKER = textwrap.dedent("""
    import importlib.abc, sys
    BLOCKED = {blocked!r}
    class Absent(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)", name=name)
            return None
    sys.meta_path.insert(0, Absent())
    from napari_lmadda.cli import main
    rc = main(sys.argv[1:])
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not leaked, leaked
    sys.exit(rc)
""")


@pytest.mark.slow
def test_demo_quick_runs_without_napari_or_qt(tmp_path):
    """`lmadda demo --quick` as on a headless install: napari and every Qt package absent."""
    blocked = sorted(GUI_STACK | {"PyQt5", "PyQt6", "PySide2", "PySide6"})
    code = BLOCKER.format(blocked=blocked)
    out = subprocess.run(
        [sys.executable, "-c", code, "demo", "--quick", "--out", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, (out.stdout[-1500:], out.stderr[-1500:])
    assert (tmp_path / "demo" / "results.json").is_file()
    assert "Pearson" in out.stdout


def test_blocker_really_blocks(tmp_path):
    code = BLOCKER.format(blocked=["napari"]).replace(
        "from napari_lmadda.cli import main", "import napari")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode != 0 and "blocked" in out.stderr
