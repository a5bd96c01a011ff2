"""Layers point one way. The gateway and its Moodle emulator stay apart: neither package imports the other at module
level. ``lms_api`` loads ``moodle_sandbox`` only where it starts one (no ``MOODLE_BASE_URL``, or ``lms-api sandbox``),
so a production gateway never carries the emulator; ``moodle_sandbox`` imports nothing of ``lms_api`` at all, so it
runs and is tested as a standalone Moodle. The server, which pserve loads before the app, reads the settings alone:
not the views, the services, the read cache, the Moodle client, security or the schemas.
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


def loaded_by(statement):
    """The modules of ``lms_api`` and ``moodle_sandbox`` a fresh interpreter has loaded after ``statement``."""
    script = f"""
import json, sys
{statement}
print(json.dumps(sorted(name for name in sys.modules if name.split(".")[0] in ("lms_api", "moodle_sandbox"))))
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_importing_the_gateway_and_building_it_for_a_real_moodle_leaves_the_sandbox_unloaded():
    # A fresh interpreter: this one has long imported the sandbox for other tests.
    loaded = loaded_by(f"""
import importlib
for name in {module_names("lms_api")!r}:
    importlib.import_module(name)
from lms_api.config import make_app
from lms_api.settings import load_settings
environ = {{"MOODLE_BASE_URL": "https://moodle.invalid", "MOODLE_TOKEN": "t", "JWT_SECRET": "s" * 40}}
make_app(load_settings({{"lms_api.environment": "production"}}, environ))
""")

    assert set(module_names("lms_api")) <= set(loaded)
    assert [name for name in loaded if name.split(".")[0] == "moodle_sandbox"] == []


def test_importing_the_server_loads_neither_the_views_nor_the_services_nor_what_they_use():
    loaded = loaded_by("import lms_api.server")

    assert "lms_api.server" in loaded
    assert "lms_api.bodysizes" in loaded  # where its body cap comes from
    app_layers = ("views", "services", "cache", "moodle.client", "security", "schemas", "operation", "bodylimits")
    assert [name for name in loaded if name.removeprefix("lms_api.").startswith(app_layers)] == []


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
