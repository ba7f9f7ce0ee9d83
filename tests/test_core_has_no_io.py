"""The scheduler core stays sans-I/O: scheduler.py, resources.py, keepalive.py and the
small modules they are made of (``CORE``) import no module that does I/O, reads a
clock, or runs concurrency.

Two checks. The AST of each module's source lists its import statements: they may
name each other, attrs and standard-library modules outside ``FORBIDDEN``. Then a
fresh interpreter loads the core modules *without* running
``microfaas/__init__.py`` (which imports the whole runtime) and records every import
that microfaas code executes, and every module the load pulls in beyond what attrs
itself needs.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import microfaas

PACKAGE_DIR = Path(microfaas.__file__).resolve().parent
# validation: the attrs validators the core's records share with every layer (pure as well).
CORE = (
    "actions",
    "adaptive",
    "baselines",
    "containers",
    "functions",
    "keepalive",
    "placement",
    "policy",
    "resources",
    "scheduler",
    "usage",
    "validation",
    "wakes",
)
FORBIDDEN = frozenset({"anyio", "asyncio", "time", "os", "subprocess", "threading", "socket", "selectors", "signal"})
ALLOWED_THIRD_PARTY = frozenset({"attrs"})


def import_problems(source: str) -> list[str]:
    """What is wrong with the imports of one core module's source."""
    problems: list[str] = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # ``from .x import y`` / ``from . import x``: only the other core modules.
                targets = [node.module] if node.module else [alias.name for alias in node.names]
                problems += [f"line {node.lineno}: imports microfaas.{t}" for t in targets if t.split(".")[0] not in CORE]
                continue
            names = [node.module or ""]
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if called in ("__import__", "import_module"):
                problems.append(f"line {node.lineno}: dynamic import via {called}()")
            continue
        for name in names:
            top = name.split(".")[0]
            if top in FORBIDDEN:
                problems.append(f"line {node.lineno}: imports {name}, which does I/O or reads a clock")
            elif top == "microfaas":
                # The package itself runs __init__.py, which imports the whole runtime.
                if name.split(".")[1:2] == [] or name.split(".")[1] not in CORE:
                    problems.append(f"line {node.lineno}: imports {name}")
            elif top not in sys.stdlib_module_names and top not in ALLOWED_THIRD_PARTY and top != "__future__":
                problems.append(f"line {node.lineno}: imports third-party {name}")
    return problems


@pytest.mark.parametrize("module", CORE)
def test_core_module_imports_only_pure_modules(module: str) -> None:
    source = (PACKAGE_DIR / f"{module}.py").read_text()
    assert import_problems(source) == []


@pytest.mark.parametrize(
    "source",
    [
        "import time",
        "import os.path",
        "from asyncio import sleep",
        "import anyio as io",
        "from . import pool",
        "from .platform import Platform",
        "import microfaas.pool",
        "import microfaas",
        "from microfaas import scheduler",
        "import cloudpickle",
        "def f():\n    import socket",
        "mod = __import__('subprocess')",
        "import importlib\nimportlib.import_module('signal')",
    ],
)
def test_the_import_check_catches_io_imports(source: str) -> None:
    assert import_problems(source), f"not caught: {source!r}"


def test_the_import_check_allows_the_core_s_own_imports() -> None:
    source = "\n".join(
        [
            "from __future__ import annotations",
            "import heapq, math",
            "from typing import Final",
            "import attrs",
            "from .resources import ResourceManager",
        ]
    )
    assert import_problems(source) == []


_PROBE = textwrap.dedent(
    """
    import builtins, json, sys, types

    import attrs  # the one allowed dependency: whatever it loads is its business
    baseline = set(sys.modules)

    # A stub package: the submodules load from the real directory, but
    # microfaas/__init__.py (which imports the whole runtime) never runs.
    package = types.ModuleType("microfaas")
    package.__path__ = [sys.argv[1]]
    sys.modules["microfaas"] = package

    executed = []
    real_import = builtins.__import__

    def recording_import(name, globals=None, locals=None, fromlist=(), level=0):
        importer = (globals or {}).get("__name__", "")
        if importer.startswith("microfaas"):
            executed.append([importer, name, level, list(fromlist or ())])
        return real_import(name, globals, locals, fromlist, level)

    builtins.__import__ = recording_import
    try:
        for name in sys.argv[2].split(","):
            __import__("microfaas." + name)
    finally:
        builtins.__import__ = real_import

    print(json.dumps({
        "executed": executed,
        "loaded": sorted(set(sys.modules) - baseline),
    }))
    """
)


def test_core_loads_alone_and_pulls_in_no_io() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(PACKAGE_DIR), ",".join(CORE)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    report = json.loads(out.stdout)
    loaded = set(report["loaded"])

    # Only the core modules of the package were loaded: nothing else from microfaas.
    assert {m for m in loaded if m.startswith("microfaas")} == {"microfaas", *(f"microfaas.{m}" for m in CORE)}
    # Nothing the core loaded, directly or through another module, is an I/O module.
    assert {m.split(".")[0] for m in loaded} & FORBIDDEN == set()

    # Every import statement microfaas code ran names a core module, attrs or pure stdlib.
    executed = report["executed"]
    assert executed, "the import hook saw nothing; the probe is broken"
    for importer, name, level, fromlist in executed:
        assert importer in {f"microfaas.{m}" for m in CORE}
        if level:
            targets = [name] if name else fromlist
            assert all(t.split(".")[0] in CORE for t in targets), (importer, name, fromlist)
        else:
            top = name.split(".")[0]
            assert top not in FORBIDDEN, f"{importer} imports {name}"
            assert top in sys.stdlib_module_names or top in ALLOWED_THIRD_PARTY, f"{importer} imports {name}"
