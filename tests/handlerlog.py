"""HandlerLog, in a module of its own that imports nothing heavy: a test whose handlers live in a
light module (tests/durability_handlers.py) keeps its zygotes from importing pytest."""

from __future__ import annotations

__all__ = ["HandlerLog"]


class HandlerLog:
    """A file that handlers (running in containers) append lines to, for tests to read back.

    Declare one at module level (``LOG = HandlerLog("topics")``) so that a container
    importing the test module finds the same path.
    """

    def __init__(self, name: str) -> None:
        import pathlib
        import tempfile

        self.path = pathlib.Path(tempfile.gettempdir()) / f"microfaas-test-{name}.log"

    def write(self, line: str) -> None:
        with open(self.path, "a") as f:
            f.write(line + "\n")

    def lines(self) -> list[str]:
        return self.path.read_text().splitlines() if self.path.exists() else []

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
