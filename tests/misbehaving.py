"""An app whose module misbehaves when a zygote imports it, for tests/test_error_paths.py.

What it does is chosen by the environment variable ``MICROFAAS_TEST_ZYGOTE``, which only the
zygotes started by those tests see (the test process imported this module before it was set):

- ``exit``: the zygote dies while it imports the app's modules (the node fails to come up);
- ``stubborn``: the zygote ignores SIGTERM and does not end when the platform closes its channel;
- ``thread``: the zygote is left with a thread after importing it.

Only the zygote itself misbehaves (its parent is the test process): the probe that tries the
import first, and the containers, are the zygote's children.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
import time

import microfaas as mf

app = mf.App("misbehaving")


@app.function
def pid() -> int:
    return os.getpid()


_MODE = os.environ.get("MICROFAAS_TEST_ZYGOTE")
if _MODE and "microfaas.nodes.zygote" in sys.modules and str(os.getppid()) == os.environ.get("MICROFAAS_TEST_PLATFORM"):
    if _MODE == "exit":
        os._exit(3)
    elif _MODE == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # An exit hook that never ends keeps the interpreter from exiting when the zygote's loop returns.
        atexit.register(time.sleep, 3600)
    elif _MODE == "thread":
        threading.Thread(target=threading.Event().wait, name="left-behind", daemon=True).start()
