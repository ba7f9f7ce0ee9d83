"""The public names of ``microfaas``: one list, imported on first use."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import microfaas as mf


def _typed_imports() -> dict[str, str]:
    """Name -> module of the imports ``microfaas/__init__.py`` makes under TYPE_CHECKING."""
    tree = ast.parse(Path(mf.__file__).read_text())
    [block] = [node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"]
    return {alias.name: node.module or "" for node in block.body if isinstance(node, ast.ImportFrom) for alias in node.names}


def test_the_typed_imports_the_lazy_table_and_all_name_the_same_names_from_the_same_modules() -> None:
    typed = _typed_imports()
    assert typed.pop("RayNodes") == "ray"  # needs the ray extra: not in __all__
    assert typed == mf._MODULE_OF
    assert sorted(mf.__all__) == sorted(typed)


def test_every_public_name_resolves_and_calls_itself_microfaas() -> None:
    for name in mf.__all__:
        obj = getattr(mf, name)
        if isinstance(obj, type):
            assert obj.__module__ == "microfaas", name
    assert "App" in dir(mf) and "RayNodes" in dir(mf)


def test_import_microfaas_imports_no_platform_and_no_connector() -> None:
    code = "import sys, microfaas; print(sorted(m for m in sys.modules if m.startswith('microfaas')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "['microfaas']"


def test_an_error_calls_itself_microfaas_before_anyone_looked_it_up() -> None:
    # A traceback names the class of an error raised before any ``mf.<Name>`` lookup adopted it.
    code = "import microfaas.errors as e, pickle; print(e.PlatformClosed.__module__, type(pickle.loads(pickle.dumps(e.StoreFull('x')))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["microfaas", "<class", "'microfaas.StoreFull'>"]
