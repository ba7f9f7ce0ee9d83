"""A process's private memory, read from /proc: what a container's memory limit counts.

Private memory (USS) is the pages no other process shares. A forked container shares
its zygote's pages copy-on-write, and a Ray actor its worker's imports: only what it
writes or allocates itself is its own. Linux only; elsewhere the reading is None.
"""

from __future__ import annotations

__all__ = ["private_mb"]


def private_mb(pid: int | str) -> float | None:
    """The private memory of process ``pid`` (or ``"self"``) in MB; None when it cannot be read.

    :param pid: a process id, or ``"self"`` for the calling process.
    """
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            private_kb = sum(int(line.split()[1]) for line in f if line.startswith(b"Private_"))
    except (OSError, IndexError, ValueError):
        return None
    return private_kb / 1024
