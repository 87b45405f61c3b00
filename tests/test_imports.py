"""The import direction: models -> serving -> loadtests -> tuning -> hybridserve, and a lean server.

The first test reads every module's imports (static ``import``/``from`` statements, including those
inside functions) and fails on any that goes back up a layer; the second imports the server app in
a fresh interpreter and lists the heavy stacks it pulled in.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("models", "serving", "loadtests", "tuning", "hybridserve")
# What a server process must never load: training, conversion, plotting, load generation, simulation.
NOT_IN_SERVER = ("sklearn", "skl2onnx", "matplotlib", "locust", "gevent", "libcachesim", "tuning", "loadtests", "hybridserve")


def _imported_packages(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", LAYERS)
def test_no_package_imports_a_layer_above_it(package: str) -> None:
    above = set(LAYERS[LAYERS.index(package) + 1 :])
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imported_packages(path) & above)
        for path in sorted((ROOT / package).rglob("*.py"))
        if _imported_packages(path) & above
    }
    assert not offenders, f"imports running back up from {package}: {offenders}"


def test_server_app_loads_no_training_or_tooling_stack() -> None:
    code = ("import json, sys, serving.app; "
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    loaded = set(json.loads(subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                                           check=True).stdout))
    assert not loaded & set(NOT_IN_SERVER), sorted(loaded & set(NOT_IN_SERVER))
    assert {"onnxruntime", "fastapi"} <= loaded  # the check looks at a real import
