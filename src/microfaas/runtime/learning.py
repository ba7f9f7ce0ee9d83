"""Learning what to preload: the modules that containers report their function imported.

With ``LocalNodes(learn_imports=True)`` each forked container sends, with its
first reply, the modules its function's load, init and that call imported.
``learnable`` keeps those a zygote may preload: installed packages and the
standard library, not the project's own modules (files under the working
directory, other than installed packages): their import may open files, sockets
or connections that forked containers must not share. ``ImportLearner`` decides
which of them the zygotes preload next: each module once, until the modules
learned come from ``max_packages`` top-level packages; past that, learning
stops. Modules of the standard library are learned too but do not count toward the
cap (they are many, small and already installed): otherwise the first function's
``random``, ``pathlib`` and ``csv`` would use up the places that its real packages
need. A module a zygote refused is not asked for again.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from collections.abc import Iterable, Sequence
from typing import Final

__all__ = ["ImportLearner", "learnable"]

# Where installed packages and the standard library live (learnable even under the working directory: a venv).
_INSTALLED: Final = tuple(
    {os.path.realpath(path) + os.sep for key in ("stdlib", "platstdlib", "purelib", "platlib") if (path := sysconfig.get_path(key))}
)


# Top-level names of the standard library (``_csv`` counts as ``csv``'s).
_STDLIB: Final = frozenset(name.lstrip("_") for name in sys.stdlib_module_names)


def learnable(modules: Sequence[str], files: Sequence[str], cwd: str) -> list[str]:
    """The modules of a container's report that a zygote may preload, packages before their submodules."""
    project = os.path.realpath(cwd) + os.sep
    keep = []
    for name, file in zip(modules, files, strict=False):
        where = os.path.realpath(file) if file else ""
        if name != "__main__" and (not where.startswith(project) or where.startswith(_INSTALLED)):
            keep.append(name)
    # Importing a package usually imports most of its submodules: try it first.
    return sorted(keep, key=lambda name: name.count("."))


class ImportLearner:
    """The learned modules of one platform, in the order they were first reported."""

    def __init__(self, *, max_packages: int) -> None:
        self.max_packages = max_packages
        self.learned: list[str] = []
        self.packages: set[str] = set()
        self.capped = False  # a module was left out because the cap was reached
        self._seen: set[str] = set()

    def learn(self, modules: Iterable[str]) -> list[str]:
        """The modules of ``modules`` to preload now (not learned yet, and within the cap)."""
        new = []
        for name in modules:
            if name in self._seen:
                continue
            package = name.partition(".")[0]
            if package not in self.packages and package.lstrip("_") not in _STDLIB:
                if len(self.packages) >= self.max_packages:
                    self.capped = True
                    continue
                self.packages.add(package)
            self._seen.add(name)
            new.append(name)
        self.learned += new
        return new

    def refused(self, module: str) -> None:
        """A zygote would not preload ``module``: it is not asked for again, nor preloaded by new nodes."""
        self._seen.add(module)
        if module in self.learned:
            self.learned.remove(module)
