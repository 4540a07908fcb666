"""Every third-party module the product imports is installed by a plain ``pip install``.

The test suite runs with the ``dev`` extra, so a product import satisfied only by it (as
xlsxwriter once was, for ``demo-data --format xlsx``) passes every other test and fails on an
operator's machine with an ImportError. Product extras (``embedded``) count: their imports
are guarded and the command that needs one says which extra to install.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("gateway", "loader")


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _distribution(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert match, requirement
    return _normalized(match.group())


def _installable() -> tuple[set[str], set[str]]:
    """Distributions a plain install (with product extras) brings, and the dev extra's."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    runtime = {_distribution(r) for r in project["dependencies"]}
    runtime |= {_distribution(r) for name, reqs in extras.items() if name != "dev" for r in reqs}
    return runtime, {_distribution(r) for r in extras["dev"]}


def _product_imports() -> set[str]:
    """Top-level modules imported anywhere in the product's packages."""
    found: set[str] = set()
    for package in PRODUCT:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    found |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m not in PRODUCT}


def test_every_product_import_is_a_runtime_dependency() -> None:
    runtime, _ = _installable()
    providers = packages_distributions()
    missing = {
        module: providers.get(module)
        for module in _product_imports()
        if not {_normalized(d) for d in providers.get(module, [])} & runtime
    }
    assert not missing, f"imported by gateway/ or loader/ but not installed by a plain install: {missing}"


def test_xlsx_writer_is_a_runtime_dependency_not_a_dev_one() -> None:
    """demo-data writes XLSX exports with it; listed twice, the dev pin could drift apart."""
    runtime, dev = _installable()
    assert "xlsxwriter" in runtime and "xlsxwriter" not in dev
