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

from typing import TYPE_CHECKING

from .app import App, FunctionHandle
from .aws import lambda_handler
from .errors import (
    CallCancelled,
    ColdStartFailed,
    ConnectorUnreachable,
    ContainerCrashed,
    FaaSError,
    FunctionError,
    FunctionTimeout,
    InvocationError,
    OutOfMemory,
    PlatformClosed,
    SerializationError,
    StoreCorrupt,
    StoreError,
    StoreFull,
    StoreLocked,
    StoreReadOnly,
    StoreVersionError,
    Throttled,
    UnknownCall,
    UnknownFunction,
    UnknownSource,
)
from .events import (
    BatchResult,
    BatchTask,
    Context,
    Http,
    HttpRequest,
    HttpResponse,
    Message,
    ObjectEvent,
    Record,
    RecordBatch,
    Tick,
    Trigger,
    context,
)
from .executor import Executor
from .keepalive import (
    AdaptiveKeepAlive,
    FixedKeepAlive,
    GreedyDualKeepAlive,
    HistogramKeepAlive,
    KeepAliveDecision,
    KeepAlivePolicy,
    NeverUnload,
)
from .lifecycle import LifecycleEvent
from .platform import Platform
from .pool import LocalNodes
from .runtime.call import Call, CallStatus
from .runtime.deploy import Deployment
from .runtime.stats import ContainerInfo, FunctionStats, PlatformUsage, Summary
from .scheduler import ContainerState
from .sources.batch import BatchJob, BatchProgress
from .sources.directory import Directory
from .sources.files import Files
from .sources.mqtt import MQTT
from .sources.rabbitmq import RabbitMQ
from .sources.redis_streams import RedisStream
from .sources.triggers import Cron, Every, Stream, StreamConsumer, Topic, TopicSubscription
from .spec import FunctionSpec, Retries
from .store import DeadLetter, MemoryStore, SqliteStore, Store

if TYPE_CHECKING:
    from .ray import RayNodes as RayNodes

__all__ = [
    "MQTT",
    "AdaptiveKeepAlive",
    "App",
    "BatchJob",
    "BatchProgress",
    "BatchResult",
    "BatchTask",
    "Call",
    "CallCancelled",
    "CallStatus",
    "ColdStartFailed",
    "ConnectorUnreachable",
    "ContainerCrashed",
    "ContainerInfo",
    "ContainerState",
    "Context",
    "Cron",
    "DeadLetter",
    "Deployment",
    "Directory",
    "Every",
    "Executor",
    "FaaSError",
    "Files",
    "FixedKeepAlive",
    "FunctionError",
    "FunctionHandle",
    "FunctionSpec",
    "FunctionStats",
    "FunctionTimeout",
    "GreedyDualKeepAlive",
    "HistogramKeepAlive",
    "Http",
    "HttpRequest",
    "HttpResponse",
    "InvocationError",
    "KeepAliveDecision",
    "KeepAlivePolicy",
    "LifecycleEvent",
    "LocalNodes",
    "MemoryStore",
    "Message",
    "NeverUnload",
    "ObjectEvent",
    "OutOfMemory",
    "Platform",
    "PlatformClosed",
    "PlatformUsage",
    "RabbitMQ",
    "Record",
    "RecordBatch",
    "RedisStream",
    "Retries",
    "SerializationError",
    "SqliteStore",
    "Store",
    "StoreCorrupt",
    "StoreError",
    "StoreFull",
    "StoreLocked",
    "StoreReadOnly",
    "StoreVersionError",
    "Stream",
    "StreamConsumer",
    "Summary",
    "Throttled",
    "Tick",
    "Topic",
    "TopicSubscription",
    "Trigger",
    "UnknownCall",
    "UnknownFunction",
    "UnknownSource",
    "context",
    "lambda_handler",
]

for _name in __all__:
    _obj = globals()[_name]
    if hasattr(_obj, "__module__") and not isinstance(_obj, type(lambda: None)):
        try:
            _obj.__module__ = __name__
        except (AttributeError, TypeError):
            pass
del _name, _obj

# RayNodes needs the `ray` extra: imported on first use, so `import microfaas` never
# imports ray. It is left out of __all__ so that `from microfaas import *` works without it.


def __dir__() -> list[str]:
    return sorted([*globals(), "RayNodes"])


def __getattr__(name: str) -> object:
    if name == "RayNodes":
        try:
            from .ray import RayNodes
        except ImportError as exc:
            raise ImportError(f"mf.RayNodes needs Ray: pip install 'microfaas[ray]' ({exc})") from exc
        RayNodes.__module__ = __name__
        globals()["RayNodes"] = RayNodes
        return RayNodes
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__version__ = "0.1.0"
