"""The Huey side of the durable-spawn figure: a SqliteHuey and its no-op task.

Huey's consumer imports this module by name (``huey_consumer benchmarks.huey_tasks.huey``),
as Huey documents; the file it uses is given in ``MF_BENCH_HUEY_DB``. ``fsync=False``
(``PRAGMA synchronous=OFF``) is SqliteHuey's fastest setting, and like microfaas's
default (WAL with ``synchronous=NORMAL``) it keeps what was committed through a crash
of the process, not through a power loss.
"""

from __future__ import annotations

import os

from huey import SqliteHuey

huey = SqliteHuey("bench", filename=os.environ.get("MF_BENCH_HUEY_DB", "mf-bench-huey.db"), fsync=False)


@huey.task()
def noop(x: object = None) -> object:
    return x
