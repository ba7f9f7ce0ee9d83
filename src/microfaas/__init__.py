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

import importlib
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
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
    from .ray import RayNodes as RayNodes
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

# The public names and the module each comes from. They are imported on first use
# (PEP 562 ``__getattr__`` below), so ``import microfaas`` is cheap: a zygote, and every
# container forked from it, holds only the modules its work needs (fewer pages to copy
# on fork), and a program that never runs a broker connector never imports one.
_WHERE: Final[dict[str, tuple[str, ...]]] = {
    "app": ("App", "FunctionHandle"),
    "aws": ("lambda_handler",),
    "errors": (
        "CallCancelled",
        "ColdStartFailed",
        "ConnectorUnreachable",
        "ContainerCrashed",
        "FaaSError",
        "FunctionError",
        "FunctionTimeout",
        "InvocationError",
        "OutOfMemory",
        "PlatformClosed",
        "SerializationError",
        "StoreCorrupt",
        "StoreError",
        "StoreFull",
        "StoreLocked",
        "StoreReadOnly",
        "StoreVersionError",
        "Throttled",
        "UnknownCall",
        "UnknownFunction",
        "UnknownSource",
    ),
    "events": (
        "BatchResult",
        "BatchTask",
        "Context",
        "Http",
        "HttpRequest",
        "HttpResponse",
        "Message",
        "ObjectEvent",
        "Record",
        "RecordBatch",
        "Tick",
        "Trigger",
        "context",
    ),
    "executor": ("Executor",),
    "keepalive": (
        "AdaptiveKeepAlive",
        "FixedKeepAlive",
        "GreedyDualKeepAlive",
        "HistogramKeepAlive",
        "KeepAliveDecision",
        "KeepAlivePolicy",
        "NeverUnload",
    ),
    "lifecycle": ("LifecycleEvent",),
    "platform": ("Platform",),
    "pool": ("LocalNodes",),
    "runtime.call": ("Call", "CallStatus"),
    "runtime.deploy": ("Deployment",),
    "runtime.stats": ("ContainerInfo", "FunctionStats", "PlatformUsage", "Summary"),
    "scheduler": ("ContainerState",),
    "sources.batch": ("BatchJob", "BatchProgress"),
    "sources.directory": ("Directory",),
    "sources.files": ("Files",),
    "sources.mqtt": ("MQTT",),
    "sources.rabbitmq": ("RabbitMQ",),
    "sources.redis_streams": ("RedisStream",),
    "sources.triggers": ("Cron", "Every", "Stream", "StreamConsumer", "Topic", "TopicSubscription"),
    "spec": ("FunctionSpec", "Retries"),
    "store": ("DeadLetter", "MemoryStore", "SqliteStore", "Store"),
}

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


# RayNodes needs the `ray` extra: it is left out of __all__ so that `from microfaas import *`
# works without it.
_MODULE_OF: Final = {name: module for module, names in _WHERE.items() for name in names}


def __dir__() -> list[str]:
    return sorted({*globals(), *_MODULE_OF, "RayNodes"})


def __getattr__(name: str) -> object:
    if name == "RayNodes":
        try:
            from .ray import RayNodes
        except ImportError as exc:
            raise ImportError(f"mf.RayNodes needs Ray: pip install 'microfaas[ray]' ({exc})") from exc
        return _adopt(name, RayNodes)
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return _adopt(name, getattr(importlib.import_module(f".{module}", __name__), name))


def _adopt(name: str, obj: object) -> object:
    """Keep ``obj`` as ``microfaas.<name>``: classes say so in ``__module__`` (reprs, pickles by reference)."""
    if isinstance(obj, type):
        try:
            obj.__module__ = __name__
        except (AttributeError, TypeError):
            pass
    globals()[name] = obj
    return obj


__version__ = "0.1.0"
