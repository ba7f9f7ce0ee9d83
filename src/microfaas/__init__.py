"""microfaas: a Function-as-a-Service platform inside your Python program.

::

    import microfaas as mf

    app = mf.App("shop")

    @app.function(memory_mb=128, timeout=10)
    def resize(image: bytes, width: int) -> bytes: ...

    async with app.run() as faas:
        out = await resize.invoke(img, 200)
"""

from __future__ import annotations

from .app import App, FunctionHandle, FunctionSpec, Retries
from .call import Call, CallStatus
from .delivery import DeadLetter
from .errors import (
    CallCancelled,
    ColdStartFailed,
    ContainerCrashed,
    FaaSError,
    FunctionError,
    FunctionTimeout,
    InvocationError,
    OutOfMemory,
    PlatformClosed,
    SerializationError,
    Throttled,
    UnknownFunction,
)
from .events import BatchResult, BatchTask, Context, Http, HttpRequest, HttpResponse, Message, Record, RecordBatch, Tick, Trigger, context
from .keepalive import FixedKeepAlive, KeepAlivePolicy, NeverUnload
from .platform import Platform
from .pool import LocalNodes
from .scheduler import ContainerState
from .sources.batch import BatchJob, BatchProgress
from .sources.triggers import Cron, Every, Stream, StreamConsumer, Topic, TopicSubscription
from .stats import ContainerInfo, FunctionStats, PlatformUsage, Summary

__all__ = [
    "App",
    "BatchJob",
    "BatchProgress",
    "BatchResult",
    "BatchTask",
    "Call",
    "CallCancelled",
    "CallStatus",
    "ColdStartFailed",
    "ContainerCrashed",
    "ContainerInfo",
    "ContainerState",
    "Context",
    "Cron",
    "DeadLetter",
    "Every",
    "FaaSError",
    "FixedKeepAlive",
    "FunctionError",
    "FunctionHandle",
    "FunctionSpec",
    "FunctionStats",
    "FunctionTimeout",
    "Http",
    "HttpRequest",
    "HttpResponse",
    "InvocationError",
    "KeepAlivePolicy",
    "LocalNodes",
    "Message",
    "NeverUnload",
    "OutOfMemory",
    "Platform",
    "PlatformClosed",
    "PlatformUsage",
    "Record",
    "RecordBatch",
    "Retries",
    "SerializationError",
    "Stream",
    "StreamConsumer",
    "Summary",
    "Throttled",
    "Tick",
    "Topic",
    "TopicSubscription",
    "Trigger",
    "UnknownFunction",
    "context",
]

for _name in __all__:
    _obj = globals()[_name]
    if hasattr(_obj, "__module__") and not isinstance(_obj, type(lambda: None)):
        try:
            _obj.__module__ = __name__
        except (AttributeError, TypeError):
            pass
del _name, _obj

__version__ = "0.1.0"
