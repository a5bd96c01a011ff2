"""The gateway and its Moodle emulator stay apart: neither package imports the other at module level.

``lms_api`` loads ``moodle_sandbox`` only where it starts one (no ``MOODLE_BASE_URL``, or ``lms-api sandbox``), so a
production gateway never carries the emulator; ``moodle_sandbox`` imports nothing of ``lms_api`` at all, so it runs
and is tested as a standalone Moodle.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys

from tests.support.paths import ROOT


def module_names(package: str) -> list[str]:
    """Every module of ``package`` from its files: ``pkgutil`` would skip folders without ``__init__.py``."""
    names = []
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_importing_the_gateway_and_building_it_for_a_real_moodle_leaves_the_sandbox_unloaded():
    # A fresh interpreter: this one has long imported the sandbox for other tests.
    script = f"""
import importlib, json, sys
for name in {module_names("lms_api")!r}:
    importlib.import_module(name)
from lms_api.config import make_app
from lms_api.settings import load_settings
environ = {{"MOODLE_BASE_URL": "https://moodle.invalid", "MOODLE_TOKEN": "t", "JWT_SECRET": "s" * 40}}
make_app(load_settings({{"lms_api.environment": "production"}}, environ))
print(json.dumps(sorted(name for name in sys.modules if name.split(".")[0] in ("lms_api", "moodle_sandbox"))))
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.splitlines()[-1])
    assert set(module_names("lms_api")) <= set(loaded)
    assert [name for name in loaded if name.split(".")[0] == "moodle_sandbox"] == []


def test_no_sandbox_module_imports_the_gateway():
    # Parsed, not imported: an import inside a function counts too.
    offenders = []
    for path in sorted((ROOT / "moodle_sandbox").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                imported = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported = [node.module]
            else:
                continue
            offenders += [
                f"{path.relative_to(ROOT)}:{node.lineno} {name}" for name in imported if name.split(".")[0] == "lms_api"
            ]

    assert len(module_names("moodle_sandbox")) > 10
    assert offenders == []
