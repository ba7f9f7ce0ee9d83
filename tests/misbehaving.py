"""An app whose module misbehaves when a zygote imports it, for tests/test_error_paths.py.

What it does is chosen by the environment variable ``MICROFAAS_TEST_ZYGOTE``, which only the
zygotes started by those tests see (the test process imported this module before it was set):

- ``exit``: the zygote dies while it imports the app's modules (the node fails to come up);
- ``stubborn``: the zygote ignores SIGTERM and does not end when the platform closes its channel.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

import microfaas as mf

app = mf.App("misbehaving")


@app.function
def pid() -> int:
    return os.getpid()


_MODE = os.environ.get("MICROFAAS_TEST_ZYGOTE")
if _MODE and "microfaas.nodes.zygote" in sys.modules:
    if _MODE == "exit":
        os._exit(3)
    elif _MODE == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # A thread that never ends keeps the interpreter from exiting when the zygote's loop returns.
        threading.Thread(target=threading.Event().wait, name="stubborn", daemon=False).start()
