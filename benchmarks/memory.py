"""Idle worker memory: USS and PSS (psutil ``memory_full_info``) of each contender's idle workers.

USS counts the pages only that process holds (what killing it would free); PSS
adds its fair share of pages shared with others (a zygote, a forking parent).
Measured after the contenders served calls, with no call in flight. MiB.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from typing import Any

from .common import Contender

MIB = 2**20


def measure(contenders: Sequence[Contender]) -> dict[str, dict[str, Any]]:
    import psutil

    gc.collect()
    out: dict[str, dict[str, Any]] = {}
    for c in contenders:
        rows = []
        for pid in c.worker_pids():
            try:
                info = psutil.Process(pid).memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            rows.append((info.uss / MIB, info.pss / MIB, info.rss / MIB))
        if not rows:
            out[c.name] = {"error": "no worker process found"}
            continue
        n = len(rows)
        out[c.name] = {
            "uss_mb": sum(r[0] for r in rows) / n,  # the mean over the contender's workers
            "pss_mb": sum(r[1] for r in rows) / n,
            "rss_mb": sum(r[2] for r in rows) / n,
            "workers": n,
            "min_uss_mb": min(r[0] for r in rows),
            "max_uss_mb": max(r[0] for r in rows),
        }
    return out
